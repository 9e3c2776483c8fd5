"""int8 inference through OpenVINO, for local encoders on CPUs where float32 is torch's fastest path (no AMX, no
Zen 4 bfloat16; embrm.core.fast_int8 says where).

The recipe needs no calibration data, so the vectors depend on the model alone:
- the torch module is converted by openvino.convert_model (dynamic batch and sequence length);
- every MatMul's weights are compressed to int8, symmetric, one scale per output channel (NNCF's compress_weights,
  INT8_SYM);
- OpenVINO's CPU plugin quantises the activations at run time, per token in groups of GROUP along the inner
  dimension, and multiplies int8 by int8 (VNNI); everything else runs in float32.
On MiniLM (2-core Xeon, avx512_vnni, no AMX) this ran 1.8-3x float32 torch at cosine >= 0.998 to it on real pool
texts; on an EPYC exposing only AVX2 (no VNNI: an int8 product takes three instructions) 1.03x for MiniLM and 1.01x
for SmolLM2-135M, so embrm.core.fast_int8 leaves such CPUs on float32. Static int8 (NNCF's quantize with a
calibration set) was about as fast but agreed less (min cosine 0.990, or 0.9944 with the first block's MLP output
kept in float32) and makes the vectors depend on the calibration texts.
The st backend converts its model's transformer; the hf backend its whole AutoModel, returning every hidden state
(one converted model per model, compiled per set of layers asked for: compile_int8's outputs); on SmolLM2-135M its
agreement is min cosine 0.9967 (mean 0.9987) on the check sample, conversion ~110 s and 1.5 GB, once.

OpenVINO is called directly: sentence-transformers' own backend="openvino" goes through optimum-intel, whose
releases pin older transformers and torch than embrm's.

A converted model is kept under state_dir()/openvino/<digest of its weights and the recipe>/ with the SHA-256 of its
weights file, checked on every load (MiniLM: conversion ~10 s, reading back <1 s); a damaged one is converted again.
Whether int8 agrees with float32 is measured once per model and machine on a fixed sample (check_sample) and kept
under state_dir()/agreement/.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from embrm.core import EmbrmError, cpu_flags, cpuinfo, state_dir, write_atomic

GROUP = 64  # activations quantised per this many inner-dimension values (OpenVINO DYNAMIC_QUANTIZATION_GROUP_SIZE)
RECIPE = {"engine": "openvino", "weights": "int8 symmetric, per output channel",
          "activations": f"int8 at run time, groups of {GROUP}"}
AGREEMENT_FLOOR = 0.99  # min cosine to float32 over the check sample for `dtype="auto"` to choose int8
CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "DYNAMIC_QUANTIZATION_GROUP_SIZE": GROUP}
PACKAGES = ("openvino", "nncf")


def available() -> bool:
    return all(importlib.util.find_spec(p) is not None for p in PACKAGES)


def require() -> None:
    if not available():
        raise EmbrmError('dtype int8 runs on OpenVINO: pip install "embrm[fast]" (openvino and nncf), or use '
                         '--dtype float32')


def versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in PACKAGES}


# ------------------------------------------------------------------------------------------ the converted model


def compiled_int8(module, example: dict, outputs: list[int] | None = None, tag: str = ""):
    """module (torch, eval mode) compiled by OpenVINO with int8 weights and run-time int8 activations. `example`:
    named input tensors of one small batch (names and dtypes only matter: the shapes stay dynamic)."""
    return compile_int8(converted_int8(module, example, tag), outputs)


def converted_int8(module, example: dict, tag: str = ""):
    """The ov.Model of module with int8 weights, converted once and then read back from state_dir(). `tag` names
    what the module returns where its weights alone do not (a wrapper around a model)."""
    require()
    import openvino as ov

    folder = state_dir() / "openvino" / weights_digest(module, sorted(example), tag)
    if not _intact(folder):
        _convert(module, example, folder)
    return ov.Core().read_model(folder / "model.xml")


def compile_int8(model, outputs: list[int] | None = None):
    """model compiled for the CPU with run-time int8 activations; with `outputs` (indices of its outputs, in the
    order wanted) only those are kept, so layers that feed none of them are not run."""
    import openvino as ov

    if outputs is not None:
        model = ov.Model([model.output(i) for i in outputs], model.get_parameters(), model.get_friendly_name())
    return ov.Core().compile_model(model, "CPU", CONFIG)


def weights_digest(module, inputs: list[str], tag: str = "") -> str:
    """What the converted model depends on: every parameter and buffer, the input names, the recipe, the versions
    (and the tag, where one is given)."""
    import torch

    head = [inputs, RECIPE, versions(), *([tag] if tag else [])]
    h = hashlib.blake2b(json.dumps(head, sort_keys=True).encode(), digest_size=16)
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _intact(folder: Path) -> bool:
    """The folder holds a whole converted model whose weights file matches the SHA-256 written with it."""
    try:
        expected = json.loads((folder / "digest.json").read_text())["model.bin"]
        return (folder / "model.xml").is_file() and _sha256(folder / "model.bin") == expected
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _convert(module, example: dict, folder: Path) -> None:
    """Convert + compress into a temp folder, then rename it into place (a killed or concurrent conversion leaves
    the other's whole folder or none); an old damaged folder is replaced."""
    import nncf
    import openvino as ov
    import torch

    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    try:
        with torch.inference_mode(False), torch.no_grad(), _quiet():
            model = ov.convert_model(module, example_input=example)
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM)
        ov.save_model(model, tmp / "model.xml", compress_to_fp16=False)
        write_atomic(tmp / "digest.json", json.dumps({"model.bin": _sha256(tmp / "model.bin")}))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except OSError as e:
        if folder.is_dir() and _intact(folder):  # another process renamed its conversion into place first
            return
        raise EmbrmError(f"could not write the converted model to {folder}: {e.strerror or e} (set EMBRM_STATE_DIR "
                         f"to a writable folder)") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _quiet():
    """NNCF prints a table and progress bars while it compresses, torch's tracer warns of every Python branch it
    fixes (transformers' mask code); embrm shows its own progress."""
    import contextlib
    import io
    import logging
    import warnings

    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    stack.callback(logger.setLevel, level)
    return stack


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ agreement


@dataclass(frozen=True)
class Agreement:
    """Cosine of int8 vectors to float32 torch ones, over the fixed check sample, on this machine."""

    min_cos: float
    mean_cos: float
    n: int

    @property
    def ok(self) -> bool:
        return self.min_cos >= AGREEMENT_FLOOR

    def describe(self) -> str:
        return f"min cosine {self.min_cos:.4f} (mean {self.mean_cos:.4f}) to float32 on {self.n} fixed texts"


def agreement(key: dict, measure) -> Agreement:
    """The recorded agreement of the model `key` names on this machine, else measure() (-> (int8, float32)
    vectors of check_sample()) once and record it."""
    name = hashlib.blake2b(json.dumps({**key, **machine(), **versions(), **RECIPE}, sort_keys=True).encode(),
                           digest_size=16).hexdigest()
    path = state_dir() / "agreement" / f"{name}.json"
    try:
        return Agreement(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    int8, float32 = measure()
    cos = np.einsum("ij,ij->i", _unit(int8), _unit(float32))
    found = Agreement(float(cos.min()), float(cos.mean()), len(cos))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(asdict(found)))
    except OSError:
        pass  # not recorded: measured again next time, the same answer
    return found


def machine() -> dict:
    """What the int8 kernels depend on: the CPU model and its instruction-set flags."""
    return {"cpu": cpuinfo().get("model name", platform.machine()), "flags": " ".join(sorted(cpu_flags()))}


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def check_sample(n: int = 64) -> list[str]:
    """n fixed (question, answer) texts of varied length (about 150 to 4,000 characters: some longer than a small
    encoder's window), from the Python reference that ships with CPython (pydoc_data), so every machine checks the
    same texts without a download."""
    from pydoc_data.topics import topics

    paragraphs = [p.strip() for name in sorted(topics) for p in re.split(r"\n\s*\n", topics[name])
                  if len(p.strip()) > 60]
    sizes = np.geomspace(150, 4000, n).astype(int)
    texts, i = [], 0
    for k, size in enumerate(sizes):
        answer = ""
        while len(answer) < size and i < len(paragraphs):
            answer, i = f"{answer}\n\n{paragraphs[i]}".strip(), i + 1
        texts.append(f"Question {k + 1}: what does the Python reference say here?\n\n{answer[:size]}")
    return texts
