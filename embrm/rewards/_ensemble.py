"""Reward-model ensembles: K members over cached embeddings.

    ens = fit_ensemble(X, pairs, head="mlp", k=10, mode="independent", pair_prompt_ids=pp, seed=0)
    R = ens.predict(X)                 # (n, K) float32 member scores
    r_warm = ens.predict_warm(X)       # (n,) the WARM weight-averaged MLP (head="mlp", warm=True)

Modes
    independent   each member its own seed and its own 80/20 train/validation split of the pairs (by prompt when
                  pair_prompt_ids is given) (Sun et al.). Linear and LightGBM members train on their 80 % too.
    bootstrap     each member trains on a bootstrap resample of the prompts (with replacement; each pair is its
                  own "prompt" without pair_prompt_ids); its out-of-bag pairs are its validation set.
    shared_trunk  (Ahmed et al.) one MLP trained on all pairs (its own 80/20 split for early stopping) is the
                  trunk; K linear BT heads on the trunk's last hidden layer, each on its own bootstrap resample.
                  head must be "mlp"; head_params configure the trunk, linear_C the heads.
    linear_heads  K linear BT heads directly on the frozen embeddings, each on its own bootstrap resample: the
                  frozen LLM is the shared encoder (Ahmed et al. with a frozen trunk). head must be "linear".

With length_control="odin" (linear or MLP heads, modes independent / bootstrap) every member is trained as a
quality head plus a length head on the BT loss of their sum (embrm.rewards.heads._odin, Chen et al. 2024); the member IS
its quality head (a LinearBT or an MLPReward), so it is scored, saved and loaded as any other member.
`length_correction` (embrm.rewards.LengthCorrection, set by embrm.pipeline._steps for
length_control="posthoc") removes each member's fitted length slope: predict then needs the responses' length
feature.

MLP members are trained together (one batched forward/backward for all K per step; see embrm.rewards.heads._mlp). With
warm=True (default) they share ONE initialisation (from `seed`) and differ in split, batch order and data, and
`warm_` holds their weight average (WARM, Rame et al.) beside the prediction ensemble. For linear heads weight
and prediction averaging coincide, so WARM only exists for MLP members. LightGBM members are fitted one after
another (LightGBM itself is multithreaded).
"""

from __future__ import annotations

import time

import numpy as np

from embrm.core import (
    SEED,
    EmbrmError,
    Integer,
    Number,
    check_params,
    check_value,
    map_rows,
    step_progress,
    take_rows,
)
from embrm.data import split_pairs
from embrm.rewards.heads import HEADS, LaplaceBT, LinearBT, MLPReward, check_embeddings, check_group_ids, check_pairs
from embrm.rewards.heads._mlp import forward_stack, init_params, train_stack
from embrm.rewards.heads._odin import ODIN_PARAMS, train_odin
from embrm.rewards.heads._stack import MemberData

MODES = ("independent", "bootstrap", "shared_trunk", "linear_heads", "posterior")
# Ensembles in the literature have 5-20 members; every member is a full fit (and K scores per response), so K is
# bounded where a study still finishes: 256 members of the default MLP take ~25x the default study's fit time.
K = Integer(1, 256)


def member_seeds(seed: int, k: int) -> list[int]:
    """K independent member seeds derived from one seed (numpy SeedSequence), as plain ints."""
    return [int(s) for s in np.random.SeedSequence(int(seed)).generate_state(k)]


def bootstrap_split(n_pairs: int, seed: int, prompt_ids=None) -> tuple[np.ndarray, np.ndarray]:
    """Resample prompts with replacement: (train positions with repeats, out-of-bag positions)."""
    rng = np.random.default_rng(seed)
    if prompt_ids is None:
        grp, G = np.arange(n_pairs), n_pairs
    else:
        _, grp = np.unique(np.asarray(prompt_ids).astype(str), return_inverse=True)
        G = int(grp.max()) + 1
    times = np.bincount(rng.integers(0, G, G), minlength=G)[grp]  # how often each pair's prompt was drawn
    pos = np.arange(n_pairs, dtype=np.int64)
    return np.repeat(pos, times), pos[times == 0]


class RewardEnsemble:
    """K fitted reward members. predict(X) -> (n, K) float32.

    Attributes: head, mode, members (fitted heads; for shared_trunk the linear heads), trunk (shared_trunk's
    MLPReward, else None), warm_ (WARM-averaged MLPReward or None), posterior (mode posterior's LaplaceBT, else
    None), seeds (per member), splits (per member dict
    with 'train' / 'val' pair positions into the fitted pairs), head_params, info (timings, dtype, per-member
    epochs and validation accuracy)."""

    def __init__(self, head: str, mode: str, members: list, seeds: list[int], splits: list[dict], *,
                 trunk: MLPReward | None = None, warm: MLPReward | None = None, head_params: dict | None = None,
                 info: dict | None = None, posterior: LaplaceBT | None = None):
        self.head, self.mode = head, mode
        self.members, self.seeds, self.splits = list(members), list(seeds), list(splits)
        self.trunk, self.warm_, self.posterior = trunk, warm, posterior
        self.head_params = dict(head_params or {})
        self.info = dict(info or {})
        self.length_correction = None  # embrm.rewards.LengthCorrection over [members..., warm]: see predict
        self._stack = None

    @property
    def k(self) -> int:
        return len(self.members)

    def __len__(self) -> int:
        return self.k

    def __repr__(self) -> str:
        return f"RewardEnsemble(head={self.head!r}, mode={self.mode!r}, k={self.k}, warm={self.warm_ is not None})"

    def predict(self, X, length=None, progress: bool | None = False) -> np.ndarray:
        """Member scores (n, K) float32; with a length correction, `length` (embrm.rewards.length_feature of the
        responses, aligned with X) is required and each member's length slope is removed. X may be an
        embrm.core.Rows (arrays on disk): it is scored a block at a time (progress: a bar or lines per block)."""
        raw = self._predict_raw(X, progress)
        return raw if self.length_correction is None else self.corrected(raw, length)

    def corrected(self, raw: np.ndarray, length, first: int = 0) -> np.ndarray:
        """Raw scores (n, c) of the scored models first..first+c-1 with their length slopes removed."""
        if length is None:
            raise EmbrmError("this ensemble removes a fitted length slope (length_control posthoc): pass "
                             "length=embrm.rewards.length_feature(responses)")
        length = np.asarray(length, np.float64)
        if length.shape != (len(raw),):
            raise EmbrmError(f"length has shape {length.shape}; expected ({len(raw)},): one value per response")
        slopes = np.asarray(self.length_correction.slopes[first:first + raw.shape[1]], np.float64)
        return (raw - length[:, None] * slopes).astype(np.float32)

    def _predict_raw(self, X, progress: bool | None = False) -> np.ndarray:
        """(n, K) raw member scores; an array dataset's rows (embrm.core.Rows) are scored a block at a time."""
        return map_rows(self._predict_block, X, label=f"score {self.k} members", progress=progress)

    def _predict_block(self, X) -> np.ndarray:
        X = check_embeddings(X)
        if self.mode == "shared_trunk":
            F = self.trunk.transform(X)
            return (F @ np.stack([m.coef_ for m in self.members], 1)).astype(np.float32)
        if self.head in ("linear", "laplace"):
            W = np.stack([m.coef_ for m in self.members], 1)
            if X.shape[1] != W.shape[0]:
                raise EmbrmError(f"embeddings have dim {X.shape[1]} but the ensemble was fitted on dim {W.shape[0]}: "
                                 f"use the same embedder as for training")
            return (X @ W).astype(np.float32)
        if self.head == "mlp":
            if X.shape[1] != self.members[0].params_[0].shape[0]:
                raise EmbrmError(f"embeddings have dim {X.shape[1]} but the ensemble was fitted on dim "
                                 f"{self.members[0].params_[0].shape[0]}: use the same embedder as for training")
            return forward_stack(X, self.stacked_params())
        return np.stack([m.predict(X) for m in self.members], 1).astype(np.float32)

    def epistemic_std(self, X) -> np.ndarray:
        """Each response's reward uncertainty (n,): the Laplace posterior's sqrt(x^T H^-1 x) in mode posterior,
        else the members' population std of raw scores (their disagreement)."""
        if self.posterior is not None:
            return map_rows(self.posterior.predict_std, X)
        return self._predict_raw(X).astype(np.float64).std(axis=1)

    def predict_warm(self, X, length=None) -> np.ndarray:
        """Rewards (n,) of the WARM weight-averaged model (MLP members with a shared initialisation only); its own
        length slope is removed as the members' are (see predict)."""
        if self.warm_ is None:
            raise EmbrmError("this ensemble has no WARM model: fit head='mlp' with warm=True "
                             "(mode independent or bootstrap)")
        raw = map_rows(self.warm_.predict, X)[:, None]
        return (raw if self.length_correction is None else self.corrected(raw, length, self.k))[:, 0]

    def stacked_params(self) -> list[np.ndarray]:
        """MLP members' weights stacked (K, ...) per tensor."""
        if self._stack is None:
            self._stack = [np.stack(ps) for ps in zip(*(m.params_ for m in self.members))]
        return self._stack

    def summary(self) -> dict:
        """JSON-able description: head, mode, K, seeds, split sizes, training info."""
        return {
            "head": self.head, "mode": self.mode, "k": self.k, "seeds": self.seeds,
            "head_params": _jsonable(self.head_params), "warm": self.warm_ is not None,
            "splits": [{"n_train": int(len(s["train"])), "n_val": int(len(s["val"])),
                        "n_train_distinct": int(len(np.unique(s["train"])))} for s in self.splits],
            "info": _jsonable(self.info),
            "length_correction": None if self.length_correction is None else self.length_correction.to_dict(),
        }


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


# A linear head has no optimiser settings of its own (LinearBT is solved by L-BFGS): ODIN's linear heads take
# these, which reached the planted optimum on the synthetic tests (embrm.rewards.heads._odin) in ~200 full-batch steps.
LINEAR_ODIN = {"lr": 0.05, "epochs": 200, "patience": 10}


def _odin_members(X, pairs, splits, seeds, proto, head, mode, warm, seed, odin: dict, length):
    """ODIN members (embrm.rewards.heads._odin): each member is its quality head, as a LinearBT or an MLPReward."""
    if head not in ("linear", "mlp") or mode not in ("independent", "bootstrap"):
        raise EmbrmError("ODIN members need head linear or mlp with mode independent or bootstrap")
    check_params(odin, ODIN_PARAMS, "ODIN")
    mlp = head == "mlp"
    hidden = tuple(int(h) for h in proto.hidden) if mlp else ()
    train = proto.train_kwargs() if mlp else LINEAR_ODIN
    data = [MemberData(pairs[s["train"]], pairs[s["val"]], sd) for s, sd in zip(splits, seeds)]
    res = train_odin(X, np.asarray(length, np.float64), data, hidden, init_seed=int(seed), **odin,
                     **{k: train[k] for k in ("lr", "epochs", "patience", "weight_decay", "batch_size") if k in train})
    q = res.quality
    if mlp:
        members = [MLPReward.from_params([p[j] for p in q], **{**proto.get_params(), "random_state": sd})
                   for j, sd in enumerate(seeds)]
        for j, m in enumerate(members):
            m.best_epoch_, m.n_epochs_, m.dtype_ = res.best_epoch[j], res.n_epochs[j], "float32"
    else:
        members = [LinearBT.from_coef(q[0][j, :, 0], **{k: v for k, v in proto.get_params().items()
                                                         if k != "random_state"}) for j in range(len(seeds))]
    warm_model = (MLPReward.from_params([p.mean(0) for p in q], **{**proto.get_params(), "random_state": int(seed)})
                  if mlp and warm else None)
    info = {"odin": {**odin, "length_corr_quality": res.length_corr[:, 0], "length_corr_length": res.length_corr[:, 1]},
            "best_epoch": res.best_epoch, "n_epochs": res.n_epochs, "train_seconds": res.seconds,
            "warm_init": bool(warm)}
    return members, warm_model, info


def _pair_rows(X, pairs: np.ndarray, length):
    """Only the rows the pairs use, as float32, with the pairs (and the length feature) renumbered: a fit reads
    2 x pairs rows, never the whole dataset (an array dataset's X stays on disk)."""
    rows, local = np.unique(pairs, return_inverse=True)
    length = None if length is None else np.asarray(length)[rows]
    return check_embeddings(take_rows(X, rows)), local.reshape(pairs.shape).astype(np.int64), length


def fit_ensemble(X, pairs, *, head: str = "linear", k: int = 10, mode: str = "independent",
                 pair_prompt_ids=None, seed: int = 0, warm: bool = True, val_fraction: float = 0.2,
                 linear_C: float = 1.0, odin: dict | None = None, length=None, **head_params) -> RewardEnsemble:
    """Fit K reward members on pairs (m, 2) of row indices into X (column 0 preferred).

    head: "linear" | "mlp" | "lgbm"; mode: see the module doc; pair_prompt_ids: one prompt id per pair (splits
    and bootstraps then go by prompt); seed: derives every member's seed; warm: MLP members share one
    initialisation and warm_ holds their weight average; val_fraction: each member's held-out share (independent
    mode; the trunk's in shared_trunk); linear_C: C of the linear heads in shared_trunk mode; head_params: the
    head's parameters (e.g. hidden=(1024, 512), epochs=30, objective="bt", dtype="auto", n_estimators=200)."""
    t0 = time.perf_counter()
    if head not in HEADS:
        raise EmbrmError(f"unknown head {head!r}: use one of {', '.join(HEADS)}")
    if mode not in MODES:
        raise EmbrmError(f"unknown ensemble mode {mode!r}: use one of {', '.join(MODES)}")
    check_value("k (ensemble size)", k, K)
    check_value("seed", seed, SEED)
    if mode == "shared_trunk" and head != "mlp":
        raise EmbrmError("mode shared_trunk trains an MLP trunk with K linear heads: use head='mlp'")
    if mode == "linear_heads" and head != "linear":
        raise EmbrmError("mode linear_heads fits K linear heads over the frozen embeddings: use head='linear'")
    if (mode == "posterior") != (head == "laplace"):
        raise EmbrmError("mode posterior draws the members from a Laplace posterior: use head='laplace' with "
                         "mode='posterior' (and only that mode)")
    if "random_state" in head_params:
        raise EmbrmError("pass seed= to fit_ensemble (it derives every member's random_state), not random_state")
    if "val_fraction" in head_params:  # MLPReward-style spelling of the same thing
        val_fraction = head_params.pop("val_fraction")
    check_value("val_fraction", val_fraction, Number(0, 1, hi_open=True))
    check_value("linear_C", linear_C, LinearBT.PARAMS["C"])
    k = int(k)
    pairs = check_pairs(pairs, len(X))
    pp = check_group_ids(pair_prompt_ids, len(pairs))
    if odin is not None and (length is None or np.shape(length) != (len(X),)):
        raise EmbrmError(f"ODIN needs the length feature of every row: length of shape ({len(X)},)")
    X, pairs, length = _pair_rows(X, pairs, length)
    seeds = member_seeds(seed, k)
    try:
        lgbm_threads = {"n_jobs": head_params.get("n_jobs") or 2} if head == "lgbm" else {}  # per member
        proto = HEADS[head](**{**head_params, **lgbm_threads})
    except TypeError as e:
        raise EmbrmError(f"bad parameter for head {head!r}: {e}") from None
    check_params(proto.get_params(), HEADS[head].PARAMS, f"head {head!r}")  # before any member trains

    if mode == "posterior":  # one fit on every pair: the posterior, not a split, makes the members differ
        everything = np.arange(len(pairs), dtype=np.int64)
        splits = [{"train": everything, "val": np.zeros(0, np.int64)} for _ in seeds]
    elif mode in ("bootstrap", "linear_heads", "shared_trunk"):
        splits = [dict(zip(("train", "val"), bootstrap_split(len(pairs), s, pp))) for s in seeds]
    else:
        splits = [dict(zip(("train", "val"), split_pairs(len(pairs), val_fraction, seed=s, prompt_ids=pp)))
                  for s in seeds]
    info: dict = {}
    trunk = warm_model = posterior = None

    if odin is not None:
        members, warm_model, info = _odin_members(X, pairs, splits, seeds, proto, head, mode, warm, seed, odin,
                                                  length)
    elif mode == "posterior":
        posterior = proto.fit(X, pairs)
        draws = posterior.sample(k, seed)
        members = [LinearBT.from_coef(draws[:, j], C=posterior.C) for j in range(k)]
        info.update(newton_iterations=posterior.n_iter_, log_det_precision=posterior.log_det_precision())
    elif mode == "shared_trunk":
        trunk = MLPReward(**{**proto.get_params(), "val_fraction": val_fraction, "random_state": int(seed)})
        trunk.fit(X, pairs, pp)
        F = trunk.transform(X)
        members = [LinearBT(C=linear_C).fit(F, pairs[s["train"]]) for s in splits]
        info.update(trunk_best_epoch=trunk.best_epoch_, trunk_epochs=trunk.n_epochs_, dtype=trunk.dtype_)
        head_params = {**head_params, "linear_C": linear_C}
    elif head == "mlp":
        hidden = tuple(int(h) for h in proto.hidden)
        inits = ([init_params(X.shape[1], hidden, seed)] * k if warm
                 else [init_params(X.shape[1], hidden, s) for s in seeds])
        data = [MemberData(pairs[s["train"]], pairs[s["val"]], sd) for s, sd in zip(splits, seeds)]
        res = train_stack(X, data, inits, **proto.train_kwargs())
        members = []
        for j, (s, sd) in enumerate(zip(splits, seeds)):
            m = MLPReward(**{**proto.get_params(), "val_fraction": val_fraction, "random_state": sd})
            m._set_result([p[j] for p in res.params], res, j, s["train"], s["val"])
            members.append(m)
        if warm and mode in ("independent", "bootstrap"):
            warm_model = MLPReward.from_params([p.mean(0) for p in res.params],
                                               **{**proto.get_params(), "random_state": int(seed)})
        info.update(dtype=res.dtype, train_seconds=res.seconds, matmul_flops=res.flops,
                    best_epoch=res.best_epoch, n_epochs=res.n_epochs, skipped_steps=res.skipped_steps,
                    warm_init=bool(warm))
    else:
        members = []
        with step_progress(k, f"{head} members", "members") as bar:
            for s, sd in zip(splits, seeds):
                members.append(HEADS[head](**{**proto.get_params(), "random_state": sd}).fit(X, pairs[s["train"]]))
                bar.advance()

    ens = RewardEnsemble(head, mode, members, seeds, splits, trunk=trunk, warm=warm_model,
                         head_params=head_params, info=info, posterior=posterior)
    if any(len(s["val"]) for s in splits):
        rows = np.unique(pairs[np.concatenate([s["val"] for s in splits])])  # score only validation responses
        R = ens.predict(X[rows])
        local = np.minimum(np.searchsorted(rows, pairs), len(rows) - 1)  # exact for every validation pair
        d = R[local[:, 0]] - R[local[:, 1]]
        ens.info["val_accuracy"] = [
            float(np.mean((d[s["val"], j] > 0) + 0.5 * (d[s["val"], j] == 0))) if len(s["val"]) else None
            for j, s in enumerate(splits)]
    ens.info["fit_seconds"] = time.perf_counter() - t0
    ens.info["val_fraction"] = val_fraction if mode in ("independent", "shared_trunk") else None
    return ens
