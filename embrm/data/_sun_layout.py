"""Embedding arrays in Sun et al.'s release layout, with a planted gold whose optimum is known.

Sun et al. 2025 ("Reusing embeddings", holarissun/embedding-based-llm-alignment, load_data.py) release, per setup,

    embd_<gen>_<embedder>_<task>_<split>.npy     (P, R, d)   train 40,000 x 10 x 2,048, test 2,000 x 500 x 2,048
    reward_<gen>_<embedder>_<task>_<split>.npy   (P, R, 1)   the gold reward of each response

Tests, CI and benchmarks need that layout at any size (the full one is 11.5 GB) with a gold they can reason about,
so ``write_sun_layout`` generates it chunk by chunk over prompts into ``np.lib.format.open_memmap`` files: peak
memory is one prompt's rows plus a chunk of dirty pages, never the array.

The planted gold (d = dim; w, v fixed orthogonal unit vectors drawn from ``seed``):

    x      = mu_p + eps          mu_p = the prompt's offset, shared by its responses:
                                        0.5 * N(0, I/d) with its w and v components removed (so |mu_p| ~ 0.5)
                                 eps  = the response's own part: N(0, I/d) (so |eps| ~ 1)
    z1     = sqrt(d) * w.x       = sqrt(d) * w.eps ~ N(0, 1)
    z2     = sqrt(d) * v.x       = sqrt(d) * v.eps ~ N(0, 1)
    g(x)   = z1 - z2^2           the gold: rewards the w direction, penalises any v component

So the gold depends on the response part only (the offsets are orthogonal to w and v), a linear head can learn
the z1 part (about a third of the variance: var z1 = 1, var z2^2 = 2) and an MLP all of it. The known optimum: g
grows along w and is highest where v.x = 0; the best response of a prompt is the argmax of its stored gold.
``planted_gold(X, dim, seed)`` is the same g, for any rows. There is no label noise: the gold is exactly g of the
stored rows (computed after rounding to the stored dtype).

Everything is seeded per (split, prompt) with ``SeedSequence(seed, spawn_key=(split, prompt))``, so the files do
not depend on ``chunk_bytes``, and train and test prompts (different offsets) come from the same family. Files
appear atomically (``<file>.part`` then ``os.replace``), and a ``layout.json`` of the parameters lets a re-run with
the same parameters reuse the complete files instead of regenerating them (a new ``name`` only writes a new
declaration).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embrm.core import SEED, EmbrmError, Integer, Progress, check_choice, check_value, write_atomic
from embrm.data._array_dataset import ArraySource, load_array_dataset
from embrm.data._arrays import npy_file_header, state_dir

__all__ = ["SunLayout", "planted_gold", "write_sun_layout"]

SPLITS = ("train", "test")
DTYPES = ("float32", "float16")
PROMPT_SCALE = 0.5
GOLD = "g(x) = sqrt(d) w.x - (sqrt(d) v.x)^2; x = prompt offset (orthogonal to w, v) + N(0, I/d)"
LAYOUT_VERSION = 1  # bump when the generator changes, so old files are not reused
LAYOUT_FILE = "layout.json"
_DIRECTIONS_KEY = 2  # spawn key of the gold's directions (0, 1: the splits' prompts)


@dataclass(frozen=True)
class SunLayout:
    """The files of one generated setup (paths absolute where ``directory`` is) and the parameters behind them."""

    directory: Path
    declaration: Path  # the dataset declaration TOML written beside the arrays
    train_embeddings: Path
    train_gold: Path
    test_embeddings: Path
    test_gold: Path
    params: dict  # every parameter that determines the files (chunk_bytes and progress do not)


def planted_gold(X: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """The planted gold g (float64, (n,)) of rows X (n, dim): the function ``write_sun_layout`` used."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != dim:
        raise EmbrmError(f"planted_gold: X must have shape (n, {dim}), got {X.shape}")
    return _gold(X, _directions(dim, seed))


def _directions(dim: int, seed: int) -> np.ndarray:
    """(dim, 2): the orthonormal gold directions w, v."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_DIRECTIONS_KEY,)))
    q, _ = np.linalg.qr(rng.standard_normal((dim, 2)))
    return q


def write_sun_layout(directory, *, train_prompts=40_000, train_responses=10, test_prompts=2_000,
                     test_responses=500, dim=2_048, dtype="float32", seed=0, gen="Gemma2b-sft",
                     embedder="Gemma2b", task="Harmless", name=None, chunk_bytes=64 << 20,
                     progress: bool | None = None) -> SunLayout:
    """Write (or reuse) the four arrays, ``layout.json`` and the declaration ``<name>.toml`` in ``directory``.

    Shapes: train (train_prompts, train_responses, dim), test (test_prompts, test_responses, dim), golds (P, R, 1)
    float32. dtype: "float32" or "float16". name: the dataset's name (default "sun-<task>-<embedder>", lower-cased).
    chunk_bytes: about how much is written between flushes and progress updates. progress: as embrm.core.Progress.
    """
    params = _params(train_prompts, train_responses, test_prompts, test_responses, dim, dtype, seed, gen,
                     embedder, task, name)
    check_value("chunk_bytes", chunk_bytes, Integer(1, 2 ** 62))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    layout = _layout(directory, params)
    if not _complete(layout):
        (directory / LAYOUT_FILE).unlink(missing_ok=True)  # a half-replaced set must never look complete
        basis = _directions(dim, seed)
        total = train_prompts * train_responses + test_prompts * test_responses  # rows: the splits' prompts differ
        with Progress(total, "sun layout", "responses", enabled=progress) as bar:  # in size, their rows do not
            for i, split in enumerate(SPLITS):
                emb, gold = _split_paths(layout, split)
                _write_split(emb, gold, params[f"{split}_prompts"], params[f"{split}_responses"], i, params,
                             basis, chunk_bytes, bar)
    _write_if_changed(layout.declaration, _declaration(layout))
    _write_if_changed(directory / LAYOUT_FILE, json.dumps(params, indent=2, sort_keys=True) + "\n")
    return layout


# ----------------------------------------------------------------------------- parameters and files

def _params(train_prompts, train_responses, test_prompts, test_responses, dim, dtype, seed, gen, embedder, task,
            name) -> dict:
    """The checked parameters (one-line EmbrmErrors) plus the generator's own facts."""
    count = Integer(1, 2 ** 40)
    for key, value in (("train_prompts", train_prompts), ("test_prompts", test_prompts)):
        check_value(key, value, count)
    for key, value in (("train_responses", train_responses), ("test_responses", test_responses)):
        check_value(key, value, Integer(2, 2 ** 40))
    check_value("dim", dim, Integer(2, 2 ** 40))
    check_choice("dtype", dtype, DTYPES)
    check_value("seed", seed, SEED)
    for key, value in (("gen", gen), ("embedder", embedder), ("task", task)):
        _check_part(key, value)
    name = f"sun-{task}-{embedder}".lower() if name is None else name
    _check_part("name", name)
    ints = (int(v) for v in (train_prompts, train_responses, test_prompts, test_responses, dim, seed))  # numpy ints
    train_prompts, train_responses, test_prompts, test_responses, dim, seed = ints  # -> JSON-able
    return dict(train_prompts=train_prompts, train_responses=train_responses, test_prompts=test_prompts,
                test_responses=test_responses, dim=dim, dtype=dtype, seed=seed, gen=gen, embedder=embedder,
                task=task, name=name, prompt_scale=PROMPT_SCALE, gold=GOLD, layout_version=LAYOUT_VERSION)


def _check_part(key: str, value) -> None:
    """A name that goes into a file name: a non-empty string without path separators."""
    if not isinstance(value, str) or not value or any(c in value for c in "/\\\0") or value in (".", ".."):
        raise EmbrmError(f"{key} must be a non-empty name without path separators (it names files), got "
                         f"{value!r}", field=key)


def _layout(directory: Path, params: dict) -> SunLayout:
    stem = f"{params['gen']}_{params['embedder']}_{params['task']}"
    files = {f"{split}_{kind}": directory / f"{prefix}_{stem}_{split}.npy"
             for split in SPLITS for kind, prefix in (("embeddings", "embd"), ("gold", "reward"))}
    return SunLayout(directory=directory, declaration=directory / f"{params['name']}.toml", params=params, **files)


def _split_paths(layout: SunLayout, split: str) -> tuple[Path, Path]:
    return getattr(layout, f"{split}_embeddings"), getattr(layout, f"{split}_gold")


def _complete(layout: SunLayout) -> bool:
    """layout.json records these parameters (the name aside: it names only the declaration) and every array is
    there with the expected header."""
    p = layout.params
    try:
        if _without_name(json.loads((layout.directory / LAYOUT_FILE).read_text(encoding="utf-8"))) != \
                _without_name(p):
            return False
        for split in SPLITS:
            shape = (p[f"{split}_prompts"], p[f"{split}_responses"])
            emb, gold = _split_paths(layout, split)
            if _header(emb) != (shape + (p["dim"],), np.dtype(p["dtype"])) or \
                    _header(gold) != (shape + (1,), np.dtype(np.float32)):
                return False
    except (OSError, ValueError, EmbrmError):
        return False
    return True


def _without_name(params) -> dict | None:
    return {k: v for k, v in params.items() if k != "name"} if isinstance(params, dict) else None


def _header(path: Path) -> tuple[tuple, np.dtype]:
    """(shape, dtype) of a .npy file whose size matches its header (through the shared header check: a damaged or
    lying header raises EmbrmError, a file of another size ValueError)."""
    shape, fortran, dt, offset = npy_file_header(path)
    if fortran or path.stat().st_size != offset + math.prod(shape) * dt.itemsize:
        raise ValueError(f"{path}: not a complete C-order array")
    return tuple(shape), dt


def _declaration(layout: SunLayout) -> str:
    """The dataset declaration: its name and each split's two files, relative to the TOML."""
    lines = ["[dataset]", f"name = {json.dumps(layout.params['name'])}"]
    for split in SPLITS:
        emb, gold = _split_paths(layout, split)
        lines += ["", f"[dataset.{split}]", f"embeddings = {json.dumps(emb.name)}", f"gold = {json.dumps(gold.name)}"]
    return "\n".join(lines) + "\n"


def _write_if_changed(path: Path, text: str) -> None:
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        write_atomic(path, text)


# ----------------------------------------------------------------------------- generation

def _write_split(emb_path: Path, gold_path: Path, n_prompts: int, n_responses: int, split: int, params: dict,
                 basis: np.ndarray, chunk_bytes: int, bar: Progress) -> None:
    """Both arrays of one split, written to .part files prompt by prompt, renamed once complete. The embeddings
    are mapped one chunk at a time, so the written pages leave the process with each chunk."""
    dim, dtype = params["dim"], np.dtype(params["dtype"])
    parts = [p.with_name(p.name + ".part") for p in (emb_path, gold_path)]
    per_chunk = max(1, chunk_bytes // (n_responses * dim * dtype.itemsize))
    try:
        emb = np.lib.format.open_memmap(parts[0], mode="w+", dtype=dtype, shape=(n_prompts, n_responses, dim))
        del emb  # created (header + size); filled chunk by chunk below
        gold = np.lib.format.open_memmap(parts[1], mode="w+", dtype=np.float32, shape=(n_prompts, n_responses, 1))
        for start in range(0, n_prompts, per_chunk):
            stop = min(n_prompts, start + per_chunk)
            emb = np.lib.format.open_memmap(parts[0], mode="r+")
            for p in range(start, stop):
                rows = _prompt_rows(params["seed"], split, p, n_responses, basis).astype(dtype, copy=False)
                emb[p] = rows
                gold[p, :, 0] = _gold(rows, basis)
            emb.flush()
            del emb
            bar.advance((stop - start) * n_responses)
        gold.flush()
        del gold  # close the map before the rename
        for part, final in zip(parts, (emb_path, gold_path)):
            os.replace(part, final)
    finally:
        for part in parts:
            part.unlink(missing_ok=True)  # only there when the write failed


def _prompt_rows(seed: int, split: int, prompt: int, n_responses: int, basis: np.ndarray) -> np.ndarray:
    """(R, d) float32 rows of one prompt: its offset (orthogonal to the gold directions) + each response's part."""
    dim = basis.shape[0]
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split, prompt)))
    offset = rng.standard_normal(dim) * (PROMPT_SCALE / math.sqrt(dim))
    offset -= basis @ (basis.T @ offset)
    rows = rng.standard_normal((n_responses, dim), dtype=np.float32)
    rows *= np.float32(1 / math.sqrt(dim))
    rows += offset.astype(np.float32)
    return rows


def _gold(rows: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """g of rows (n, d), given the gold directions (d, 2)."""
    z = math.sqrt(basis.shape[0]) * (rows.astype(np.float64) @ basis)
    return z[:, 0] - z[:, 1] ** 2


def sun_dataset(train_prompts: int = 200, train_responses: int = 10, test_prompts: int = 50,
                test_responses: int = 100, dim: int = 64, seed: int = 0):
    """A generated dataset in Sun et al.'s layout (`generate = "sun"` in a study; small by default): the arrays are
    written once under the state dir (embrm.data._arrays.state_dir()/generated) and read back as any array
    dataset, from disk. Returns (Dataset, its vectors)."""
    params = _params(train_prompts, train_responses, test_prompts, test_responses, dim, "float32", seed, "gen",
                     "planted", "sun", None)
    key = hashlib.blake2b(json.dumps(params, sort_keys=True).encode(), digest_size=6).hexdigest()
    layout = write_sun_layout(state_dir() / "generated" / f"sun-{key}", train_prompts=train_prompts,
                              train_responses=train_responses, test_prompts=test_prompts,
                              test_responses=test_responses, dim=dim, seed=seed, gen="gen", embedder="planted",
                              task="sun", progress=False)
    sources = tuple(ArraySource(split, str(e), str(g)) for split, (e, g) in
                    zip(SPLITS, (_split_paths(layout, s) for s in SPLITS)))
    ds = load_array_dataset(sources, "sun", str(layout.declaration))
    return ds, ds.vectors


def check_sun_dataset(**params) -> None:
    """Refuse bad parameters of sun_dataset before anything is written."""
    v = {k: p.default for k, p in inspect.signature(sun_dataset).parameters.items()} | params
    _params(v["train_prompts"], v["train_responses"], v["test_prompts"], v["test_responses"], v["dim"], "float32",
            v["seed"], "gen", "planted", "sun", None)
