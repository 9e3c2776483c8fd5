"""The embedder contract shared by every backend, plus small helpers the local backends share."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import re
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embrm.core import EmbrmError, fast_bf16, fast_int8
from embrm.embedding.backends import _openvino

# Bump when a change in embrm (not in the model) changes the vectors, so old caches stop matching.
SPEC_VERSION = 1
DTYPES = ("auto", "float32", "bfloat16", "int8")  # int8: OpenVINO on a CPU (backends._openvino)


@dataclass(frozen=True)
class EmbedBatch:
    """Vectors for n texts, row-aligned with the texts passed to `Embedder.embed`."""

    vectors: np.ndarray  # (n, d) float32, C-contiguous
    n_tokens: np.ndarray  # (n,) int32: tokens of the full text (before truncation); -1 if unknown
    truncated: np.ndarray  # (n,) bool: the text was cut to max_length
    response_cut: np.ndarray  # (n,) bool: the response itself lost tokens (not only the prompt)

    @classmethod
    def build(cls, vectors, n_tokens, truncated, response_cut=None) -> "EmbedBatch":
        """Coerce to the documented dtypes/layout (one copy at most). `response_cut` defaults to all False, for
        backends that never cut (or cannot tell)."""
        truncated = np.asarray(truncated, dtype=bool)
        return cls(
            np.ascontiguousarray(vectors, dtype=np.float32),
            np.asarray(n_tokens, dtype=np.int32),
            truncated,
            np.zeros(truncated.shape, bool) if response_cut is None else np.asarray(response_cut, dtype=bool),
        )


class Embedder(ABC):
    """One model that turns texts into fixed-size vectors.

    `spec()` must never load the model: the cache fingerprints it to decide whether anything needs embedding.
    """

    backend: str = ""

    @abstractmethod
    def spec(self) -> dict:
        """JSON-able description of everything that determines the vectors (never secrets)."""

    @abstractmethod
    def embed(self, texts: list[str], response_starts: list[int] | None = None) -> EmbedBatch:
        """Embed texts (loads the model on first call). `response_starts` (the char offset where each text's
        response begins) lets local backends cut a too-long text's prompt rather than its response, and is
        used by response pooling."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Vector size (may load the model)."""

    def precision(self) -> str:
        """How the vectors are computed, for summaries and reports (what `dtype="auto"` chose, and why)."""
        return str(self.spec().get("dtype", ""))

    def close(self) -> None:
        """Release the model / connections. Safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec()})"


# ----------------------------------------------------------------------------------------------- validation


def check_texts(texts) -> list[str]:
    """Fail with the first offending row instead of a tokenizer traceback deep in a batch."""
    if isinstance(texts, str):
        raise EmbrmError("embed() takes a list of texts, got a single str: wrap it in a list")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise EmbrmError(f"text {i} is {type(t).__name__}, not str: fill or drop missing prompts/responses")
    return texts


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise EmbrmError(f"option {name}={value!r} is not valid: use one of {', '.join(map(repr, choices))}")


def check_positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EmbrmError(f"option {name}={value!r} is not valid: pass a positive integer")


def require_packages(*modules: str, extra: str = "hf") -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise EmbrmError(f"missing package(s) {', '.join(missing)}: pip install \"embrm[{extra}]\"")


# ------------------------------------------------------------------------------------------- model location

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def local_or_hub(model: str, what: str) -> tuple[str, bool]:
    """Return (model, is_local). A string that looks like a path but does not exist is a user error."""
    path = Path(model).expanduser()
    if path.exists():
        return str(path), True
    looks_like_path = model.startswith(("/", ".", "~")) or model.endswith(".gguf") or not _HUB_ID.match(model)
    if looks_like_path:
        raise EmbrmError(f"model path {model} does not exist: pass {what} or a hub id (hub ids need internet)")
    return model, False


VERBOSE_ENV = "EMBRM_VERBOSE"  # set (e.g. by `embrm --verbose`): the model libraries' own output is shown


@contextlib.contextmanager
def quiet_loading():
    """Keep the model libraries' own output (log lines, progress bars such as transformers' GGUF conversion, which
    no setting turns off) off the terminal while a model loads, so that a failure is embrm's one line; shown with
    EMBRM_VERBOSE=1 (`embrm --verbose ...`)."""
    if os.environ.get(VERBOSE_ENV):
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def load_error(model: str, exc: BaseException, what: str) -> EmbrmError:
    """One-line error for a model that failed to load (the cause stays chained for debugging)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return EmbrmError(f"could not load model {model!r} ({type(exc).__name__}: {first}): pass {what}")


# -------------------------------------------------------------------------------------------- dtype, device


@functools.lru_cache(maxsize=None)
def resolve_device(device: str) -> str:
    """'auto' -> cuda, else mps, else cpu; an explicit device (cpu, cuda, cuda:N, mps) must exist here."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": bool(mps and mps.is_available())}
    if device == "auto":
        return next(kind for kind in ("cuda", "mps", "cpu") if available[kind])
    kind = str(device).split(":")[0]
    if kind not in available:
        raise EmbrmError(f"--device {device!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    if not available[kind]:
        raise EmbrmError(f"--device {device}: torch sees no {kind} device on this machine: use --device cpu or auto")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """'auto' -> bfloat16 on a CUDA device that supports it or a CPU with fast bf16 matmuls
    (embrm.core._hardware.fast_bf16), else float32 (MPS included); a backend with an int8 path decides that
    first (int8_candidate). The resolved name goes into spec(), so caches of different dtypes never mix."""
    check_choice("dtype", dtype, DTYPES)
    if dtype == "int8" and device != "cpu":
        raise EmbrmError(f"dtype int8 runs on the CPU (OpenVINO), not {device}: use --device cpu or another dtype")
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if device == "cpu" and fast_bf16() else "float32"


class AutoInt8:
    """dtype "auto" for a backend with an int8 path (backends._openvino): int8 once it agrees with float32 on this
    machine, else float32; resolved on first use. The backend sets self._dtype (None: still to resolve) and
    self._agreement = None, and gives agreement() (-> _openvino.Agreement, measured once per model and machine)."""

    @property
    def dtype(self) -> str:
        if self._dtype is None:
            self._dtype = "int8" if self.agreement().ok else "float32"
        return self._dtype

    def precision(self) -> str:
        if self.dtype == "int8":
            return f"int8 on OpenVINO, {self.agreement().describe()}"
        if self._agreement is not None:  # auto measured int8 and did not take it
            return f"float32 (int8 not used: {self._agreement.describe()}, below {_openvino.AGREEMENT_FLOOR})"
        return self.dtype


def model_files(root: Path) -> list:
    """(name, size, mtime) of a local model's files (the file, or a folder's first 500): a model changed in place
    is checked again. [] where root is not on disk (a hub id)."""
    if not root.exists():
        return []
    base = root.parent if root.is_file() else root
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())[:500]
    return [(str(p.relative_to(base)), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]


def int8_candidate(dtype: str, device: str) -> bool:
    """'auto' on a CPU where int8 is the fastest path (embrm.core.fast_int8) and OpenVINO is installed: the backend
    then checks int8 against float32 once per model and machine before choosing it."""
    return dtype == "auto" and device == "cpu" and fast_int8() and _openvino.available()


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def dtype_kwargs(name: str) -> dict:
    """from_pretrained dtype argument; always explicit, since transformers 5 otherwise keeps a checkpoint's
    stored dtype (a bf16 checkpoint would silently run in bf16 while spec() says float32)."""
    import transformers

    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    return {key: torch_dtype(name)}


# ------------------------------------------------------------------------------------------------ tokens


def private_backend(tokenizer):
    """A private copy of a fast tokenizer's Rust backend, without truncation or padding: transformers mutates
    the model's own on every call. None for a slow tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    tk = Tokenizer.from_str(backend.to_str())
    tk.no_truncation()
    tk.no_padding()
    return tk


def token_counter(tokenizer):
    """texts -> (n,) int32 token counts with special tokens, never truncated (and no "sequence too long"
    warning printed)."""
    tk = private_backend(tokenizer)
    if tk is not None:
        encode = getattr(tk, "encode_batch_fast", tk.encode_batch)  # _fast skips offsets: cheaper
        return lambda texts: np.fromiter((len(e) for e in encode(texts)), np.int32, len(texts))
    return lambda texts: np.fromiter(
        (len(x) for x in tokenizer(texts, truncation=False, verbose=False)["input_ids"]), np.int32, len(texts)
    )


def check_starts(texts: list[str], response_starts) -> np.ndarray:
    """(n,) int64 response offsets, each within its text."""
    starts = np.asarray(list(response_starts), dtype=np.int64).reshape(-1)
    if len(starts) != len(texts):
        raise EmbrmError(f"got {len(starts)} response_starts for {len(texts)} texts: pass one char offset per text")
    lengths = np.fromiter(map(len, texts), np.int64, len(texts))
    bad = np.flatnonzero((starts < 0) | (starts > lengths))
    if len(bad):
        i = int(bad[0])
        raise EmbrmError(f"response_starts[{i}]={starts[i]} is outside text {i} (length {lengths[i]}): pass 0..len")
    return starts


class PromptFirst:
    """Prompt-first truncation of (prompt, response) texts longer than the model's window (in tokens).

    Keeps the whole response part (text[start:], i.e. the response and any template tail) and as much of the END
    of the prompt part as fits (a reward model must see the response; a right cut would keep only the prompt). A
    response too long for that keeps its start, and the prompt keeps its last PROMPT_FLOOR of the window (or all of
    it, if shorter): a reward judges an answer to a question, so the question never disappears entirely. The two
    parts are tokenized separately and cut at token boundaries (character offsets); the joined text is recounted
    and trimmed again where re-tokenisation at the junction adds a token. The model's own right truncation stays as a safety net.
    """

    ROUNDS = 3  # recount rounds; one is almost always enough (junction effects are a token or two)
    PROMPT_FLOOR = 0.25  # share of the window the prompt's end keeps when the response alone would fill it

    def __init__(self, tokenizer, window: int, extra: int = 0, model: str = ""):
        self._tk = private_backend(tokenizer)
        self.window, self._extra, self._model = window, extra, model
        specials = getattr(tokenizer, "num_special_tokens_to_add", lambda pair: 0)(pair=False)
        self.budget = window - extra - specials  # tokens of text (both parts) that fit

    def count(self, texts: list[str]) -> np.ndarray:
        """Tokens the model sees for each text (special tokens and `extra` included), never truncated."""
        encode = getattr(self._tk, "encode_batch_fast", self._tk.encode_batch)
        return np.fromiter((len(e) for e in encode(texts)), np.int64, len(texts)) + self._extra

    def cut(self, texts: list[str], starts: np.ndarray, n_tokens: np.ndarray):
        """(texts, starts, response_cut): rows with n_tokens > window are cut, their response starts shifted."""
        texts, starts = list(texts), np.array(starts, dtype=np.int64)
        response_cut = np.zeros(len(texts), bool)
        rows = np.flatnonzero(np.asarray(n_tokens) > self.window)
        if not len(rows) or self.budget < 1:  # nothing to cut, or a window too small to hold any text
            return texts, starts, response_cut
        if self._tk is None:
            raise EmbrmError(f"cutting long texts prompt-first needs character offsets, which the slow tokenizer of "
                             f"{self._model} lacks: use a model with a fast tokenizer or shorter texts")
        sub, sub_starts = [texts[r] for r in rows], starts[rows]
        new, new_starts, response_cut[rows] = self._cut_rows(sub, sub_starts)
        for i, r in enumerate(rows):
            texts[r] = new[i]
        starts[rows] = new_starts
        return texts, starts, response_cut

    def _cut_rows(self, texts: list[str], starts: np.ndarray):
        p_ends = self._token_ends([t[:s] for t, s in zip(texts, starts)])
        r_ends = self._token_ends([t[s:] for t, s in zip(texts, starts)])
        n_p = np.fromiter(map(len, p_ends), np.int64, len(texts))
        n_r = np.fromiter(map(len, r_ends), np.int64, len(texts))
        floor = np.minimum(n_p, int(self.budget * self.PROMPT_FLOOR))
        keep_r = np.minimum(n_r, self.budget - floor)
        keep_p = np.minimum(n_p, self.budget - keep_r)
        joined, excess, todo = [("", 0)] * len(texts), np.zeros(len(texts), np.int64), np.arange(len(texts))
        for round_ in range(self.ROUNDS + 1):
            for i in todo:
                joined[i] = _join(texts[i], starts[i], p_ends[i], r_ends[i], keep_p[i], keep_r[i])
            excess[todo] = np.maximum(self.count([joined[i][0] for i in todo]) - self.window, 0)
            todo = np.flatnonzero(excess)
            if round_ == self.ROUNDS or not len(todo):
                break
            from_prompt = np.minimum(excess[todo], keep_p[todo])  # junction tokens come out of the prompt first
            keep_p[todo] -= from_prompt
            keep_r[todo] = np.maximum(keep_r[todo] - (excess[todo] - from_prompt), np.minimum(n_r[todo], 1))
        new_starts = np.fromiter((s for _, s in joined), np.int64, len(texts))
        # still over after the rounds: the model's right cut takes the response's last tokens
        return [t for t, _ in joined], new_starts, (keep_r < n_r) | (excess > 0)

    def _token_ends(self, parts: list[str]) -> list[np.ndarray]:
        """Character end of each token of each part (no special tokens)."""
        encs = self._tk.encode_batch(parts, add_special_tokens=False)
        return [np.array(e.offsets, dtype=np.int64).reshape(-1, 2)[:, 1] for e in encs]


def _join(text: str, start: int, p_ends: np.ndarray, r_ends: np.ndarray, keep_p: int, keep_r: int):
    """(kept text, its response start): the last keep_p prompt tokens + the first keep_r response tokens.

    The prompt is cut at the end of its last dropped token (whitespace before the first kept token stays, so a
    byte-level BPE keeps its " word" token); the response at the end of its last kept token."""
    n_p, n_r = len(p_ends), len(r_ends)
    head = 0 if keep_p == n_p else start if keep_p == 0 else int(p_ends[n_p - keep_p - 1])
    end = len(text) if keep_r == n_r else start + (int(r_ends[keep_r - 1]) if keep_r else 0)
    return text[head:end], start - head


def length_batches(kept: np.ndarray, batch_size: int, max_tokens: int | None) -> list[np.ndarray]:
    """Row indices per forward batch. Rows are sorted by kept length (similar lengths together: little padding),
    then cut every batch_size rows or, with max_tokens, before rows x longest row would exceed the budget (a longer
    row runs alone)."""
    order = np.argsort(kept, kind="stable")
    if max_tokens is None:
        return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    lengths, out, s = kept[order], [], 0
    while s < len(order):
        # lengths ascend, so a batch from s holds at most max_tokens // lengths[s] rows: look no further
        window = lengths[s : s + max(1, max_tokens // max(int(lengths[s]), 1))]
        padded = np.arange(1, len(window) + 1) * window  # nondecreasing: searchsorted applies
        n = max(1, int(np.searchsorted(padded, max_tokens, side="right")))
        out.append(order[s : s + n])
        s += n
    return out


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """In-place float32 L2 normalisation (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x
