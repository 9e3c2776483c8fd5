"""The embedder contract shared by every backend, plus small helpers the local backends share."""

from __future__ import annotations

import functools
import importlib.util
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embrm.errors import EmbrmError
from embrm.hardware import fast_bf16

# Bump when a change in embrm (not in the model) changes the vectors, so old caches stop matching.
SPEC_VERSION = 1
DTYPES = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class EmbedBatch:
    """Vectors for n texts, row-aligned with the texts passed to `Embedder.embed`."""

    vectors: np.ndarray  # (n, d) float32, C-contiguous
    n_tokens: np.ndarray  # (n,) int32: tokens of the full text (before truncation); -1 if unknown
    truncated: np.ndarray  # (n,) bool: the text was cut to max_length

    @classmethod
    def build(cls, vectors, n_tokens, truncated) -> "EmbedBatch":
        """Coerce to the documented dtypes/layout (one copy at most)."""
        return cls(
            np.ascontiguousarray(vectors, dtype=np.float32),
            np.asarray(n_tokens, dtype=np.int32),
            np.asarray(truncated, dtype=bool),
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
        """Embed texts (loads the model on first call). `response_starts` is only used by response pooling."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Vector size (may load the model)."""

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


def load_error(model: str, exc: BaseException, what: str) -> EmbrmError:
    """One-line error for a model that failed to load (the cause stays chained for debugging)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return EmbrmError(f"could not load model {model!r} ({type(exc).__name__}: {first}): pass {what}")


# -------------------------------------------------------------------------------------------- dtype, device


@functools.lru_cache(maxsize=None)
def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """'auto' -> bfloat16 on CUDA or a CPU with fast bf16 matmuls (embrm.hardware.fast_bf16), else float32.
    The resolved name goes into spec(), so caches of the two dtypes never mix."""
    check_choice("dtype", dtype, DTYPES)
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") or (device == "cpu" and fast_bf16()) else "float32"


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


def token_counter(tokenizer):
    """texts -> (n,) int32 token counts with special tokens, never truncated.

    Uses a private copy of the fast tokenizer's Rust backend so the model's own truncation settings (which
    transformers mutates on every call) are untouched, and no "sequence too long" warning is printed.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        from tokenizers import Tokenizer

        tk = Tokenizer.from_str(backend.to_str())
        tk.no_truncation()
        tk.no_padding()
        encode = getattr(tk, "encode_batch_fast", tk.encode_batch)  # _fast skips offsets: cheaper
        return lambda texts: np.fromiter((len(e) for e in encode(texts)), np.int32, len(texts))
    return lambda texts: np.fromiter(
        (len(x) for x in tokenizer(texts, truncation=False, verbose=False)["input_ids"]), np.int32, len(texts)
    )


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """In-place float32 L2 normalisation (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x
