import numpy as np
import pytest

from embrm.core import _hardware as hardware
from embrm.core._errors import EmbrmError
from embrm.evaluation._metrics import pairwise_accuracy
from embrm.rewards.heads import LGBMReward, LinearBT, MLPReward
from embrm.rewards.heads._mlp import MemberData, init_params, resolve_dtype, train_reference, train_stack


def synthetic(n=1200, d=16, n_pairs=2400, seed=0, nonlinear=False):
    """Gold is a known function of X; noiseless pairs; test pairs use held-out rows."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    w = rng.standard_normal(d)
    gold = X @ w + (2 * np.abs(X[:, 0]) if nonlinear else 0)
    split = int(0.75 * n)

    def draw(lo, hi, m):
        a, b = rng.integers(lo, hi, m), rng.integers(lo, hi, m)
        a, b = a[a != b], b[a != b]
        return np.where((gold[a] > gold[b])[:, None], np.stack([a, b], 1), np.stack([b, a], 1)).astype(np.int64)

    return X, draw(0, split, n_pairs), draw(split, n, 1000), gold


@pytest.mark.parametrize("est", [
    LinearBT(),
    MLPReward(hidden=(32, 16), batch_size=128, epochs=15),
    MLPReward(hidden=(32, 16), batch_size=128, epochs=15, objective="classification"),
    LGBMReward(n_estimators=60, num_leaves=15),
    LGBMReward(objective="bt", n_estimators=60, num_leaves=15),
], ids=["linear", "mlp-bt", "mlp-cls", "lgbm-cls", "lgbm-bt"])
def test_heads_learn(est):
    X, tr, te, _ = synthetic()
    assert est.fit(X, tr) is est
    r = est.predict(X)
    assert r.shape == (len(X),) and r.dtype == np.float32
    floor = 0.72 if isinstance(est, LGBMReward) else 0.88
    assert pairwise_accuracy(r, te) > floor


def test_mlp_beats_linear_on_nonlinear_gold():
    X, tr, te, _ = synthetic(n=2000, d=8, n_pairs=6000, nonlinear=True)
    lin = pairwise_accuracy(LinearBT().fit(X, tr).predict(X), te)
    mlp = pairwise_accuracy(MLPReward(hidden=(64, 32), batch_size=256, epochs=30, lr=3e-3).fit(X, tr).predict(X), te)
    assert mlp > lin + 0.02


def test_sklearn_conventions_and_reproducible():
    for est in (LinearBT(C=0.5), MLPReward(hidden=(8,)), LGBMReward(n_estimators=5)):
        assert not [a for a in vars(est) if a.endswith("_")]
        assert "random_state" in est.get_params()
        with pytest.raises(EmbrmError, match="not fitted"):
            est.predict(np.zeros((2, 4), np.float32))
    X, tr, _, _ = synthetic(n=300, n_pairs=400)
    a = MLPReward(hidden=(16, 8), batch_size=64, epochs=3, random_state=5).fit(X, tr).predict(X)
    b = MLPReward(hidden=(16, 8), batch_size=64, epochs=3, random_state=5).fit(X, tr).predict(X)
    c = MLPReward(hidden=(16, 8), batch_size=64, epochs=3, random_state=6).fit(X, tr).predict(X)
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_mlp_early_stopping_restores_best():
    X, tr, _, _ = synthetic(n=300, n_pairs=400)
    m = MLPReward(hidden=(64, 64), batch_size=32, epochs=40, lr=1e-2, patience=2).fit(X, tr)
    assert m.n_epochs_ < 40  # overfits fast and stops
    assert m.best_epoch_ == int(np.argmin(m.val_history_)) + 1
    assert m.n_epochs_ == m.best_epoch_ + 2
    assert not set(m.train_idx_) & set(m.val_idx_) and len(m.val_idx_) == round(0.2 * len(tr))


def test_mlp_stack_equals_plain_reference():
    """The hand-written batched engine (K=1, float32) == nn.Sequential + autograd + torch.optim.Adam."""
    X, tr, _, _ = synthetic(n=400, n_pairs=600)
    for objective in ("bt", "classification"):
        data = MemberData(tr[:480], tr[480:], seed=3)
        init = init_params(X.shape[1], (24, 12), seed=3)
        kw = dict(objective=objective, batch_size=64, epochs=6, weight_decay=1e-3)
        res = train_stack(X, [data], [init], dtype="float32", **kw)
        ref, info = train_reference(X, data, init, **kw)
        assert res.n_epochs[0] == info["n_epochs"] and res.best_epoch[0] == info["best_epoch"]
        np.testing.assert_allclose(res.val_history[0], info["val_history"], rtol=1e-5)
        for p, q in zip(res.params, ref):
            np.testing.assert_allclose(p[0], q, atol=2e-5)


@pytest.mark.parametrize("vendor, flags, expected", [
    ("AuthenticAMD", "avx2 avx512f avx512_bf16", "bfloat16"),      # Zen 4: bf16 dot products at 2x float32
    ("GenuineIntel", "avx2 avx512f avx512_bf16 avx512_fp16", "float32"),  # no AMX: bf16 measured slower
    ("GenuineIntel", "avx512f avx512_bf16 amx_bf16 amx_tile", "bfloat16"),
    ("AuthenticAMD", "avx2 fma", "float32"),
])
def test_auto_dtype_follows_cpu(monkeypatch, vendor, flags, expected):
    """auto picks bf16 only where bf16 matmuls are fast (AMX, or AVX512-BF16 on AMD), and never for small layers."""
    monkeypatch.setattr(hardware, "cpuinfo", lambda: {"vendor_id": vendor, "flags": flags})
    assert resolve_dtype("auto", None, (2048, 1024, 512)) == expected
    assert resolve_dtype("auto", None, (384, 128)) == "float32"
    assert resolve_dtype("float32", None, (2048, 1024)) == "float32"


def test_half_precision_paths_close_to_float32():
    X, tr, te, _ = synthetic(n=600, d=32, n_pairs=1500)
    accs = {}
    for dt in ("float32", "bfloat16", "float16"):
        m = MLPReward(hidden=(32, 16), epochs=8, lr=1e-2, dtype=dt).fit(X, tr)
        assert m.dtype_ == dt
        accs[dt] = pairwise_accuracy(m.predict(X), te)
    assert abs(accs["bfloat16"] - accs["float32"]) < 0.03 and abs(accs["float16"] - accs["float32"]) < 0.03
    assert resolve_dtype("float32") == "float32"
    assert resolve_dtype("auto", X, (16, 32)) == "float32"  # small layers never go to half precision
    with pytest.raises(EmbrmError, match="dtype"):
        resolve_dtype("float8")


def test_bad_inputs():
    X, tr, _, _ = synthetic(n=100, n_pairs=100)
    bad = X.copy()
    bad[[17, 40, 41], 2] = np.nan
    with pytest.raises(EmbrmError, match=r"embeddings contain NaN in 3 rows \(first: row 17\): re-embed or drop"):
        LinearBT().fit(bad, tr)
    with pytest.raises(EmbrmError, match="outside the 100 embedding rows"):
        LinearBT().fit(X, np.array([[0, 100]]))
    with pytest.raises(EmbrmError, match="with itself"):
        LinearBT().fit(X, np.array([[3, 3], [1, 2]]))
    with pytest.raises(EmbrmError, match=r"\(m, 2\)"):
        LinearBT().fit(X, np.arange(6))
    with pytest.raises(EmbrmError, match="at least one labelled pair"):
        LGBMReward().fit(X, np.zeros((0, 2), np.int64))
    with pytest.raises(EmbrmError, match="objective"):
        MLPReward(objective="hinge").fit(X, tr)
    with pytest.raises(EmbrmError, match="need at least 20"):
        MLPReward(hidden=(4,)).fit(X, tr[:10])
    m = LinearBT().fit(X, tr)
    with pytest.raises(EmbrmError, match="dim 8 but this head was fitted on dim 16"):
        m.predict(X[:, :8])


@pytest.mark.parametrize("est, message", [
    (LinearBT(C=0), r"C must be a finite number > 0, got 0"),
    (LinearBT(C=float("nan")), r"C must be a finite number > 0, got NaN"),
    (LinearBT(max_iter=0), r"max_iter must be an integer in \[1, 100000\], got 0"),
    (LinearBT(random_state=-1), r"random_state must be an integer in \[0, 4294967295\] or None, got -1"),
    (MLPReward(hidden=("a",)), r'hidden must be a list of 1 to 8 positive integers \(each <= 8192\), got \["a"\]'),
    (MLPReward(hidden=()), r"hidden must be a list"),
    (MLPReward(hidden=(8, 0)), r"got \[8, 0\]"),
    (MLPReward(hidden=8), r"hidden must be a list"),
    (MLPReward(epochs=0), r"epochs must be an integer in \[1, 10000\], got 0"),
    (MLPReward(lr=0.0), r"lr must be a number in \(0, 1\], got 0.0"),
    (MLPReward(batch_size=0), r"batch_size must be an integer in \[1, 10000000\] or None, got 0"),
    (MLPReward(patience=True), r"patience must be an integer .* got true"),
    (MLPReward(dtype="int8"), r'dtype must be one of "auto", "float32", "bfloat16", "float16", got "int8"'),
    (LGBMReward(num_leaves=1), r"num_leaves must be an integer in \[2, 131072\], got 1"),
    (LGBMReward(n_estimators=100_000), r"n_estimators must be an integer in \[1, 10000\], got 100000"),
    (LGBMReward(learning_rate=0), r"learning_rate must be a number in \(0, 1\], got 0"),
    (LGBMReward(colsample_bytree=1.5), r"colsample_bytree must be a number in \(0, 1\], got 1.5"),
    (LGBMReward(min_child_samples=0), r"min_child_samples must be an integer in \[1, 1000000\], got 0"),
    (LGBMReward(objective="rank"), r'objective must be one of "classification", "bt", got "rank"'),
])
def test_heads_check_their_params_in_one_line(est, message):
    """Python API users get the same one-line errors as `embrm fit` and studies (one rule per parameter)."""
    X, tr, _, _ = synthetic(n=100, n_pairs=100)
    with pytest.raises(EmbrmError, match=message) as e:
        est.fit(X, tr)
    assert "\n" not in str(e.value)
