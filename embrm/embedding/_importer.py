"""Register embeddings computed elsewhere (a .npy/.npz/.safetensors/.parquet/torch file) in the embedding cache.

    result = import_embeddings(ds, "sun2025/gemma2b_l18.pt", model="google/gemma-2-2b", layer=18, pooling="last")
    X = embed_dataset(ds, make_embedder("imported", result.cache_dir)).X   # what `fit --backend imported` reads

Layouts: (P, R, d) = prompts in the dataset's prompt order (first appearance of prompt_id) x responses in their
order within each prompt (Sun et al. 2025); (n, d) with `order="rows"` (the dataset's row order) or `order=` a text
file of response ids, one a line, or the id column of a .parquet file. Vectors are keyed by the rendered text,
exactly as `embed_dataset` keys them for the template, so every command finds them warm and never loads a model.
The file's SHA-256 is part of the fingerprint: a changed file never mixes with an earlier import.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from embrm.core import EmbrmError
from embrm.data import Dataset, check_array_file
from embrm.embedding._cache import EmbeddingCache, text_keys
from embrm.embedding._embed import DEFAULT_CACHE_DIR, DEFAULT_TEMPLATE, render

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
SUFFIXES = (".npy", ".npz", ".safetensors", ".parquet", *TORCH_SUFFIXES)
FLOATS = ("float16", "bfloat16", "float32", "float64")
# One text has one vector: copies of it may differ by rounding (to bfloat16, the coarsest float read: twice its unit
# roundoff, as both copies may be rounded; float16's smallest step near zero), never by more.
SAME_TEXT_RTOL = 2.0 ** -7
SAME_TEXT_ATOL = 2.0 ** -24


@dataclass
class ImportResult:
    cache_dir: str  # the imported cache directory: `--backend imported --model <this>`
    fingerprint: str
    n: int  # dataset responses aligned
    n_unique: int  # distinct rendered texts
    n_written: int  # vectors added to the cache (0 when re-importing the same file)
    dim: int
    sha256: str
    layout: str  # "prompts x responses", "rows" or "ids"
    key: str | None  # the array/column taken from the file
    spec: dict

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "spec"}


def import_embeddings(data: Dataset, path: str | Path, *, model: str, layer: str | int | None, pooling: str | None,
                      order: str | None = None, key: str | None = None, template: str = DEFAULT_TEMPLATE,
                      cache_dir: str | Path = DEFAULT_CACHE_DIR) -> ImportResult:
    """Align the file's vectors with `data.responses`, check them, and write them to the cache under the spec
    {"backend": "imported", model, layer, pooling, file, sha256, key, dim, template}."""
    path = _checked_file(Path(path))
    if not model or not str(model).strip():
        raise EmbrmError(f"{path}: --model is empty: name the model that made the vectors (e.g. google/gemma-2-2b)")
    texts, _ = render(data.responses, template)  # a bad template fails before a large file is read
    name, values, ids = read_vectors(path, key, order)
    X, where, layout = align(values, data, path, order, ids)
    keys = text_keys(texts)
    unique = _one_vector_per_text(X, keys, where, path)
    spec = {"backend": "imported", "model": str(model), "layer": _layer(layer), "pooling": pooling,
            "file": path.name, "sha256": sha256_of(path), "key": name, "dim": int(X.shape[1]), "template": template}
    cache = EmbeddingCache(cache_dir, spec)
    n_written = _write(cache, keys, X, unique, where)
    return ImportResult(str(cache.path), cache.fingerprint, len(X), len(unique), n_written, int(X.shape[1]),
                        spec["sha256"], layout, name, spec)


def _checked_file(path: Path) -> Path:
    if not path.exists():
        raise EmbrmError(f"{path}: no such file: check the path")
    if path.is_dir():
        raise EmbrmError(f"{path}: is a directory: pass the embeddings file itself ({', '.join(SUFFIXES)})")
    if path.suffix.lower() not in SUFFIXES:
        raise EmbrmError(f"{path}: unknown embeddings format {path.suffix!r}: use one of {', '.join(SUFFIXES)}")
    return path


def _layer(layer: str | int | None) -> str | int | None:
    """"18" and 18 are the same layer (one fingerprint); names such as "layer18" stay strings."""
    return int(layer) if isinstance(layer, str) and re.fullmatch(r"-?\d+", layer.strip()) else layer


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ----------------------------------------------------------------------------------------------- reading


def read_vectors(path: Path, key: str | None, order: str | None = None) -> tuple[str | None, np.ndarray, list | None]:
    """(the array's name in the file, its values as float32, the ids of a .parquet id column named by `order`)."""
    check_array_file(path)  # every header against the bytes the file holds, before a reader allocates what it says
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet(path, key, order)
    reader = {".npy": _numpy, ".npz": _numpy, ".safetensors": _safetensors}.get(suffix, _torch)
    name, values, dtype = reader(path, key)
    return name, _as_float32(values, dtype, path), None


def _pick(names: list[str], key: str | None, path: Path, what: str = "arrays") -> str:
    """The key rule: --key names one; a file with one needs none; several without --key are listed."""
    shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
    if key is not None:
        if key not in names:
            raise EmbrmError(f"{path}: no {what[:-1]} named {key!r} (it holds: {shown or 'none'}): pass one of "
                             f"those as --key")
        return key
    if len(names) == 1:
        return names[0]
    if not names:
        raise EmbrmError(f"{path}: holds no {what}: save the embeddings as a float array")
    raise EmbrmError(f"{path}: holds {len(names)} {what} ({shown}): pass --key NAME to pick one")


def _unreadable(path: Path, e: Exception, kind: str) -> EmbrmError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
    return EmbrmError(f"{path}: not a readable {kind} file ({first}): check the file and its suffix")


def _pickled(path: Path) -> EmbrmError:
    return EmbrmError(f"{path}: loading it needs pickle (it holds Python objects, not only arrays), which embrm never "
                      f"runs: save a plain float tensor/array (or a dict of them) instead")


def _numpy(path: Path, key: str | None):
    """A .npy (one array) or .npz (named arrays) file, never unpickled; np.load, not the suffix, tells which."""
    kind = path.suffix.lower()
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            if key is not None:
                raise EmbrmError(f"{path}: holds one array: drop --key {key}")
            return None, loaded, loaded.dtype.name
        with loaded as archive:  # only .npy members are arrays (np.load hands other members back as bytes)
            name = _pick([n.removesuffix(".npy") for n in archive.zip.namelist() if n.endswith(".npy")], key, path)
            values = archive[name]
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise _pickled(path) from None
        raise _unreadable(path, e, kind) from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # e.g. a member whose data fails its CRC
        raise _unreadable(path, e, kind) from None
    return name, values, values.dtype.name


def _safetensors(path: Path, key: str | None):
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            name = _pick(sorted(f.keys()), key, path, "tensors")
            try:
                return name, f.get_tensor(name), None
            except TypeError:  # numpy has no bfloat16: read that one through torch
                pass
        with safe_open(str(path), framework="pt") as f:
            return (name, *_from_torch(f.get_tensor(name)))
    except SafetensorError as e:
        raise _unreadable(path, e, ".safetensors") from None


def _torch(path: Path, key: str | None):
    import torch

    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")  # never unpickles arbitrary objects
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise _pickled(path) from None
        raise _unreadable(path, e, "torch.save") from None
    except Exception as e:  # torch raises KeyError/RuntimeError/EOFError for bytes that are not a torch file
        raise _unreadable(path, e, "torch.save") from None
    if isinstance(obj, torch.Tensor):
        return (None, *_from_torch(obj))
    if not isinstance(obj, dict):
        raise EmbrmError(f"{path}: holds a {type(obj).__name__}: torch.save a tensor or a dict of tensors")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    name = _pick(list(tensors), key, path, "tensors")
    return (name, *_from_torch(tensors[name]))


def _from_torch(tensor) -> tuple[np.ndarray | None, str]:
    """(numpy values or None when numpy cannot hold the dtype, the dtype's name)."""
    import torch

    dtype = str(tensor.dtype).removeprefix("torch.")
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        return tensor.float().numpy(), dtype
    try:
        return tensor.numpy(), dtype
    except TypeError:  # float8 and other types numpy lacks: refused by name below
        return None, dtype


def _as_float32(values: np.ndarray | None, dtype: str | None, path: Path) -> np.ndarray:
    dtype = dtype or values.dtype.name
    if dtype not in FLOATS:
        raise EmbrmError(f"{path}: holds {dtype} values: embeddings must be floats ({', '.join(FLOATS)}); "
                         f"save the vectors themselves, not ids or masks")
    return np.ascontiguousarray(values, dtype=np.float32)


def _parquet(path: Path, key: str | None, order: str | None):
    try:
        df = pl.read_parquet(path)
    except Exception as e:  # polars raises several types for a bad file
        raise _unreadable(path, e, ".parquet") from None
    lists = [c for c, t in df.schema.items() if isinstance(t, (pl.List, pl.Array))]
    if key is not None and key in df.columns and key not in lists:
        raise EmbrmError(f"{path}: column {key!r} is {df.schema[key]}, not a list of floats: pass the vector column "
                         f"as --key ({', '.join(lists) or 'none'})")
    name = _pick(lists, key, path, "list columns")
    col = df[name]
    inner = col.dtype.inner
    if not inner.is_float():
        raise EmbrmError(f"{path}: column {name!r} holds {inner} values: embeddings must be floats "
                         f"({', '.join(FLOATS)})")
    ids = None
    if order is not None and order in df.columns and order != name:
        ids = df[order].cast(pl.Utf8, strict=False)
        if ids.null_count():
            raise EmbrmError(f"{path}: row {int(ids.is_null().arg_true()[0])} of id column {order!r} has no id: "
                             f"give every row its response id")
        ids = ids.to_list()
    return name, _list_matrix(col, path), ids


def _list_matrix(col: pl.Series, path: Path) -> np.ndarray:
    """A list column with one equally long vector per row as (n, d) float32 (inner nulls become NaN)."""
    lengths = col.cast(pl.List(col.dtype.inner)).list.len()
    if col.null_count():
        row = int(col.is_null().arg_true()[0])
        raise EmbrmError(f"{path}: row {row} of column {col.name!r} has no vector: fill or drop it at the source")
    d = int(lengths[0]) if len(col) else 0
    if (lengths != d).any():
        row = int((lengths != d).arg_true()[0])
        raise EmbrmError(f"{path}: row {row} of column {col.name!r} has {lengths[row]} values where row 0 has {d}: "
                         f"every vector must have the same size")
    flat = col.cast(pl.List(pl.Float64)).explode().to_numpy()
    return np.ascontiguousarray(flat.reshape(len(col), d), dtype=np.float32)


# ----------------------------------------------------------------------------------------------- alignment


def align(values: np.ndarray, data: Dataset, path: Path, order: str | None,
          ids: list | None) -> tuple[np.ndarray, Callable[[int], str], str]:
    """(X aligned with data.responses, where(row) -> the row's place in the file, layout)."""
    _check_values(values, path)
    if values.ndim == 3:
        if order is not None:
            raise EmbrmError(f"{path}: a {values.shape} array follows the dataset's prompt and response order: "
                             f"drop --order (it is for (rows, d) arrays)")
        return _by_prompt(values, data, path)
    if order is None:
        raise EmbrmError(f"{path}: a {values.shape} array does not say which response each row is: pass --order rows "
                         f"(the dataset's row order) or --order IDS (a file of response ids, one a line, or the id "
                         f"column of a .parquet)")
    n = len(data.responses)
    if order == "rows":
        if len(values) != n:
            raise EmbrmError(f"{path}: {len(values)} rows but {data.name} has {n} responses: --order rows needs one "
                             f"row per response, in the dataset's order")
        return values, lambda i: f"row {i}", "rows"
    if ids is None:
        ids = _id_file(order, path)
    rows = _rows_of_ids(ids, len(values), data, path, order)
    return values[rows], lambda i: f"row {rows[i]} (id {ids[rows[i]]!r})", "ids"


def _check_values(values: np.ndarray, path: Path) -> None:
    if values.ndim not in (2, 3):
        raise EmbrmError(f"{path}: an array of shape {values.shape}: expected (prompts, responses, d) or (rows, d)")
    if values.size == 0:
        raise EmbrmError(f"{path}: an empty array of shape {values.shape}: nothing to import")
    bad = ~np.isfinite(values)
    if bad.any():
        *row, column = np.unravel_index(int(np.argmax(bad)), values.shape)
        place = f"[{row[0]}, {row[1]}]" if len(row) == 2 else f"row {row[0]}"
        raise EmbrmError(f"{path}: {place} has a non-finite value ({values[(*row, column)]}) in column {column} "
                         f"(NaN, inf, or beyond float32's range): fix or re-embed that row at the source")


def _by_prompt(values: np.ndarray, data: Dataset, path: Path):
    """Sun et al.'s layout: values[p, r] is the r-th response (row order) of the p-th prompt (first appearance)."""
    P, R, d = values.shape
    at = data.responses.select("prompt_id").with_row_index("row").select(
        "prompt_id", p=pl.col("row").first().over("prompt_id").rank("dense") - 1,
        r=pl.int_range(pl.len()).over("prompt_id"), count=pl.len().over("prompt_id"))
    n_prompts = data.responses["prompt_id"].n_unique()
    off = at.filter(pl.col("count") != R)
    if n_prompts != P or len(off):
        example = f" (prompt {off['prompt_id'][0]!r} has {off['count'][0]})" if len(off) else ""
        lo, hi = at["count"].min(), at["count"].max()
        raise EmbrmError(f"{path}: shape {values.shape} is {P} prompts x {R} responses, but {data.name} has "
                         f"{n_prompts} prompts with {lo}{'' if lo == hi else f'-{hi}'} responses each{example}: "
                         f"import the dataset the file was made from")
    p, r = at["p"].to_numpy().astype(np.int64), at["r"].to_numpy()
    prompt = at["prompt_id"]
    return (values.reshape(P * R, d)[p * R + r], lambda i: f"[{p[i]}, {r[i]}] (prompt {prompt[i]!r})",
            "prompts x responses")


def _id_file(order: str, path: Path) -> list[str]:
    """The ids of a text file, one a line: UTF-8 (a BOM and CRLF line ends are fine), trailing blank lines ignored,
    a blank line between ids refused."""
    order = str(order)  # the Python API takes a Path too
    if not order.strip():
        raise EmbrmError("--order is empty: pass --order rows or a text file of response ids, one a line")
    file = Path(order)
    if file.is_dir():
        raise EmbrmError(f"--order {order}: is a directory: pass the text file of response ids in it (one a line) "
                         f"or --order rows")
    if not file.is_file():
        column = " nor an id column of the file" if path.suffix.lower() == ".parquet" else ""
        raise EmbrmError(f"--order {order!r}: neither 'rows', an existing id file{column}: pass --order rows or a "
                         f"text file of response ids, one a line")
    data = file.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise EmbrmError(f"{file} line {line}: not UTF-8 text ({e.reason}, byte {data[e.start:e.start + 1]!r}): save "
                         f"the ids as UTF-8, one a line") from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if "" in lines:
        raise EmbrmError(f"{file} line {lines.index('') + 1}: blank line among the ids: give one response id a line, "
                         f"without blank lines")
    return lines


def _rows_of_ids(ids: list, n_rows: int, data: Dataset, path: Path, order: str) -> np.ndarray:
    """For each dataset response, the file row holding its id: each id exactly once, every response present."""
    if len(ids) != n_rows:
        raise EmbrmError(f"{order}: {len(ids)} ids for the {n_rows} rows of {path}: give one response id per row")
    rows = pl.DataFrame({"response_id": ids}, schema={"response_id": pl.Utf8}).with_row_index("row")
    dup = rows.filter(pl.col("response_id").is_duplicated())
    if len(dup):
        first = dup.filter(pl.col("response_id") == dup["response_id"][0])["row"].to_list()
        raise EmbrmError(f"{order}: id {dup['response_id'][0]!r} appears at rows {first[0]} and {first[1]}: each "
                         f"response must have one row")
    wanted = data.responses.select("response_id").with_row_index("pos")
    unknown = rows.join(wanted, on="response_id", how="anti")
    if len(unknown):
        raise EmbrmError(f"{order}: row {unknown['row'][0]}: id {unknown['response_id'][0]!r} is not a response of "
                         f"{data.name} (ids look like {wanted['response_id'][0]!r}): drop that row or import the "
                         f"dataset it belongs to")
    found = wanted.join(rows, on="response_id", how="left", maintain_order="left")
    missing = found.filter(pl.col("row").is_null())
    if len(missing):
        raise EmbrmError(f"{order}: response {missing['response_id'][0]!r} of {data.name} has no row "
                         f"({len(missing)} missing): every response needs a vector")
    return found["row"].to_numpy().astype(np.int64)


# ----------------------------------------------------------------------------------------------- writing


def _differs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n,) bool: rows of a and b with a value further apart than rounding (SAME_TEXT_RTOL of the larger)."""
    tolerance = SAME_TEXT_RTOL * np.maximum(np.abs(a), np.abs(b)) + SAME_TEXT_ATOL
    return (np.abs(a - b) > tolerance).any(axis=1)


def _one_vector_per_text(X: np.ndarray, keys: list[str], where: Callable[[int], str], path: Path) -> np.ndarray:
    """Rows that first carry each text; a repeated text with another vector is refused (the cache has one)."""
    first = (pl.DataFrame({"key": keys}).with_row_index("row")
             .select(pl.col("row").first().over("key"))["row"].to_numpy().astype(np.int64))
    repeat = np.flatnonzero(first != np.arange(len(first)))
    bad = repeat[_differs(X[first[repeat]], X[repeat])]
    if bad.size:
        i = int(bad[0])
        raise EmbrmError(f"{path}: {where(int(first[i]))} and {where(i)} are the same text (prompt and response) "
                         f"with different vectors: check that the file was made from this dataset and --template")
    return np.flatnonzero(first == np.arange(len(first)))


def _write(cache: EmbeddingCache, keys: list[str], X: np.ndarray, unique: np.ndarray,
           where: Callable[[int], str]) -> int:
    """Write the texts the cache lacks; texts already there (a re-import) must hold the same vectors."""
    todo = pl.DataFrame({"key": [keys[i] for i in unique], "row": unique})
    done = todo.join(cache.index(), on=["key"], how="semi")
    if len(done):
        rows = done["row"].to_numpy()
        bad = np.flatnonzero(_differs(cache.lookup(done["key"].to_list()), X[rows]))
        if bad.size:
            raise EmbrmError(f"{cache.path}: already holds another vector for the text at {where(int(rows[bad[0]]))} "
                             f"(an import of another dataset or order): use another --cache-dir")
    new = todo.join(done, on="key", how="anti")
    if len(new):
        cache.write_part(new["key"].to_list(), X[new["row"].to_numpy()])
    cache.settle()
    return len(new)
