"""Save and load reward ensembles without pickle.

A model directory holds:
    manifest.json          what the model is: head, mode, K, seeds, split sizes, head parameters, training info,
                           package versions, plus whatever the caller adds (embedder fingerprint, label settings,
                           train/test prompt ids, ...)
    weights.npz            every array (linear coefficients, stacked MLP weights, WARM weights, trunk weights,
                           a Laplace posterior's mean and precision factor, per-member split positions); read
                           back with np.load(allow_pickle=False)
    lgbm_member_{k}.txt    LightGBM members, LightGBM's own text format (Booster.save_model)

    save_ensemble("models/rm", ens, {"embedder": fingerprint, "labels": {"beta": 1.0}})
    ens, manifest = load_ensemble("models/rm")

The directory is written under a temporary name beside the target and renamed into place, so a failure never
leaves a partial model directory.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import uuid
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from embrm.core import EmbrmError, check_value
from embrm.rewards._ensemble import MODES, RewardEnsemble, _jsonable
from embrm.rewards._length import LengthCorrection
from embrm.rewards.heads import HEADS, LaplaceBT, LGBMReward, LinearBT, MLPReward

FORMAT = "embrm-reward-ensemble"
FORMAT_VERSION = 1
RESERVED = ("format", "format_version", "embrm_version", "created", "ensemble", "members", "packages", "files",
            "digest")


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
    elif ens.head in ("linear", "laplace"):
        arrays["coef"] = np.stack([m.coef_ for m in ens.members])
        if ens.posterior is not None:
            arrays["posterior_mean"] = ens.posterior.map_
            arrays["posterior_chol"] = ens.posterior.chol_
    elif ens.head == "mlp":
        for i, p in enumerate(ens.stacked_params()):
            arrays[f"mlp_{i}"] = p
        if ens.warm_ is not None:
            for i, p in enumerate(ens.warm_.params_):
                arrays[f"warm_{i}"] = p
        members = [{"best_epoch": getattr(m, "best_epoch_", None), "n_epochs": getattr(m, "n_epochs_", None),
                    "dtype": getattr(m, "dtype_", None)} for m in ens.members]
    return arrays, members


def check_replaceable(model_dir) -> None:
    """Overwriting replaces the whole directory: allowed only for an empty one or an embrm model dir, never for a
    directory of other files (e.g. --out . by mistake) or a file."""
    model_dir = Path(model_dir)
    if model_dir.is_dir() and (not any(model_dir.iterdir()) or _is_model_dir(model_dir)):
        return
    if model_dir.exists():
        what = "a file" if not model_dir.is_dir() else "a directory that is not an embrm model dir"
        raise EmbrmError(f"{model_dir} is {what}: refusing to replace it; choose another path for the model")


def _rename_new(tmp: Path, model_dir: Path) -> None:
    """Rename tmp to model_dir unless another writer made model_dir meanwhile (a directory renames only over an
    empty one): its model is kept, never silently replaced."""
    try:
        os.rename(tmp, model_dir)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise
        raise EmbrmError(f"model dir {model_dir} was written by another process while this one ran: kept it; "
                         f"choose another path or pass overwrite=True (--overwrite)") from None


def _is_model_dir(path: Path) -> bool:
    try:
        return json.loads((path / "manifest.json").read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def save_ensemble(model_dir, ensemble, manifest: dict | None = None, *, overwrite: bool = False) -> Path:
    """Write `ensemble` to model_dir (manifest.json + weights.npz [+ lgbm_member_{k}.txt]); returns the path.

    manifest: the caller's JSON-able extras, stored at the top level of manifest.json (keys may not clash with
    embrm's own: format, format_version, embrm_version, created, ensemble, members, packages, files)."""
    model_dir = Path(model_dir)
    extra = dict(manifest or {})
    clash = [k for k in extra if k in RESERVED]
    if clash:
        raise EmbrmError(f"manifest key(s) {', '.join(clash)} are embrm's own: rename them in what you pass")
    if not overwrite and (model_dir.is_file() or model_dir.is_dir() and any(model_dir.iterdir())):
        raise EmbrmError(f"model dir {model_dir} already exists: choose another path or pass overwrite=True "
                         f"(--overwrite)")
    check_replaceable(model_dir)
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
        doc["digest"] = manifest_digest(doc)
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
        if model_dir.exists() and overwrite:
            old = model_dir.parent / f".{model_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(model_dir, old)
            os.replace(tmp, model_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            _rename_new(tmp, model_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and (e.filename is None or str(tmp) in str(e.filename)):  # e.g. a full disk
            raise OSError(e.errno, e.strerror or str(e), str(model_dir)) from None
        raise
    return model_dir


def _corrupt(model_dir: Path, what: str) -> EmbrmError:
    return EmbrmError(f"model dir {model_dir} is corrupt ({what}): refit it (embrm fit) or restore it from a copy")


def _plain_name(model_dir: Path, name) -> str:
    """A file the manifest names must be a plain name inside the model dir: an edited manifest must not point reads
    elsewhere."""
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise _corrupt(model_dir, f"manifest.json names the file {name!r}, not a file inside the model dir")
    return name


def _read_manifest(model_dir: Path) -> dict:
    if not model_dir.is_dir():
        what = "is a file, not a model directory" if model_dir.exists() else "does not exist"
        raise EmbrmError(f"model dir {model_dir} {what}: fit one first (embrm fit) or fix the path")
    mpath = model_dir / "manifest.json"
    if not mpath.is_file():
        raise EmbrmError(f"{model_dir} is not an embrm model dir (no manifest.json): pass the directory "
                         f"embrm fit wrote")
    try:
        doc = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _corrupt(model_dir, f"manifest.json unreadable: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise EmbrmError(f"{mpath} is not an embrm reward-ensemble manifest: pass the directory embrm fit wrote")
    if doc.get("format_version") != FORMAT_VERSION:
        raise EmbrmError(f"{mpath} has format version {doc.get('format_version')}, this embrm reads "
                         f"{FORMAT_VERSION}: upgrade embrm or refit")
    if "digest" in doc and doc["digest"] != manifest_digest(doc):  # models before the digest carry none
        raise _corrupt(model_dir, "manifest.json was edited after it was written (its digest does not match)")
    return doc


def manifest_digest(doc: dict) -> str:
    """SHA-256 of the manifest's canonical JSON (without the digest itself): an edited protocol or split (e.g.
    training prompts moved into the held-out set) is refused. Not a signature: whoever edits the manifest can
    recompute it; it catches edits and damage, not forgery."""
    body = {k: v for k, v in doc.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True,
                                     default=str).encode()).hexdigest()


def _header(model_dir: Path, doc: dict) -> dict:
    """The manifest's description of the ensemble, each value of the type the loader relies on."""
    try:
        e = doc["ensemble"]
        h = {"head": e["head"], "mode": e["mode"], "k": e["k"], "seeds": e["seeds"], "dim": doc.get("dim"),
             "head_params": dict(e.get("head_params") or {}), "info": dict(e.get("info") or {}),
             "members": doc.get("members"), "files": dict(doc["files"])}
    except (KeyError, TypeError, ValueError) as err:
        raise _corrupt(model_dir, f"manifest.json lacks {err}") from None
    if h["head"] not in HEADS or h["mode"] not in MODES:
        raise _corrupt(model_dir, f"manifest.json has head {h['head']!r}, mode {h['mode']!r}: expected one of "
                                  f"{', '.join(HEADS)} and one of {', '.join(MODES)}")
    if not _integer(h["k"], 1) or h["dim"] is not None and not _integer(h["dim"], 1):
        raise _corrupt(model_dir, f"manifest.json has k = {h['k']!r}, dim = {h['dim']!r}: expected positive integers")
    if not isinstance(h["seeds"], list) or len(h["seeds"]) != h["k"] or not all(_integer(s, 0) for s in h["seeds"]):
        raise _corrupt(model_dir, f"manifest.json has {h['seeds']!r} as seeds: expected K = {h['k']} integers")
    h["members"] = h["members"] or [{}] * h["k"]  # only MLP members record their training
    if not isinstance(h["members"], list) or len(h["members"]) != h["k"] or \
            not all(isinstance(m, dict) for m in h["members"]):
        raise _corrupt(model_dir, f"manifest.json members: expected K = {h['k']} objects")
    return h


def _integer(v, minimum: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _read_arrays(model_dir: Path, name) -> dict:
    """Every array of weights.npz, checked: split positions are 1-D non-negative integers, weights finite floats
    (a NaN weight would make every score NaN, silently)."""
    try:
        with np.load(model_dir / _plain_name(model_dir, name), allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as err:
        raise _corrupt(model_dir, f"{name} unreadable: {err}") from None
    for key, a in arrays.items():
        if key.startswith("split_"):
            if a.ndim != 1 or a.dtype.kind not in "iu" or (a.size and a.min() < 0):
                raise _corrupt(model_dir, f"{name}: {key} is not a list of pair positions")
        elif a.dtype.kind != "f":
            raise _corrupt(model_dir, f"{name}: {key} holds {a.dtype}, not floating-point weights")
        elif not np.isfinite(a).all():
            raise _corrupt(model_dir, f"{name}: {key} holds NaN or infinite weights")
    return arrays


def _check_layers(model_dir: Path, name: str, params: list, dim: int | None, k: int | None = None) -> int:
    """An MLP's [W1, b1, ..., W_out, b_out] (each with a leading K axis when stacked) must chain from `dim` inputs
    to one score; returns the last hidden width (what a shared trunk hands its linear heads)."""
    lead = () if k is None else (k,)
    width = dim if dim is not None else (params[0].shape[-2] if params and params[0].ndim >= 2 else None)
    if len(params) < 2 or len(params) % 2:
        raise _corrupt(model_dir, f"weights.npz holds {len(params)} {name} arrays: expected weight/bias pairs")
    for i in range(0, len(params), 2):
        W, b = params[i], params[i + 1]
        if W.ndim != len(lead) + 2 or W.shape[:-1] != (*lead, width) or b.shape != (*lead, W.shape[-1]):
            members = f"K = {k} members on " if k else ""
            raise _corrupt(model_dir, f"weights.npz: {name}_{i} {W.shape} and {name}_{i + 1} {b.shape} do not "
                                      f"make a layer of {members}{width} inputs")
        last, width = width, W.shape[-1]
    if width != 1:
        raise _corrupt(model_dir, f"weights.npz: the {name} output has width {width}, not one score")
    return last


def _lgbm_member(model_dir: Path, name, dim: int | None, params: dict, seed: int):
    import lightgbm as lgb

    path = model_dir / _plain_name(model_dir, name)
    if not path.is_file():
        raise _corrupt(model_dir, f"{name} missing")
    text = path.read_text(encoding="utf-8", errors="replace")
    if "end of trees" not in text:  # truncated: caught here, before LightGBM prints its own fatal line
        raise _corrupt(model_dir, f"{name} is truncated (no 'end of trees')")
    leaves = re.findall(r"^leaf_value=(.*)$", text, flags=re.MULTILINE)
    try:
        finite = all(np.isfinite(np.array(v.split(), dtype=np.float64)).all() for v in leaves)
    except ValueError:
        finite = False
    if not finite:
        raise _corrupt(model_dir, f"{name} holds NaN, infinite or unreadable leaf values")
    try:
        booster = lgb.Booster(model_str=text)
    except Exception as err:  # LightGBM raises its own error type on a bad file
        raise _corrupt(model_dir, f"{name} unreadable: {str(err).splitlines()[0] if str(err) else err}") from None
    if dim is not None and booster.num_feature() != dim:
        raise _corrupt(model_dir, f"{name} takes {booster.num_feature()} features, the manifest says dim = {dim}")
    return LGBMReward.from_booster(booster, **{key: v for key, v in params.items() if key != "random_state"},
                                   random_state=seed)


def _series(arrays: dict, prefix: str) -> list:
    """prefix_0, prefix_1, ... while they exist."""
    out = []
    while f"{prefix}_{len(out)}" in arrays:
        out.append(arrays[f"{prefix}_{len(out)}"])
    return out


def _rows(model_dir: Path, arrays: dict, name: str, k: int, width: int | None) -> np.ndarray:
    """A (K, width) array of per-member coefficients."""
    a = arrays.get(name)
    if a is None:
        raise _corrupt(model_dir, f"weights.npz lacks {name}")
    if a.ndim != 2 or a.shape[0] != k or (width is not None and a.shape[1] != width):
        raise _corrupt(model_dir, f"weights.npz: {name} has shape {a.shape}, expected ({k}, {width or 'dim'})")
    return a


MLP_KEYS = ("hidden", "objective", "lr", "epochs", "batch_size", "patience", "val_fraction", "weight_decay", "dtype")


def _mlp_members(model_dir: Path, h: dict, arrays: dict, mlp_params: dict):
    """K stacked MLP members (+ WARM's averaged MLP when saved), their layers checked to chain from dim to 1."""
    k, dim = h["k"], h["dim"]
    stacked = _series(arrays, "mlp")
    _check_layers(model_dir, "mlp", stacked, dim, k)
    members = [MLPReward.from_params([p[j] for p in stacked], **mlp_params, random_state=h["seeds"][j])
               for j in range(k)]
    for m, meta in zip(members, h["members"]):
        m.best_epoch_, m.n_epochs_, m.dtype_ = meta.get("best_epoch"), meta.get("n_epochs"), meta.get("dtype")
    warm = _series(arrays, "warm")
    if warm:
        _check_layers(model_dir, "warm", warm, dim)
    return members, MLPReward.from_params(warm, **mlp_params) if warm else None


def _members(model_dir: Path, h: dict, arrays: dict):
    """(members, trunk, warm) of the ensemble the manifest describes, every array's shape checked against it."""
    k, dim, hp = h["k"], h["dim"], h["head_params"]
    rules = HEADS[h["head"]].PARAMS  # the head's own rules: an edited value (num_leaves = 0) is a corrupt manifest
    for key in hp.keys() & rules.keys():
        check_value(key, hp[key], rules[key])
    mlp_params = {key: hp[key] for key in MLP_KEYS if key in hp}
    if h["mode"] == "shared_trunk":
        trunk = _series(arrays, "trunk")
        width = _check_layers(model_dir, "trunk", trunk, dim)
        heads = _rows(model_dir, arrays, "head_coef", k, width)
        return ([LinearBT.from_coef(c, C=hp.get("linear_C", 1.0)) for c in heads],
                MLPReward.from_params(trunk, **mlp_params), None)
    if h["head"] in ("linear", "laplace"):
        linear = {key: v for key, v in hp.items() if key in ("C", "max_iter")}
        return [LinearBT.from_coef(c, **linear) for c in _rows(model_dir, arrays, "coef", k, dim)], None, None
    if h["head"] == "mlp":
        members, warm = _mlp_members(model_dir, h, arrays, mlp_params)
        return members, None, warm
    names = h["files"].get("lgbm") or []
    if not isinstance(names, list) or len(names) != k:
        raise _corrupt(model_dir, f"manifest.json lists {names!r} as LightGBM members, manifest says K={k}")
    return [_lgbm_member(model_dir, name, dim, hp, h["seeds"][j]) for j, name in enumerate(names)], None, None


def _posterior(model_dir: Path, h: dict, arrays: dict) -> LaplaceBT | None:
    """Mode posterior's Laplace head: its mean (d,) and the lower Cholesky factor (d, d) of its precision, checked
    (finite, lower triangular, positive diagonal: a damaged factor would give NaN or negative variances)."""
    if h["mode"] != "posterior":
        return None
    mean, chol = arrays.get("posterior_mean"), arrays.get("posterior_chol")
    if mean is None or chol is None:
        raise _corrupt(model_dir, "weights.npz lacks the Laplace posterior (posterior_mean, posterior_chol)")
    d = len(mean)
    if mean.ndim != 1 or chol.shape != (d, d) or (h["dim"] is not None and d != h["dim"]):
        raise _corrupt(model_dir, f"weights.npz: posterior shapes {mean.shape} and {chol.shape} do not fit dim")
    if not (np.isfinite(mean).all() and np.isfinite(chol).all() and np.all(np.diag(chol) > 0)
            and not np.triu(chol, 1).any()):
        raise _corrupt(model_dir, "weights.npz: the posterior's precision factor is not a valid Cholesky factor")
    params = {key: v for key, v in h["head_params"].items() if key in ("C", "max_iter")}
    return LaplaceBT.from_posterior(mean, chol, **params)


def _length_correction(saved, ens: RewardEnsemble):
    """The saved length correction (one slope per member, and WARM's last), checked against the ensemble."""
    if saved is None:
        return None
    correction = LengthCorrection.from_dict(saved)
    expected = ens.k + (ens.warm_ is not None)
    if len(correction.slopes) != expected:
        raise EmbrmError(f"length_correction has {len(correction.slopes)} slopes for {expected} scored models")
    return correction


def load_ensemble(model_dir):
    """Read a model directory written by save_ensemble: returns (RewardEnsemble, manifest dict). Every file is
    checked against the manifest (finite weights, shapes that fit K and dim): an edited or damaged model dir is a
    one-line error, never NaN scores."""
    model_dir = Path(model_dir)
    doc = _read_manifest(model_dir)
    h = _header(model_dir, doc)
    arrays = _read_arrays(model_dir, h["files"].get("weights"))
    splits = [{"train": arrays.get(f"split_{j}_train"), "val": arrays.get(f"split_{j}_val")} for j in range(h["k"])]
    if any(v is None for s in splits for v in s.values()):
        raise _corrupt(model_dir, f"weights.npz lacks the pair splits of K = {h['k']} members")
    try:
        members, trunk, warm = _members(model_dir, h, arrays)
        ens = RewardEnsemble(h["head"], h["mode"], members, h["seeds"], splits, trunk=trunk, warm=warm,
                             head_params=h["head_params"], info=h["info"],
                             posterior=_posterior(model_dir, h, arrays))
        ens.length_correction = _length_correction(doc["ensemble"].get("length_correction"), ens)
    except (TypeError, ValueError, EmbrmError) as err:  # an edited head_params / mode the heads refuse
        if isinstance(err, EmbrmError) and str(err).startswith(f"model dir {model_dir} "):
            raise
        raise _corrupt(model_dir, f"manifest.json ensemble: {err}") from None
    return ens, doc
