import numpy as np
import pytest
from synthdata import synthetic_pairs

from embrm.core._errors import EmbrmError
from embrm.evaluation._metrics import pairwise_accuracy
from embrm.rewards._ensemble import bootstrap_split, fit_ensemble
from embrm.rewards.heads import _mlp as mlp
from embrm.rewards.heads._mlp import MemberData, forward_stack, init_params, train_reference


def synthetic(n=1000, d=16, n_pairs=2000, seed=0):
    return synthetic_pairs(n, d, n_pairs, seed, prompt_size=10)  # ~100 "prompts" of uneven size


MLP = dict(hidden=(24, 12), batch_size=64, epochs=6)


@pytest.mark.parametrize("per_member_gemm", [False, True], ids=["bmm", "per-member-gemm"])
def test_batched_mlp_equals_sequential(per_member_gemm, monkeypatch):
    """K members trained together (one stacked forward/backward per step, float32) == each member trained alone
    the plain way with the same seed, init, split and batch order. Splits by prompt give members different
    train/val sizes (padded batches, masks) and patience 1 lets them stop at different epochs. Run twice: stacked
    matmuls as torch.bmm (small layers) and as one GEMM per member (what large layers use)."""
    if per_member_gemm:
        monkeypatch.setattr(mlp, "LOOP_MIN_FLOPS", 0)
    X, pairs, pp = synthetic()
    ens = fit_ensemble(X, pairs, head="mlp", k=4, pair_prompt_ids=pp, seed=11, warm=False, dtype="float32",
                       patience=1, lr=2e-2, **{**MLP, "epochs": 10})
    sizes = {len(s["train"]) for s in ens.splits}
    assert len(sizes) > 1  # members really have different data sizes
    R = ens.predict(X)
    for j, (s, sd) in enumerate(zip(ens.splits, ens.seeds)):
        params, info = train_reference(X, MemberData(pairs[s["train"]], pairs[s["val"]], sd),
                                       init_params(X.shape[1], MLP["hidden"], sd), lr=2e-2, patience=1,
                                       batch_size=64, epochs=10)
        assert ens.info["n_epochs"][j] == info["n_epochs"] and ens.info["best_epoch"][j] == info["best_epoch"]
        r = forward_stack(X, [p[None] for p in params])[:, 0]
        np.testing.assert_allclose(R[:, j], r, atol=1e-4 * np.abs(r).max())
    assert len(set(ens.info["n_epochs"])) > 1  # per-member early stopping was exercised


def test_warm_average_equals_manual_average():
    X, pairs, pp = synthetic()
    ens = fit_ensemble(X, pairs, head="mlp", k=3, seed=2, dtype="float32", **MLP)
    manual = [np.mean([m.params_[i] for m in ens.members], axis=0) for i in range(len(ens.members[0].params_))]
    for p, q in zip(ens.warm_.params_, manual):
        np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-7)
    h = np.maximum(X @ manual[0] + manual[1], 0)
    h = np.maximum(h @ manual[2] + manual[3], 0)
    np.testing.assert_allclose(ens.predict_warm(X), (h @ manual[4] + manual[5])[:, 0], rtol=1e-4, atol=1e-5)
    # members share one initialisation: with a vanishing learning rate they stay (almost) identical
    still = fit_ensemble(X, pairs, head="mlp", k=3, seed=2, lr=1e-12, dtype="float32", **{**MLP, "epochs": 1})
    assert np.allclose(still.members[0].params_[0], still.members[2].params_[0], atol=1e-9)
    cold = fit_ensemble(X, pairs, head="mlp", k=2, seed=2, lr=1e-12, warm=False, dtype="float32",
                        **{**MLP, "epochs": 1})
    assert not np.allclose(cold.members[0].params_[0], cold.members[1].params_[0]) and cold.warm_ is None


def test_independent_splits_and_accuracy():
    X, pairs, pp = synthetic()
    ens = fit_ensemble(X, pairs, head="linear", k=5, pair_prompt_ids=pp, seed=0)
    R = ens.predict(X)
    assert R.shape == (len(X), 5) and R.dtype == np.float32
    for s in ens.splits:
        assert not set(pp[s["train"]]) & set(pp[s["val"]])
        assert len(s["train"]) + len(s["val"]) == len(pairs)
    assert len({tuple(s["val"][:20]) for s in ens.splits}) == 5  # each member its own split
    assert len(set(ens.seeds)) == 5
    assert min(ens.info["val_accuracy"]) > 0.9
    assert pairwise_accuracy(R.mean(1), pairs) > 0.9
    again = fit_ensemble(X, pairs, head="linear", k=5, pair_prompt_ids=pp, seed=0)
    assert np.array_equal(again.predict(X), R)


def test_bootstrap_by_prompt():
    pp = np.repeat(np.arange(50).astype(str), 3)
    tr, oob = bootstrap_split(len(pp), seed=0, prompt_ids=pp)
    assert len(tr) == len(pp)  # equal-size prompts: resample keeps the pair count
    assert not set(pp[tr]) & set(pp[oob]) and len(np.unique(tr)) < len(tr)
    X, pairs, pp = synthetic()
    ens = fit_ensemble(X, pairs, head="mlp", mode="bootstrap", k=3, pair_prompt_ids=pp, seed=0, **MLP)
    for s in ens.splits:
        assert not set(s["train"]) & set(s["val"])
    assert ens.warm_ is not None and pairwise_accuracy(ens.predict(X).mean(1), pairs) > 0.85


def test_shared_trunk_and_linear_heads_and_lgbm():
    X, pairs, pp = synthetic()
    st = fit_ensemble(X, pairs, head="mlp", mode="shared_trunk", k=4, seed=0, **MLP)
    R = st.predict(X)
    assert R.shape == (len(X), 4) and st.trunk is not None and st.members[0].coef_.shape == (12,)
    assert pairwise_accuracy(R.mean(1), pairs) > 0.85 and not np.allclose(R[:, 0], R[:, 1])
    lh = fit_ensemble(X, pairs, head="linear", mode="linear_heads", k=3, pair_prompt_ids=pp, seed=0)
    assert lh.predict(X).shape == (len(X), 3)
    lg = fit_ensemble(X, pairs, head="lgbm", k=2, seed=0, n_estimators=20, num_leaves=7)
    assert lg.predict(X).shape == (len(X), 2) and lg.members[0].random_state != lg.members[1].random_state


def test_ensemble_errors():
    X, pairs, pp = synthetic(n=200, n_pairs=300)
    with pytest.raises(EmbrmError, match=r"k \(ensemble size\) must be an integer in \[1, 256\], got 0"):
        fit_ensemble(X, pairs, k=0)
    with pytest.raises(EmbrmError, match=r"k \(ensemble size\) must be an integer in \[1, 256\], got 100000"):
        fit_ensemble(X, pairs, k=100_000)  # refused before any member trains
    with pytest.raises(EmbrmError, match=r"seed must be an integer in \[0, 4294967295\], got -1"):
        fit_ensemble(X, pairs, seed=-1)
    with pytest.raises(EmbrmError, match=r"num_leaves must be an integer in \[2, 131072\], got 1"):
        fit_ensemble(X, pairs, head="lgbm", num_leaves=1)
    with pytest.raises(EmbrmError, match=r"hidden must be a list of 1 to 8 positive integers"):
        fit_ensemble(X, pairs, head="mlp", hidden=("a",))
    with pytest.raises(EmbrmError, match=r"val_fraction must be a number in \[0, 1\)"):
        fit_ensemble(X, pairs, val_fraction=1.0)
    with pytest.raises(EmbrmError, match="unknown ensemble mode"):
        fit_ensemble(X, pairs, mode="bagging")
    with pytest.raises(EmbrmError, match="head='mlp'"):
        fit_ensemble(X, pairs, head="linear", mode="shared_trunk")
    with pytest.raises(EmbrmError, match="unknown head"):
        fit_ensemble(X, pairs, head="svm")
    with pytest.raises(EmbrmError, match="seed="):
        fit_ensemble(X, pairs, head="mlp", random_state=3)
    with pytest.raises(EmbrmError, match="bad parameter"):
        fit_ensemble(X, pairs, head="linear", hidden=(3,))
    with pytest.raises(EmbrmError, match="one prompt id per pair"):
        fit_ensemble(X, pairs, pair_prompt_ids=pp[:5])
    with pytest.raises(EmbrmError, match="no WARM model"):
        fit_ensemble(X, pairs, k=2).predict_warm(X)


def _linear_gold_pairs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """3,000 random 64-d rows and ~2,000 pairs ordered by a random linear gold (winner first)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((3000, 64)).astype(np.float32)
    gold = X @ rng.standard_normal(64)
    a = rng.integers(0, 3000, (2000, 2))
    a = a[a[:, 0] != a[:, 1]]
    pairs = np.where((gold[a[:, 0]] > gold[a[:, 1]])[:, None], a, a[:, ::-1])
    return X, pairs


def test_a_fit_too_big_for_one_stacked_step_runs_in_spans_of_rows_with_the_same_result(monkeypatch):
    """Above STEP_BYTES a full-batch MLP step gathers and backpropagates a span of rows at a time (memory near the
    budget at Sun et al.'s size); the gradient is the same up to summation order, so the members are too."""
    import embrm.rewards.heads._stack as stack

    X, pairs = _linear_gold_pairs(seed=0)
    whole = fit_ensemble(X, pairs, head="mlp", k=3, hidden=(32, 16), epochs=6, seed=0)
    spans = []
    rows = stack.PairBatch.rows
    monkeypatch.setattr(stack.PairBatch, "rows", lambda self, i, s, e: spans.append(e - s) or rows(self, i, s, e))
    monkeypatch.setattr(mlp, "STEP_BYTES", 1 << 16)
    spanned = fit_ensemble(X, pairs, head="mlp", k=3, hidden=(32, 16), epochs=6, seed=0)
    assert spans and max(spans) == 256  # the spanned path ran, a span at a time
    assert whole.info["n_epochs"] == spanned.info["n_epochs"]
    np.testing.assert_allclose(spanned.predict(X), whole.predict(X), atol=1e-5)


def test_a_spanned_step_keeps_its_scoring_pass_activations_and_its_members_bit_for_bit(monkeypatch):
    """A span whose activations the scoring pass kept (KEPT_BYTES) is not forwarded again for its backward: the
    members are bit for bit those of forwarding every span twice."""
    import embrm.rewards.heads._stack as stack

    X, pairs = _linear_gold_pairs(seed=1)
    rows, gathered = stack.PairBatch.rows, []
    monkeypatch.setattr(stack.PairBatch, "rows", lambda self, i, s, e: gathered.append(e - s) or rows(self, i, s, e))
    monkeypatch.setattr(mlp, "STEP_BYTES", 1 << 16)
    fits = {}
    for kept in (0, 1 << 30):
        monkeypatch.setattr(mlp, "KEPT_BYTES", kept)
        gathered.clear()
        fits[kept] = fit_ensemble(X, pairs, head="mlp", k=3, hidden=(32, 16), epochs=6, seed=0), sum(gathered)
    np.testing.assert_array_equal(fits[0][0].predict(X), fits[1 << 30][0].predict(X))
    assert fits[1 << 30][1] < fits[0][1]  # fewer rows gathered: no second forward of the kept spans
