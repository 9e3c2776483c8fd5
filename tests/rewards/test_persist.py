import json

import numpy as np
import pytest
from synthdata import synthetic_pairs

from embrm.core._errors import EmbrmError
from embrm.rewards._ensemble import fit_ensemble
from embrm.rewards._persist import load_ensemble, save_ensemble


def synthetic(n=400, d=12, n_pairs=800, seed=0):
    return synthetic_pairs(n, d, n_pairs, seed, prompt_size=8)


CASES = {
    "linear": dict(head="linear"),
    "linear_heads": dict(head="linear", mode="linear_heads"),
    "mlp": dict(head="mlp", hidden=(16, 8), batch_size=64, epochs=3),
    "mlp-bootstrap": dict(head="mlp", mode="bootstrap", hidden=(16, 8), epochs=3, objective="classification"),
    "shared_trunk": dict(head="mlp", mode="shared_trunk", hidden=(16, 8), epochs=3),
    "lgbm": dict(head="lgbm", n_estimators=10, num_leaves=7),
    "lgbm-bt": dict(head="lgbm", n_estimators=10, num_leaves=7, objective="bt"),
    "laplace": dict(head="laplace", mode="posterior", C=0.5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_identical_predictions(tmp_path, case):
    X, pairs, pp = synthetic()
    ens = fit_ensemble(X, pairs, k=3, pair_prompt_ids=pp, seed=4, **CASES[case])
    extra = {"embedder": {"fingerprint": "abc123"}, "labels": {"beta": 1.0}, "train_prompts": ["p1", "p2"]}
    path = save_ensemble(tmp_path / "model", ens, extra)
    back, manifest = load_ensemble(path)
    assert np.array_equal(back.predict(X), ens.predict(X))
    if ens.warm_ is not None:
        assert np.array_equal(back.predict_warm(X), ens.predict_warm(X))
    assert np.allclose(back.epistemic_std(X), ens.epistemic_std(X), rtol=1e-12)
    assert (back.head, back.mode, back.k, back.seeds) == (ens.head, ens.mode, 3, ens.seeds)
    for s, t in zip(back.splits, ens.splits):
        assert np.array_equal(s["train"], t["train"]) and np.array_equal(s["val"], t["val"])
    assert manifest["embedder"] == {"fingerprint": "abc123"} and manifest["train_prompts"] == ["p1", "p2"]
    assert manifest["ensemble"]["k"] == 3 and manifest["packages"]["numpy"]
    assert json.loads((path / "manifest.json").read_text()) == manifest
    with np.load(path / "weights.npz", allow_pickle=False) as z:  # no object arrays anywhere
        assert all(z[name].dtype != object for name in z.files)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_atomic_write_and_overwrite(tmp_path, monkeypatch):
    X, pairs, _ = synthetic()
    ens = fit_ensemble(X, pairs, k=2, seed=0)
    target = tmp_path / "m"

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        save_ensemble(target, ens, {})
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []  # neither the model dir nor a temporary one is left behind
    save_ensemble(target, ens, {"run": 1})
    with pytest.raises(EmbrmError, match="already exists"):
        save_ensemble(target, ens, {"run": 2})
    save_ensemble(target, ens, {"run": 2}, overwrite=True)
    assert load_ensemble(target)[1]["run"] == 2 and [p.name for p in tmp_path.iterdir()] == ["m"]
    with pytest.raises(EmbrmError, match="embrm's own"):
        save_ensemble(tmp_path / "n", ens, {"ensemble": 1})
    with pytest.raises(EmbrmError, match="JSON"):
        save_ensemble(tmp_path / "n", ens, {"x": object()})
    assert not (tmp_path / "n").exists()


def test_load_errors(tmp_path):
    X, pairs, _ = synthetic()
    with pytest.raises(EmbrmError, match="does not exist"):
        load_ensemble(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmbrmError, match="no manifest.json"):
        load_ensemble(tmp_path / "empty")
    path = save_ensemble(tmp_path / "lin", fit_ensemble(X, pairs, k=2), {})
    data = (path / "weights.npz").read_bytes()
    (path / "weights.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(EmbrmError, match="corrupt .*weights.npz"):
        load_ensemble(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(EmbrmError, match="corrupt .*manifest.json"):
        load_ensemble(path)
    lg = save_ensemble(tmp_path / "lg", fit_ensemble(X, pairs, head="lgbm", k=2, n_estimators=3), {})
    (lg / "lgbm_member_1.txt").unlink()
    with pytest.raises(EmbrmError, match="lgbm_member_1.txt missing"):
        load_ensemble(lg)
    mlp = save_ensemble(tmp_path / "mlp", fit_ensemble(X, pairs, head="mlp", k=2, hidden=(4,), epochs=1), {})
    with np.load(mlp / "weights.npz") as z:
        arrays = {n: z[n] for n in z.files if n != "mlp_0"}
    np.savez(mlp / "weights.npz", **arrays)
    with pytest.raises(EmbrmError, match="corrupt"):
        load_ensemble(mlp)


@pytest.mark.parametrize("damage, message", [
    (lambda a: a["coef"].__setitem__((0, 0), np.nan), "coef holds NaN or infinite weights"),
    (lambda a: a.update(coef=a["coef"][:, :5]), r"coef has shape \(2, 5\), expected \(2, 12\)"),
    (lambda a: a.update(coef=a["coef"][:1]), r"coef has shape \(1, 12\), expected \(2, 12\)"),
    (lambda a: a["split_0_val"].__setitem__(0, -1), "split_0_val is not a list of pair positions"),
])
def test_every_loaded_array_is_checked_against_the_manifest(tmp_path, damage, message):
    X, pairs, _ = synthetic()
    path = save_ensemble(tmp_path / "m", fit_ensemble(X, pairs, k=2), {"dim": 12})
    with np.load(path / "weights.npz") as z:
        arrays = {n: z[n] for n in z.files}
    damage(arrays)
    np.savez(path / "weights.npz", **arrays)
    with pytest.raises(EmbrmError, match=f"model dir .*m is corrupt .*{message}"):
        load_ensemble(path)


def test_overwrite_never_replaces_a_directory_that_is_not_a_model(tmp_path):
    X, pairs, _ = synthetic()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    with pytest.raises(EmbrmError, match="not an embrm model dir: refusing to replace it"):
        save_ensemble(tmp_path / "notes", fit_ensemble(X, pairs, k=2), {}, overwrite=True)
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize("damage, message", [
    (lambda a: a.pop("posterior_chol"), "lacks the Laplace posterior"),
    (lambda a: a["posterior_chol"].__setitem__((0, 0), -1.0), "not a valid Cholesky factor"),
    (lambda a: a["posterior_chol"].__setitem__((0, 3), 0.5), "not a valid Cholesky factor"),
    (lambda a: a.update(posterior_mean=a["posterior_mean"][:5]), "posterior shapes"),
])
def test_a_damaged_laplace_posterior_is_refused(tmp_path, damage, message):
    X, pairs, _ = synthetic()
    path = save_ensemble(tmp_path / "m", fit_ensemble(X, pairs, head="laplace", mode="posterior", k=2), {"dim": 12})
    with np.load(path / "weights.npz") as z:
        arrays = {n: z[n] for n in z.files}
    damage(arrays)
    np.savez(path / "weights.npz", **arrays)
    with pytest.raises(EmbrmError, match=f"model dir .*m is corrupt .*{message}"):
        load_ensemble(path)
