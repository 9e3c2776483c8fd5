"""ODIN disentangled heads (embrm.rewards.heads._odin) on synthetic data with a planted quality direction u and a length
feature len = x @ v + noise (v orthogonal to u); preferences within prompts follow gold = x @ u + 1.5 * len, so a
plain BT head learns mostly length."""

import numpy as np
import pytest
import torch

from embrm.core._errors import EmbrmError
from embrm.rewards.heads import LinearBT, MLPReward
from embrm.rewards.heads._mlp import MemberData, forward_stack
from embrm.rewards.heads._odin import ODIN_PARAMS, OdinResult, train_odin

N_PROMPTS, N_TRAIN_PROMPTS, D, C_LEN = 300, 240, 24, 1.5
FIT = {(): {"lr": 0.05, "epochs": 200, "patience": 10}, (32,): {"lr": 0.01, "epochs": 300, "patience": 10}}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls: one torch thread is fastest and immune to other processes competing for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pearson(a, b):
    return float(np.corrcoef(a, b)[0, 1])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    sizes = rng.integers(5, 11, N_PROMPTS)
    n = int(sizes.sum())
    pid = np.repeat(np.arange(N_PROMPTS), sizes)
    X = rng.standard_normal((n, D)).astype(np.float32)
    u, v = np.linalg.qr(rng.standard_normal((D, 2)))[0].T
    length = (X @ v + 0.3 * rng.standard_normal(n)).astype(np.float32)
    quality = X @ u
    gold = quality + C_LEN * length
    starts = np.cumsum(sizes) - sizes
    pairs = []
    for p in range(N_PROMPTS):  # all pairs within each prompt, labelled by gold
        i, j = np.triu_indices(int(sizes[p]), 1)
        a, b = starts[p] + i, starts[p] + j
        pairs.append(np.where((gold[a] > gold[b])[:, None], np.stack([a, b], 1), np.stack([b, a], 1)))
    pairs = np.concatenate(pairs).astype(np.int64)
    held = pid[pairs[:, 0]] >= N_TRAIN_PROMPTS
    return {"X": X, "length": length, "quality": quality, "pid": pid, "train": pairs[~held], "test": pairs[held]}


def _members(data, K, val_prompts=48):
    """K members: each holds out its own random 48 training prompts for early stopping."""
    out = []
    for k in range(K):
        prompts = np.random.default_rng(100 + k).permutation(N_TRAIN_PROMPTS)[:val_prompts]
        val = np.isin(data["pid"][data["train"][:, 0]], prompts)
        out.append(MemberData(data["train"][~val], data["train"][val], 7 + k))
    return out


def _acc(r, pairs, quality):
    """Pairwise agreement of rewards r with the planted quality-only order."""
    return float(np.mean((r[pairs[:, 0]] - r[pairs[:, 1]]) * (quality[pairs[:, 0]] - quality[pairs[:, 1]]) > 0))


@pytest.fixture(scope="module")
def fits(data):
    return {h: train_odin(data["X"], data["length"], _members(data, 3), h, init_seed=0, **kw) for h, kw in FIT.items()}


@pytest.mark.parametrize("hidden", list(FIT))
def test_quality_head_is_length_free_and_ranks_by_quality(data, fits, hidden):
    res = fits[hidden]
    assert isinstance(res, OdinResult) and len(res.best_epoch) == len(res.n_epochs) == len(res.val_history) == 3
    assert len(res.quality) == len(res.length) == 2 * (len(hidden) + 1)  # the trunk's layers + one output layer
    rows = np.unique(data["test"])
    rq, rl = forward_stack(data["X"], res.quality), forward_stack(data["X"], res.length)
    for k in range(3):
        assert abs(_pearson(rq[rows, k], data["length"][rows])) < 0.15
        assert _pearson(rl[rows, k], data["length"][rows]) > 0.7
        assert _acc(rq[:, k], data["test"], data["quality"]) > 0.8
    # length_corr: training rows, at the restored weights
    assert res.length_corr.shape == (3, 2)
    assert np.all(np.abs(res.length_corr[:, 0]) < 0.15) and np.all(res.length_corr[:, 1] > 0.7)
    rows0 = np.unique(_members(data, 1)[0].train_pairs)
    assert res.length_corr[0, 0] == pytest.approx(_pearson(rq[rows0, 0], data["length"][rows0]), abs=1e-4)
    # contrast: a plain BT head on the same pairs mostly learns length
    bt = LinearBT().fit(data["X"], data["train"]).predict(data["X"])
    assert _pearson(bt[rows], data["length"][rows]) > 0.6
    assert _acc(bt, data["test"], data["quality"]) < _acc(rq[:, 0], data["test"], data["quality"]) - 0.05


def test_quality_params_are_a_linear_or_mlp_head(data, fits):
    X = data["X"]
    lin = fits[()]
    W, b = lin.quality
    assert W.shape == (3, D, 1) and b.shape == (3, 1) and W.dtype == np.float32
    np.testing.assert_allclose(forward_stack(X, lin.quality)[:, 1], X @ W[1, :, 0] + b[1, 0], rtol=1e-5, atol=1e-5)
    mlp = fits[(32,)]
    assert [p.shape for p in mlp.quality] == [(3, D, 32), (3, 32), (3, 32, 1), (3, 1)]
    assert all(q is l for q, l in zip(mlp.quality[:2], mlp.length[:2]))  # one trunk, two output layers
    head = MLPReward.from_params([p[2] for p in mlp.quality], hidden=(32,))
    np.testing.assert_allclose(head.predict(X), forward_stack(X, mlp.quality)[:, 2], rtol=1e-5, atol=1e-5)
    wq, wl = mlp.quality[2][:, :, 0], mlp.length[2][:, :, 0]
    cos = np.abs((wq * wl).sum(1)) / (np.linalg.norm(wq, axis=1) * np.linalg.norm(wl, axis=1))
    assert np.all(cos < 0.1)


def test_members_differ_and_training_is_deterministic(data, fits):
    res = fits[()]
    W = res.quality[0]
    assert not np.allclose(W[0], W[1]) and not np.allclose(W[1], W[2])
    again = train_odin(data["X"], data["length"], _members(data, 3), (), init_seed=0, **FIT[()])
    for a, b in zip(res.quality + res.length, again.quality + again.length):
        np.testing.assert_array_equal(a, b)
    assert again.val_history == res.val_history and again.best_epoch == res.best_epoch
    for hidden in FIT:
        r = fits[hidden]
        assert all(1 <= be <= ne <= FIT[hidden]["epochs"] for be, ne in zip(r.best_epoch, r.n_epochs))
        assert [len(h) for h in r.val_history] == r.n_epochs
        for k in range(3):  # the restored epoch has the lowest validation loss seen
            assert r.val_history[k][r.best_epoch[k] - 1] == min(r.val_history[k])


def test_members_are_independent_of_the_stack(data):
    """Member 1 trained alone equals member 1 trained next to others (mini-batches of uneven counts, early
    stopping at different epochs, a member without validation that trains all epochs)."""
    ms = _members(data, 2)
    ms.append(MemberData(data["train"][:1500], np.zeros((0, 2), np.int64), 3))
    kw = {"init_seed": 5, "lr": 0.05, "epochs": 12, "patience": 2, "batch_size": 1024}
    stack = train_odin(data["X"], data["length"], ms, (8,), **kw)
    alone = train_odin(data["X"], data["length"], [ms[1]], (8,), **kw)
    for s, a in zip(stack.quality + stack.length, alone.quality + alone.length):
        np.testing.assert_allclose(s[1], a[0], rtol=1e-5, atol=1e-6)
    assert stack.best_epoch[1] == alone.best_epoch[0] and stack.val_history[1] == pytest.approx(alone.val_history[0])
    assert stack.n_epochs[2] == stack.best_epoch[2] == 12 and stack.val_history[2] == []


@pytest.mark.parametrize("change, match", [
    ({"X": "nan"}, "NaN"),
    ({"lam_quality": -1.0}, "lam_quality must be a finite number >= 0"),
    ({"lam_orth": float("nan")}, "lam_orth"),
    ({"length": "short"}, r"length must have shape"),
    ({"length": "inf"}, "non-finite"),
    ({"pairs": "out"}, "outside the"),
    ({"hidden": (0,)}, "hidden must be"),
])
def test_bad_inputs(data, change, match):
    X, length = data["X"][:50].copy(), data["length"][:50].copy()
    pairs = np.array([[0, 1], [2, 3], [4, 5]])
    hidden = change.pop("hidden", ())
    if change.pop("X", None):
        X[3, 2] = np.nan
    kind = change.pop("length", None)
    if kind == "short":
        length = length[:-1]
    elif kind == "inf":
        length[7] = np.inf
    if change.pop("pairs", None):
        pairs = np.array([[0, 1], [2, 50]])
    with pytest.raises(EmbrmError, match=match) as e:
        train_odin(X, length, [MemberData(pairs, pairs[:0], 0)], hidden, init_seed=0, **change)
    assert "\n" not in str(e.value)


def test_params_table():
    assert set(ODIN_PARAMS) == {"lam_length", "lam_quality", "lam_orth"}
    assert all(rule.ok(1.0) and rule.ok(0) and not rule.ok(-0.1) for rule in ODIN_PARAMS.values())
