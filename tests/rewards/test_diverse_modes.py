"""Ensemble modes whose members see different things: random feature subsets (`features`) and disjoint label
subsets (`disjoint`)."""

import numpy as np
import pytest
from synthdata import synthetic_pairs

from embrm.core import EmbrmError
from embrm.data import overopt_dataset
from embrm.evaluation import pairwise_accuracy
from embrm.pipeline import LabelConfig, Learner, Protocol, run_experiment
from embrm.rewards import fit_ensemble, load_ensemble, save_ensemble

MLP = dict(hidden=(24, 12), batch_size=64, epochs=4)


@pytest.fixture(scope="module")
def data():
    return synthetic_pairs(1000, 16, 2000, 0, prompt_size=10)  # a planted linear gold over d = 16


def _first_layer(member) -> np.ndarray:
    return member.params_[0] if hasattr(member, "params_") else member.coef_[:, None]


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_features_members_are_zero_outside_their_own_subsets(data, head):
    X, pairs, pp = data
    fit = dict(head=head, k=4, mode="features", pair_prompt_ids=pp, feature_fraction=0.3,
               **(MLP if head == "mlp" else {}))
    ens = fit_ensemble(X, pairs, seed=3, **fit)
    subsets = ens.feature_subsets
    assert len(subsets) == 4 and all(len(s) == round(0.3 * 16) for s in subsets)
    assert len({tuple(s) for s in subsets}) == 4  # members see different dimensions
    for member, sub in zip(ens.members, subsets):
        W = _first_layer(member)
        assert W.shape[0] == 16  # a full-d model
        hidden = np.setdiff1d(np.arange(16), sub)
        assert np.all(W[hidden] == 0) and np.all(np.abs(W[sub]).sum(1) > 0)
    assert [s["n_features"] for s in ens.summary()["splits"]] == [5] * 4
    again = fit_ensemble(X, pairs, seed=3, **fit)
    assert all(np.array_equal(a, b) for a, b in zip(again.feature_subsets, subsets))
    assert np.array_equal(again.predict(X), ens.predict(X))
    other = fit_ensemble(X, pairs, seed=4, **fit)
    assert any(not np.array_equal(a, b) for a, b in zip(other.feature_subsets, subsets))


def test_features_linear_still_ranks_and_round_trips(data, tmp_path):
    X, pairs, pp = data
    ens = fit_ensemble(X, pairs, head="linear", k=5, mode="features", pair_prompt_ids=pp, seed=0)
    assert [len(s) for s in ens.feature_subsets] == [8] * 5  # default fraction 0.5 of 16
    R = ens.predict(X)
    assert pairwise_accuracy(R.mean(1), pairs) > 0.75  # chance is 0.5
    assert min(pairwise_accuracy(R[:, j], pairs) for j in range(5)) > 0.6
    loaded, manifest = load_ensemble(save_ensemble(tmp_path / "m", ens))
    assert loaded.mode == "features" and np.array_equal(loaded.predict(X), R)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.feature_subsets, ens.feature_subsets))
    assert manifest["ensemble"]["info"]["feature_subsets"] == [s.tolist() for s in ens.feature_subsets]


def test_features_mlp_round_trips_and_has_no_warm_model(data, tmp_path):
    X, pairs, pp = data
    ens = fit_ensemble(X, pairs, head="mlp", k=3, mode="features", pair_prompt_ids=pp, seed=1, **MLP)
    assert ens.warm_ is None and ens.info["warm_init"]
    with pytest.raises(EmbrmError, match="no WARM model"):
        ens.predict_warm(X)
    loaded, _ = load_ensemble(save_ensemble(tmp_path / "m", ens))
    np.testing.assert_array_equal(loaded.predict(X), ens.predict(X))
    for member, sub in zip(loaded.members, loaded.feature_subsets):  # zero rows survive the file
        assert np.count_nonzero(np.abs(member.params_[0]).sum(1)) == len(sub)


def test_disjoint_members_train_on_disjoint_shares_that_cover_every_pair(data, tmp_path):
    X, pairs, pp = data
    ens = fit_ensemble(X, pairs, head="linear", k=4, mode="disjoint", pair_prompt_ids=pp, seed=0)
    shares = [np.concatenate([s["train"], s["val"]]) for s in ens.splits]
    assert np.array_equal(np.sort(np.concatenate(shares)), np.arange(len(pairs)))  # disjoint and covering
    prompts = [set(pp[s]) for s in shares]
    assert all(not prompts[i] & prompts[j] for i in range(4) for j in range(i))  # whole prompts per member
    assert max(map(len, shares)) < 1.2 * len(pairs) / 4  # near-equal pair counts
    assert all(len(s["val"]) > 0 and not set(pp[s["train"]]) & set(pp[s["val"]]) for s in ens.splits)
    assert pairwise_accuracy(ens.predict(X).mean(1), pairs) > 0.9
    loaded, _ = load_ensemble(save_ensemble(tmp_path / "m", ens))
    assert loaded.mode == "disjoint" and np.array_equal(loaded.predict(X), ens.predict(X))
    by_pair = fit_ensemble(X, pairs, head="linear", k=3, mode="disjoint", seed=0)  # no prompt ids: by pair
    assert sorted(np.concatenate([np.r_[s["train"], s["val"]] for s in by_pair.splits]).tolist()) == \
        list(range(len(pairs)))


def test_disjoint_mlp_keeps_warm_and_lgbm_works(data, tmp_path):
    X, pairs, pp = data
    ens = fit_ensemble(X, pairs, head="mlp", k=3, mode="disjoint", pair_prompt_ids=pp, seed=0, **MLP)
    assert ens.warm_ is not None
    loaded, _ = load_ensemble(save_ensemble(tmp_path / "m", ens))
    np.testing.assert_array_equal(loaded.predict(X), ens.predict(X))
    np.testing.assert_array_equal(loaded.predict_warm(X), ens.predict_warm(X))
    lg = fit_ensemble(X, pairs[:400], head="lgbm", k=2, mode="disjoint", seed=0, n_estimators=5, num_leaves=4)
    assert lg.predict(X).shape == (len(X), 2)


def test_refusals(data):
    X, pairs, pp = data
    few = pairs[:150]
    with pytest.raises(EmbrmError, match=r"^mode disjoint splits the 150 training pairs into K = 10 disjoint shares: "
                                         r"the smallest has 1\d pairs, fewer than the 20") as e:
        fit_ensemble(X, few, k=10, mode="disjoint", seed=0)
    assert "\n" not in str(e.value)
    fit_ensemble(X, few, k=5, mode="disjoint", seed=0)  # 30 pairs a share: enough
    with pytest.raises(EmbrmError, match="mode features .* use head 'linear' or 'mlp', not 'lgbm'"):
        fit_ensemble(X, pairs, head="lgbm", mode="features")
    with pytest.raises(EmbrmError, match=r"feature_fraction must be a number in \(0, 1\], got 0"):
        fit_ensemble(X, pairs, mode="features", feature_fraction=0)
    with pytest.raises(EmbrmError, match="feature_fraction .* drop it for mode independent"):
        fit_ensemble(X, pairs, feature_fraction=0.5)
    one = fit_ensemble(X, pairs, k=2, mode="features", feature_fraction=0.01, seed=0)  # at least one dimension
    assert [len(s) for s in one.feature_subsets] == [1, 1]


def test_learner_validation_and_names():
    with pytest.raises(EmbrmError, match=r"^mode features needs head = linear or mlp .*, not lgbm$") as e:
        Learner("lgbm", mode="features")
    assert e.value.field == "mode" and "\n" not in str(e.value)
    with pytest.raises(EmbrmError, match=r"feature_fraction must be a number in \(0, 1\], got 1.5"):
        Learner("linear", mode="features", params={"feature_fraction": 1.5})
    with pytest.raises(EmbrmError, match="set mode = features or drop it"):
        Learner("linear", params={"feature_fraction": 0.5})
    assert Learner("linear", mode="features").name == "linear-feat"
    assert Learner("mlp", mode="features", params={"feature_fraction": 0.25}).name == "mlp-feat0.25"
    assert Learner("lgbm", mode="disjoint").name == "lgbm-disjoint"
    p = Protocol(Learner("linear", mode="features", params={"feature_fraction": 0.25}))
    assert Protocol.from_dict(p.to_dict()) == p


@pytest.mark.parametrize("mode", ["features", "disjoint"])
def test_through_the_pipeline(mode):
    ds, X = overopt_dataset(n_prompts=20, n_candidates=50, dim=16, seed=0)
    params = {"feature_fraction": 0.25} if mode == "features" else {}
    res = run_experiment(ds, X, Protocol(Learner("linear", mode=mode, params=params), LabelConfig(n_pairs=400), k=4))
    ens = res.fit.ensemble
    assert ens.mode == mode and ens.k == 4 and res.fit.scores.shape == (len(X), 4)
    assert res.fit.metrics.accuracy > 0.6
    if mode == "features":
        assert [len(s) for s in ens.feature_subsets] == [4] * 4
        assert all(np.count_nonzero(m.coef_) <= 4 for m in ens.members)
    else:
        shares = [np.r_[s["train"], s["val"]] for s in ens.splits]
        assert sum(map(len, shares)) == len(np.unique(np.concatenate(shares))) == res.fit.n_train_pairs
