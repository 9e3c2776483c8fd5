"""Save and load reward ensembles without pickle.

A model directory holds:
    manifest.json          what the model is: head, mode, K, seeds, split sizes, head parameters, training info,
                           package versions, plus whatever the caller adds (embedder fingerprint, label settings,
                           train/test prompt ids, ...)
    weights.npz            every array (linear coefficients, stacked MLP weights, WARM weights, trunk weights,
                           per-member split positions); read back with np.load(allow_pickle=False)
    lgbm_member_{k}.txt    LightGBM members, LightGBM's own text format (Booster.save_model)

    save_ensemble("models/rm", ens, {"embedder": fingerprint, "labels": {"beta": 1.0}})
    ens, manifest = load_ensemble("models/rm")

The directory is written under a temporary name beside the target and renamed into place, so a failure never
leaves a partial model directory.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from embrm.ensemble import RewardEnsemble, _jsonable
from embrm.errors import EmbrmError
from embrm.heads import LGBMReward, LinearBT, MLPReward

FORMAT = "embrm-reward-ensemble"
FORMAT_VERSION = 1
RESERVED = ("format", "format_version", "embrm_version", "created", "ensemble", "members", "packages", "files")


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("embrm", "numpy", "torch", "scikit-learn", "lightgbm", "polars", "scipy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _arrays_of(ens) -> tuple[dict, list]:
    arrays: dict[str, np.ndarray] = {}
    for j, s in enumerate(ens.splits):
        arrays[f"split_{j}_train"] = np.asarray(s["train"], np.int64)
        arrays[f"split_{j}_val"] = np.asarray(s["val"], np.int64)
    members = []
    if ens.mode == "shared_trunk":
        for i, p in enumerate(ens.trunk.params_):
            arrays[f"trunk_{i}"] = p
        arrays["head_coef"] = np.stack([m.coef_ for m in ens.members])
    elif ens.head == "linear":
        arrays["coef"] = np.stack([m.coef_ for m in ens.members])
    elif ens.head == "mlp":
        for i, p in enumerate(ens.stacked_params()):
            arrays[f"mlp_{i}"] = p
        if ens.warm_ is not None:
            for i, p in enumerate(ens.warm_.params_):
                arrays[f"warm_{i}"] = p
        members = [{"best_epoch": getattr(m, "best_epoch_", None), "n_epochs": getattr(m, "n_epochs_", None),
                    "dtype": getattr(m, "dtype_", None)} for m in ens.members]
    return arrays, members


def save_ensemble(model_dir, ensemble, manifest: dict | None = None, *, overwrite: bool = False) -> Path:
    """Write `ensemble` to model_dir (manifest.json + weights.npz [+ lgbm_member_{k}.txt]); returns the path.

    manifest: the caller's JSON-able extras, stored at the top level of manifest.json (keys may not clash with
    embrm's own: format, format_version, embrm_version, created, ensemble, members, packages, files)."""
    model_dir = Path(model_dir)
    extra = dict(manifest or {})
    clash = [k for k in extra if k in RESERVED]
    if clash:
        raise EmbrmError(f"manifest key(s) {', '.join(clash)} are embrm's own: rename them in what you pass")
    if model_dir.exists() and not overwrite:
        raise EmbrmError(f"model dir {model_dir} already exists: choose another path or pass overwrite=True "
                         f"(--overwrite)")
    arrays, members = _arrays_of(ensemble)
    lgbm_files = [f"lgbm_member_{j}.txt" for j in range(ensemble.k)] if ensemble.head == "lgbm" else []
    doc = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "embrm_version": package_versions()["embrm"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "ensemble": ensemble.summary(), "members": members, "packages": package_versions(),
        "files": {"weights": "weights.npz", "lgbm": lgbm_files},
        **_jsonable(extra),
    }
    try:
        text = json.dumps(doc, indent=2, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise EmbrmError(f"manifest is not JSON-serialisable ({e}): pass plain dicts, lists, str and numbers") from None

    model_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_dir.parent / f".{model_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        with open(tmp / "weights.npz", "wb") as f:
            np.savez(f, **arrays)
        for j, name in enumerate(lgbm_files):
            ensemble.members[j].booster_.save_model(str(tmp / name))
        (tmp / "manifest.json").write_text(text)
        if model_dir.exists():
            old = model_dir.parent / f".{model_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(model_dir, old)
            os.replace(tmp, model_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, model_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return model_dir


def _corrupt(model_dir: Path, what: str) -> EmbrmError:
    return EmbrmError(f"model dir {model_dir} is corrupt ({what}): refit it (embrm fit) or restore it from a copy")


def load_ensemble(model_dir):
    """Read a model directory written by save_ensemble: returns (RewardEnsemble, manifest dict)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise EmbrmError(f"model dir {model_dir} does not exist: fit one first (embrm fit) or fix the path")
    mpath = model_dir / "manifest.json"
    if not mpath.is_file():
        raise EmbrmError(f"{model_dir} is not an embrm model dir (no manifest.json): pass the directory "
                         f"embrm fit wrote")
    try:
        doc = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _corrupt(model_dir, f"manifest.json unreadable: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise EmbrmError(f"{mpath} is not an embrm reward-ensemble manifest: pass the directory embrm fit wrote")
    if doc.get("format_version") != FORMAT_VERSION:
        raise EmbrmError(f"{mpath} has format version {doc.get('format_version')}, this embrm reads "
                         f"{FORMAT_VERSION}: upgrade embrm or refit")
    try:
        e = doc["ensemble"]
        head, mode, k, seeds = e["head"], e["mode"], int(e["k"]), list(e["seeds"])
        head_params, info = dict(e.get("head_params") or {}), dict(e.get("info") or {})
    except (KeyError, TypeError, ValueError) as err:
        raise _corrupt(model_dir, f"manifest.json lacks {err}") from None
    try:
        with np.load(model_dir / doc["files"]["weights"], allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as err:
        raise _corrupt(model_dir, f"weights.npz unreadable: {err}") from None

    def get(name):
        if name not in arrays:
            raise _corrupt(model_dir, f"weights.npz lacks {name}")
        return arrays[name]

    def series(prefix):
        out, i = [], 0
        while f"{prefix}_{i}" in arrays:
            out.append(arrays[f"{prefix}_{i}"])
            i += 1
        return out

    splits = [{"train": get(f"split_{j}_train"), "val": get(f"split_{j}_val")} for j in range(k)]
    trunk = warm = None
    mlp_keys = ("hidden", "objective", "lr", "epochs", "batch_size", "patience", "val_fraction", "weight_decay",
                "dtype")
    mlp_params = {key: head_params[key] for key in mlp_keys if key in head_params}
    if mode == "shared_trunk":
        tp = series("trunk")
        if not tp:
            raise _corrupt(model_dir, "weights.npz lacks the trunk weights")
        trunk = MLPReward.from_params(tp, **mlp_params)
        coef = get("head_coef")
        members = [LinearBT.from_coef(c, C=head_params.get("linear_C", 1.0)) for c in coef]
    elif head == "linear":
        members = [LinearBT.from_coef(c, **{key: v for key, v in head_params.items() if key in ("C", "max_iter")})
                   for c in get("coef")]
    elif head == "mlp":
        stacked = series("mlp")
        if not stacked or any(len(p) != k for p in stacked):
            raise _corrupt(model_dir, f"weights.npz lacks K={k} stacked MLP weights")
        members = [MLPReward.from_params([p[j] for p in stacked], **mlp_params, random_state=seeds[j])
                   for j in range(k)]
        for m, meta in zip(members, doc.get("members") or [{}] * k):
            m.best_epoch_, m.n_epochs_, m.dtype_ = meta.get("best_epoch"), meta.get("n_epochs"), meta.get("dtype")
        wp = series("warm")
        warm = MLPReward.from_params(wp, **mlp_params) if wp else None
    elif head == "lgbm":
        import lightgbm as lgb

        members = []
        for j, name in enumerate(doc["files"].get("lgbm") or []):
            path = model_dir / name
            if not path.is_file():
                raise _corrupt(model_dir, f"{name} missing")
            try:
                booster = lgb.Booster(model_file=str(path))
            except Exception as err:  # LightGBM raises its own error type on a bad file
                raise _corrupt(model_dir, f"{name} unreadable: {str(err).splitlines()[0] if str(err) else err}") \
                    from None
            members.append(LGBMReward.from_booster(booster, **{key: v for key, v in head_params.items()
                                                               if key != "random_state"}, random_state=seeds[j]))
    else:
        raise _corrupt(model_dir, f"unknown head {head!r}")
    if len(members) != k:
        raise _corrupt(model_dir, f"{len(members)} members stored, manifest says K={k}")
    ens = RewardEnsemble(head, mode, members, seeds, splits, trunk=trunk, warm=warm, head_params=head_params,
                         info=info)
    return ens, doc
