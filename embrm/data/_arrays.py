"""Embedding and gold arrays that come without texts (e.g. Sun et al. 2025's release: per split an (P prompts,
R responses, d) embeddings array and a (P, R) gold array, 11.5 GB for a test split in float32).

Files are opened without being read where the format allows (.npy, .safetensors and uncompressed .npz members are
memory-mapped; torch files are mmapped by torch), their dtype is kept (float16, bfloat16, float32, float64), and
every fault is a one-line EmbrmError naming the file and the fix. What is slow to learn about a big file (its
SHA-256, that an array in it is finite) is remembered in `<state dir>/file-facts.json`, keyed by the file's
absolute path and forgotten when its size or mtime changes, so an 11 GB file is hashed and scanned once.

Headers are never trusted: `check_array_file` reads every array header of a file (.npy; each .npz member, stored or
deflated; each safetensors entry) and refuses one that declares more bytes than the file (member) holds, before
anything is allocated or mapped; a lying header is a few bytes that would make numpy ask for petabytes. The
openers here and `embrm import` both go through it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embrm.core import EmbrmError, Rows, mapped, state_dir, write_atomic

ARRAY_FORMATS = (".npy", ".npz", ".safetensors", ".pt", ".pth", ".parquet")
FACTS_FILE = "file-facts.json"
CHUNK_BYTES = 64 * 2 ** 20  # what the finiteness scan converts to float32 at a time
HASH_BLOCK = 2 ** 20
ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then the name and extra-field lengths at bytes 26-29
NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"
NPY_MAX_HEADER = 10_000  # numpy's own limit (max_header_size), checked before numpy reads what the header says
# deflate never expands one input byte to more than 1032 output bytes (a 258-byte match costs at least 2 bits), so
# a member declaring more than this many uncompressed bytes per compressed byte lies about its size
DEFLATE_MAX_RATIO = 1032
SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library's own limit
SAFETENSORS_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
                     "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."  # a hostile header is quoted, not copied whole


# ----------------------------------------------------------------------------- opening


def open_array(path, key: str | None = None) -> np.ndarray:
    """The array in `path`, memory-mapped (read-only) where the format allows, else read into memory; dtype kept.

    `key` names the array in a file that may hold several (.npz member without .npy, safetensors tensor, torch dict
    key, parquet column; None = the only one, or the parquet column "embedding")."""
    path = _existing(path)
    suffix = path.suffix.lower()
    if suffix not in ARRAY_FORMATS:
        raise EmbrmError(f"{path}: unknown array format {suffix or '(no suffix)'!r}: use one of "
                         f"{', '.join(ARRAY_FORMATS)}")
    opener = {".npy": _open_npy, ".npz": _open_npz, ".safetensors": _open_safetensors, ".pt": _open_torch,
              ".pth": _open_torch, ".parquet": _open_parquet}[suffix]
    return opener(path, key)


def _existing(path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise EmbrmError(f"{path} is a directory: name the array file in it")
    if not path.is_file():
        raise EmbrmError(f"{path}: no such file: check the path")
    return path


def _pick(path: Path, key: str | None, keys: list[str], what: str) -> str:
    """The name of the array to read among `keys` (the only one when key is None)."""
    if key is None:
        if len(keys) == 1:
            return keys[0]
        if not keys:
            raise EmbrmError(f"{path} holds no {what}: save the array into it")
        raise EmbrmError(f"{path} holds several {what}s ({', '.join(keys)}): name one with its key")
    if key not in keys:
        raise EmbrmError(f"{path} has no {what} {key!r}: use one of {', '.join(keys) or '(none)'}")
    return key


def _npy_header(f, where: str, start: int, size: int, holder: str = "the file") -> tuple[tuple, bool, np.dtype, int]:
    """(shape, fortran_order, dtype, offset of the data) of the .npy stream at offset `start` of `f`, `size` bytes
    long (`where` names it in messages, `holder` what holds it). A pickle, a damaged header, a negative dimension
    or a header that declares more bytes than the stream holds -> EmbrmError; nothing is allocated."""
    fmt = np.lib.format
    f.seek(start)
    try:
        version = fmt.read_magic(f)
        read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f"unsupported .npy version {version}")
        _npy_header_length(f, where, start, size, version)
        shape, fortran, dtype = read(f)
    except (ValueError, SyntaxError, RecursionError, OverflowError) as e:
        raise EmbrmError(f"{where} is not a readable .npy array ({_one_line(e)}): save it with np.save") from None
    if dtype.hasobject:
        raise EmbrmError(f"{where} holds Python objects (a pickle), which are never loaded: save a numeric array, "
                         f"e.g. np.save(path, array.astype(np.float32))")
    if any(n < 0 for n in shape):
        raise EmbrmError(f"{where} has a damaged header: it declares the negative shape {shape}: save it again")
    offset = f.tell()
    need = offset - start + dtype.itemsize * math.prod(shape)
    if need > size:
        raise EmbrmError(f"{where} is truncated or damaged: its header declares {need} bytes but {holder} holds "
                         f"{size}: copy or save it again")
    return shape, fortran, dtype, offset


def _npy_header_length(f, where: str, start: int, size: int, version: tuple) -> None:
    """Refuse a header length beyond the stream or numpy's limit before numpy reads (and allocates) that many bytes;
    `f` is left where it was."""
    at = f.tell()
    field = f.read(2 if version == (1, 0) else 4)
    length = int.from_bytes(field, "little")
    f.seek(at)
    end = at - start + len(field) + length
    if length > NPY_MAX_HEADER or end > size:
        raise EmbrmError(f"{where} is truncated or damaged: its header declares a {length}-byte header ({end} bytes) "
                         f"but {size} bytes are there: copy or save it again")


def _open_npy(path: Path, key: str | None) -> np.ndarray:
    if key is not None:
        raise EmbrmError(f"{path} holds one array: drop its key ({key!r})")
    shape, fortran, dtype, offset = npy_file_header(path)
    return _memmap(path, dtype, shape, offset, "F" if fortran else "C")


def npy_file_header(path: Path) -> tuple[tuple, bool, np.dtype, int]:
    """The checked header of a .npy file (see _npy_header)."""
    with open(path, "rb") as f:
        return _npy_header(f, str(path), 0, os.fstat(f.fileno()).st_size)


def _open_npz(path: Path, key: str | None) -> np.ndarray:
    members = _npz_members(path)
    info, (shape, fortran, dtype, offset) = members[_pick(path, key, list(members), "array")]
    if offset is not None:  # a stored member: map its bytes in place
        return _memmap(path, dtype, shape, offset, "F" if fortran else "C")
    try:  # compressed: read (its declared size was checked against what its compressed bytes can hold)
        with zipfile.ZipFile(path) as z, z.open(info) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, RuntimeError, OSError, EOFError, zlib.error) as e:
        raise EmbrmError(f"{path} ({info.filename}) is not a readable .npz member ({_one_line(e)}): save it with "
                         f"np.savez") from None


def _npz_members(path: Path) -> dict:
    """name -> (ZipInfo, (shape, fortran, dtype, offset of the data in the file, None when compressed)) for every
    .npy member of the archive, each header checked against the bytes the member holds."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z, open(path, "rb") as raw:
            return {i.filename.removesuffix(".npy"): (i, _npz_member(z, raw, i, path, size))
                    for i in z.infolist() if i.filename.endswith(".npy")}
    except (zipfile.BadZipFile, ValueError, RuntimeError, OSError, EOFError, zlib.error) as e:
        raise EmbrmError(f"{path} is not a readable .npz archive ({_one_line(e)}): save it with np.savez") from None


def _npz_member(z: zipfile.ZipFile, raw, info: zipfile.ZipInfo, path: Path, size: int):
    where = f"{path} ({info.filename})"
    if info.flag_bits & 1:
        raise EmbrmError(f"{where} is encrypted: save the arrays with np.savez")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise EmbrmError(f"{where} is compressed with zip method {info.compress_type}: save the arrays with "
                         f"np.savez or np.savez_compressed")
    end = info.header_offset + ZIP_LOCAL_HEADER.size + info.compress_size
    if end > size:
        raise EmbrmError(f"{where} is truncated or damaged: the archive declares {end} bytes up to its end but the "
                         f"file holds {size}: copy or save it again")
    if info.compress_type == zipfile.ZIP_DEFLATED:
        most = DEFLATE_MAX_RATIO * info.compress_size + 1024
        if info.file_size > most:
            raise EmbrmError(f"{where} is damaged: the archive declares {info.file_size} bytes uncompressed but its "
                             f"{info.compress_size} deflated bytes can hold at most {most}: save it again")
        with z.open(info) as f:  # only the header is inflated
            return (*_npy_header(f, where, 0, info.file_size, "the member")[:3], None)
    raw.seek(info.header_offset)
    local = raw.read(ZIP_LOCAL_HEADER.size).ljust(ZIP_LOCAL_HEADER.size, b"\0")  # a cut file reads short
    signature, name_len, extra_len = ZIP_LOCAL_HEADER.unpack(local)
    start = info.header_offset + ZIP_LOCAL_HEADER.size + name_len + extra_len
    if signature != ZIP_MAGIC or info.file_size != info.compress_size or start + info.file_size > size:
        raise EmbrmError(f"{where} is truncated or damaged: the archive declares {start + info.file_size} bytes up "
                         f"to its end but the file holds {size}: copy or save it again")
    return _npy_header(raw, where, start, info.file_size, "the member")


def _memmap(path: Path, dtype, shape, offset: int, order: str = "C") -> np.ndarray:
    if math.prod(shape) == 0:  # an empty array cannot be mapped
        return np.empty(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape), order=order)


def _safetensors_dtype(name: str):
    if name == "BF16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    codes = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
             "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1"}
    return np.dtype(codes[name]) if name in codes else None


def _open_safetensors(path: Path, key: str | None) -> np.ndarray:
    start, entries = _safetensors_header(path)
    name = _pick(path, key, sorted(entries), "tensor")
    dtype_name, shape, begin, _ = entries[name]
    dtype = _safetensors_dtype(dtype_name)
    if dtype is None:
        raise EmbrmError(f"{path}: tensor {name!r} is {dtype_name}: save it as F32, F16, BF16 or F64")
    return _memmap(path, dtype, shape, start + begin)


def _safetensors_header(path: Path) -> tuple[int, dict]:
    """(offset of the data, name -> (dtype name, shape, begin, end)) of a .safetensors file, every entry checked:
    a known dtype, a non-negative shape whose bytes are its offsets' span, offsets inside the file and not
    overlapping."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        if n is None or n > min(size - 8, SAFETENSORS_MAX_HEADER):
            raise EmbrmError(f"{path} is truncated or not a .safetensors file: its header declares "
                             f"{'no length' if n is None else f'{n} bytes'} but the file holds {size}: copy it again")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise EmbrmError(f"{path} has a damaged .safetensors header ({_one_line(e)}): save it again") from None
    if not isinstance(header, dict):
        raise EmbrmError(f"{path} has a damaged .safetensors header (not a JSON object): save it again")
    entries = {name: _safetensors_entry(path, name, entry) for name, entry in header.items() if name != "__metadata__"}
    spans = sorted((begin, end, name) for name, (_, _, begin, end) in entries.items())
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            raise EmbrmError(f"{path} has a damaged .safetensors header: tensors {first!r} and {second!r} overlap: "
                             f"save it again")
    last = max((end for _, end, _ in spans), default=0)
    if 8 + n + last > size:
        raise EmbrmError(f"{path} is truncated or damaged: its header declares {8 + n + last} bytes but the file "
                         f"holds {size}: copy or save it again")
    return 8 + n, entries


def _safetensors_entry(path: Path, name: str, entry) -> tuple[str, list[int], int, int]:
    def count(v) -> bool:
        return type(v) is int and v >= 0

    try:
        dtype_name, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not (isinstance(shape, list) and all(map(count, shape)) and count(begin) and count(end) and begin <= end):
            raise ValueError(f"shape {shape} and data_offsets {entry['data_offsets']} must be counts, begin <= end")
        if not isinstance(dtype_name, str):
            raise ValueError(f"dtype {dtype_name!r} is not a name")
    except (TypeError, KeyError, ValueError) as e:
        raise EmbrmError(f"{path}: tensor {name!r} has a damaged header entry ({_one_line(e)}): save it again") \
            from None
    if dtype_name not in SAFETENSORS_SIZES:
        raise EmbrmError(f"{path}: tensor {name!r} has the unknown dtype {dtype_name!r}: save it as F32, F16, BF16 "
                         f"or F64")
    declared = SAFETENSORS_SIZES[dtype_name] * math.prod(shape)
    if end - begin != declared:
        raise EmbrmError(f"{path}: tensor {name!r} has {end - begin} bytes for shape {tuple(shape)} of "
                         f"{dtype_name} (which declares {declared}): save it again")
    return dtype_name, shape, begin, end


def check_array_file(path) -> None:
    """Refuse (one-line EmbrmError) a .npy, .npz or .safetensors file any of whose array headers is damaged, holds
    Python objects or declares more bytes than the file (the member) holds. Reads headers only: nothing is
    allocated or mapped. Other formats are checked by their own readers (torch compares each record's size with
    its storage before reading; parquet's readers check their pages)."""
    path = _existing(path)
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic.startswith(ZIP_MAGIC[:2]):
            _npz_members(path)
        elif magic == NPY_MAGIC:
            npy_file_header(path)
        else:
            raise EmbrmError(f"{path} is neither a .npy array nor an .npz archive (it starts with {magic!r}): save it "
                             f"with np.save or np.savez")
    elif suffix == ".safetensors":
        _safetensors_header(path)


def _open_torch(path: Path, key: str | None) -> np.ndarray:
    import torch

    try:  # only torch's zip format can be mapped; an old-format file is read into memory
        obj = torch.load(path, weights_only=True, mmap=zipfile.is_zipfile(path), map_location="cpu")
    except Exception as e:  # refused pickles, damaged archives...: torch raises many kinds
        raise EmbrmError(f"{path} cannot be loaded as tensors only ({type(e).__name__}): it must hold a tensor or "
                         f"a dict of tensors saved with torch.save (pickled objects are never loaded)") from None
    if isinstance(obj, dict):
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        obj = tensors[_pick(path, key, list(tensors), "tensor")]
    elif not isinstance(obj, torch.Tensor):
        raise EmbrmError(f"{path} holds a {type(obj).__name__}: save a tensor or a dict of tensors with torch.save")
    elif key is not None:
        raise EmbrmError(f"{path} holds one tensor: drop its key ({key!r})")
    return _torch_numpy(obj.detach(), path)


def _torch_numpy(t, path: Path) -> np.ndarray:
    """The tensor's data as a numpy array sharing its memory (a copy never made)."""
    import torch

    if t.dtype == torch.bfloat16:
        import ml_dtypes
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    try:
        return t.numpy()
    except (TypeError, RuntimeError):
        raise EmbrmError(f"{path} holds a {t.dtype} tensor: save float32, float16, bfloat16 or float64") from None


def _open_parquet(path: Path, key: str | None) -> np.ndarray:
    """One row per response, a prompt's rows consecutive (same `prompt_id`): (P, R, d) from a list column of
    floats, (P, R) from a scalar column. Read into memory."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    key = key or "embedding"
    try:
        columns = pq.read_schema(path).names
        if key not in columns or "prompt_id" not in columns:
            missing = key if key not in columns else "prompt_id"
            raise EmbrmError(f"{path} has no column {missing!r} (it has {', '.join(columns)}): name the column "
                             f"to read, beside a prompt_id column grouping each prompt's rows")
        table = pq.read_table(path, columns=[key, "prompt_id"])
    except (pa.ArrowException, OSError) as e:
        raise EmbrmError(f"{path} is not a readable parquet file ({_one_line(e)}): write it again") from None
    ids, values = table["prompt_id"], table[key].combine_chunks()
    if len(ids) == 0:
        raise EmbrmError(f"{path} has no rows: write one row per response")
    if ids.null_count or values.null_count:
        raise EmbrmError(f"{path} has empty cells in {key!r} or prompt_id: fill or drop those rows")
    starts = np.r_[0, np.flatnonzero(pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1))
                                      .to_numpy(zero_copy_only=False)) + 1]
    if len(starts) != pc.count_distinct(ids).as_py():
        raise EmbrmError(f"{path}: a prompt's rows are not consecutive: sort the rows by prompt_id")
    sizes = np.diff(np.r_[starts, len(ids)])
    if (sizes != sizes[0]).any():
        i = int(np.flatnonzero(sizes != sizes[0])[0])
        raise EmbrmError(f"{path}: prompt {ids[int(starts[i])].as_py()!r} has {sizes[i]} rows, the first prompt "
                         f"{sizes[0]}: every prompt needs the same number of responses")
    shape = (len(starts), int(sizes[0]))
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or \
            pa.types.is_fixed_size_list(values.type):
        lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
        if (lengths != lengths[0]).any() or lengths[0] == 0:
            raise EmbrmError(f"{path}: the lists in {key!r} have different or zero lengths: every embedding needs "
                             f"the same dimension")
        flat = values.flatten()
        if flat.null_count or not (pa.types.is_floating(flat.type) or pa.types.is_integer(flat.type)):
            raise EmbrmError(f"{path}: column {key!r} must hold lists of numbers without nulls, not {values.type}")
        return flat.to_numpy(zero_copy_only=False).reshape(*shape, int(lengths[0]))
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        raise EmbrmError(f"{path}: column {key!r} must hold numbers or lists of numbers, not {values.type}")
    return values.to_numpy(zero_copy_only=False).reshape(shape)


# ----------------------------------------------------------------------------- a split


@dataclass(frozen=True)
class ArraySplit:
    """One split of a text-less array dataset: embeddings (P, R, d) as opened (memmap where possible) and gold
    (P, R) float64 in memory."""

    embeddings: np.ndarray
    gold: np.ndarray
    embeddings_path: Path
    gold_path: Path


def _is_float(dtype: np.dtype) -> bool:
    import ml_dtypes
    return np.issubdtype(dtype, np.floating) or dtype == ml_dtypes.bfloat16


def read_split(embeddings, gold, *, embeddings_key: str | None = None, gold_key: str | None = None,
               where: str = "") -> ArraySplit:
    """Open a split's embeddings (P, R, d) and gold (P, R) or (P, R, 1) and check them: shapes that agree, at
    least one prompt of at least two responses, every value finite. `where` prefixes the messages (e.g.
    "sun.toml [dataset.train]"). A parquet gold file is read from its "gold" column unless gold_key names another."""
    prefix = f"{where}: " if where else ""
    emb_path, gold_path = Path(embeddings), Path(gold)
    if gold_key is None and gold_path.suffix.lower() == ".parquet":
        gold_key = "gold"
    try:
        X = open_array(emb_path, embeddings_key)
        g = open_array(gold_path, gold_key)
        _check_split(X, g, emb_path, gold_path)
        g = np.array(g.reshape(g.shape[:2]), dtype=np.float64)  # in memory, whatever it was stored as
        _check_gold(g, gold_path)
        ensure_finite(X, emb_path, embeddings_key)
    except EmbrmError as e:
        raise EmbrmError(prefix + str(e), field=e.field) from None
    return ArraySplit(embeddings=X, gold=g, embeddings_path=emb_path, gold_path=gold_path)


def _check_split(X: np.ndarray, g: np.ndarray, emb_path: Path, gold_path: Path) -> None:
    if X.ndim != 3:
        raise EmbrmError(f"{emb_path}: embeddings must be 3-D (prompts, responses, dim); got shape {X.shape}")
    if not _is_float(X.dtype):
        raise EmbrmError(f"{emb_path}: embeddings must be float16, bfloat16, float32 or float64, not {X.dtype}")
    if X.shape[0] < 1 or X.shape[1] < 2 or X.shape[2] < 1:
        raise EmbrmError(f"{emb_path} has shape {X.shape}: need at least 1 prompt of at least 2 responses and a "
                         f"dimension >= 1")
    if not (g.ndim == 2 or g.ndim == 3 and g.shape[2] == 1):
        raise EmbrmError(f"{gold_path}: gold must be (prompts, responses) or (prompts, responses, 1); got shape "
                         f"{g.shape}")
    if not (_is_float(g.dtype) or np.issubdtype(g.dtype, np.integer)):
        raise EmbrmError(f"{gold_path}: gold must hold real numbers, not {g.dtype}")
    if g.shape[:2] != X.shape[:2]:
        raise EmbrmError(f"gold {gold_path} has shape {g.shape} but embeddings {emb_path} have {X.shape}: both need "
                         f"the same prompts and responses")


def _check_gold(g: np.ndarray, path: Path) -> None:
    bad = ~np.isfinite(g)
    if bad.any():
        p, r = np.argwhere(bad)[0]
        raise EmbrmError(f"{path}: gold holds NaN or inf in {int(bad.sum())} responses (first: prompt {p}, "
                         f"response {r}): fix or drop those prompts")


# ----------------------------------------------------------------------------- remembered facts


def ensure_finite(array: np.ndarray, path, key: str | None = None) -> None:
    """No NaN or inf in `array` (open_array(path, key)), scanned over prompts about CHUNK_BYTES of float32 at a
    time, else EmbrmError naming the file and the first bad (prompt, response). Remembered per (file, key)."""
    path = Path(path)
    entry = _fact(path)
    if entry is not None and (key or "") in entry.get("finite", ()):
        return
    stat = _stat(path)
    row = max(1, math.prod(array.shape[1:]) * 4)
    step = max(1, CHUNK_BYTES // row)
    rows, per = _plain_reads(array), math.prod(array.shape[1:-1])  # rows of one prompt (R; 1 for 2-D arrays)
    for i in range(0, array.shape[0], step):
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, as it would in a fit
            chunk = rows[i * per:(i + step) * per].reshape(-1, *array.shape[1:])
        ok = np.isfinite(chunk.reshape(*chunk.shape[:2], -1)).all(axis=2) if chunk.ndim >= 2 else np.isfinite(chunk)
        if not ok.all():
            first = np.argwhere(~ok)[0]
            where = f"prompt {i + first[0]}, response {first[1]}" if ok.ndim == 2 else f"row {i + first[0]}"
            name = f" ({key})" if key else ""
            raise EmbrmError(f"{path}{name}: embeddings hold NaN or inf in {int((~ok).sum())} responses of prompts "
                             f"{i}-{i + len(chunk) - 1} (first: {where}): re-embed them or drop those prompts")
    _remember(path, stat, lambda e: e.update(finite=sorted(set(e.get("finite", [])) | {key or ""})))


def _plain_reads(array: np.ndarray) -> Rows:
    """The array's rows as a Rows: a memory-mapped file is read in plain blocks, so the scan leaves its pages in
    the page cache, not in this process."""
    flat = array.reshape(len(array), -1) if array.ndim != 3 else array.reshape(-1, array.shape[2])
    if isinstance(array, np.memmap):
        flat = mapped(flat, array.offset)
    return Rows([flat])


def file_digest(path) -> str:
    """SHA-256 (hex) of the file's bytes, read in blocks; remembered until the file's size or mtime changes."""
    path = _existing(path)
    entry = _fact(path)
    if entry is not None and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    stat = _stat(path)
    digest = _sha256(path)
    _remember(path, stat, lambda e: e.update(sha256=digest))
    return digest


def _sha256(path: Path) -> str:
    h, block = hashlib.sha256(), bytearray(HASH_BLOCK)
    view = memoryview(block)
    with open(path, "rb") as f:
        while n := f.readinto(block):
            h.update(view[:n])
    return h.hexdigest()


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _load_facts() -> dict:
    """The store, or {} when it is missing, unreadable or damaged (it is then rebuilt)."""
    try:
        facts = json.loads((state_dir() / FACTS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return facts if isinstance(facts, dict) else {}


def _fact(path: Path, facts: dict | None = None) -> dict | None:
    """What is remembered about the file (in `facts`, else the store), while its size and mtime are those
    remembered."""
    entry = (_load_facts() if facts is None else facts).get(str(path.resolve()))
    stat = _stat(path)
    if not isinstance(entry, dict) or stat is None or (entry.get("size"), entry.get("mtime_ns")) != stat:
        return None
    if not isinstance(entry.get("finite", []), list):
        entry.pop("finite")
    return entry


def _remember(path: Path, stat: tuple[int, int] | None, update) -> None:
    """Apply `update` to the file's entry, if the file is unchanged since `stat` was taken (before the work).
    Nothing is remembered where the state directory cannot be written."""
    if stat is None or _stat(path) != stat:
        return
    facts, name = _load_facts(), str(path.resolve())
    entry = _fact(path, facts) or {"size": stat[0], "mtime_ns": stat[1]}
    update(entry)
    facts[name] = entry
    try:
        state_dir().mkdir(parents=True, exist_ok=True)
        write_atomic(state_dir() / FACTS_FILE, json.dumps(facts, indent=1))
    except OSError:
        pass
