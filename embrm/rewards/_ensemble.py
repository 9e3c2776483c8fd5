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
    posterior     K draws from a Laplace posterior of one linear BT fit on all pairs. head must be "laplace".
    features      random feature subsets (random-subspace ensembles, Ho 1998): member k sees only
                  max(1, round(feature_fraction * d)) of the d embedding dimensions (feature_fraction default 0.5),
                  drawn from its own seed, and otherwise trains as in independent (its seed, its 80/20 split). head
                  must be "linear" or "mlp". A fitted member is still a full-d model, zero outside its subset (a
                  linear member's coef_; an MLP member's first-layer rows, whose gradient is masked in the stacked
                  trainer, their init scaled to the subset's fan-in), so scoring, saving and loading are those of
                  the head. info["feature_subsets"] holds each member's dimensions (saved in the manifest). With
                  warm=True the MLP members share one initialisation (masked per member) but there is NO WARM model:
                  members see different inputs, and averaging their first layers would only shrink each input's
                  weights by the share of members that see it (predict_warm refuses).
    disjoint      disjoint label subsets: the pairs' prompts (each pair its own without pair_prompt_ids) in a
                  random order are cut into K shares of near-equal pair counts, and member k trains only on its
                  share (its own 80/20 split inside it, as independent). Every head of independent; each share
                  needs MIN_PAIRS_FOR_SPLIT (20) pairs. MLP members get a WARM model as in independent.

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
from embrm.data import MIN_PAIRS_FOR_SPLIT, split_pairs
from embrm.rewards.heads import HEADS, LaplaceBT, LinearBT, MLPReward, check_embeddings, check_group_ids, check_pairs
from embrm.rewards.heads._mlp import forward_stack, init_params, train_stack
from embrm.rewards.heads._odin import ODIN_PARAMS, train_odin
from embrm.rewards.heads._stack import MemberData

MODES = ("independent", "bootstrap", "shared_trunk", "linear_heads", "posterior", "features", "disjoint")
WARM_MODES = ("independent", "bootstrap", "disjoint")  # MLP members of these modes get a weight average
FEATURE_HEADS = ("linear", "mlp")  # heads whose members can be zero outside a feature subset
FEATURE_FRACTION = Number(0, 1, lo_open=True)  # mode features: the share of the d dimensions a member sees
DEFAULT_FEATURE_FRACTION = 0.5
# Ensembles in the literature have 5-20 members; every member is a full fit (and K scores per response), so K is
# bounded where a study still finishes: 256 members of the default MLP take ~25x the default study's fit time.
K = Integer(1, 256)


def member_seeds(seed: int, k: int) -> list[int]:
    """K independent member seeds derived from one seed (numpy SeedSequence), as plain ints."""
    return [int(s) for s in np.random.SeedSequence(int(seed)).generate_state(k)]


def bootstrap_split(n_pairs: int, seed: int, prompt_ids=None) -> tuple[np.ndarray, np.ndarray]:
    """Resample prompts with replacement: (train positions with repeats, out-of-bag positions)."""
    rng = np.random.default_rng(seed)
    grp, G = _groups(n_pairs, prompt_ids)
    times = np.bincount(rng.integers(0, G, G), minlength=G)[grp]  # how often each pair's prompt was drawn
    pos = np.arange(n_pairs, dtype=np.int64)
    return np.repeat(pos, times), pos[times == 0]


def _groups(n_pairs: int, prompt_ids=None) -> tuple[np.ndarray, int]:
    """(group of each pair, number of groups): its prompt, or each pair its own without prompt ids."""
    if prompt_ids is None:
        return np.arange(n_pairs), n_pairs
    _, grp = np.unique(np.asarray(prompt_ids).astype(str), return_inverse=True)
    return grp, int(grp.max()) + 1 if n_pairs else 0


def disjoint_shares(n_pairs: int, k: int, seed: int, prompt_ids=None) -> list[np.ndarray]:
    """K disjoint shares of the pair positions that cover them all (sorted positions each): whole prompts in a
    random order, prompt g going to share floor(K * (pairs before g + half of g's) / n_pairs), so that shares
    have near-equal pair counts (a share may be empty when one prompt holds many pairs)."""
    grp, G = _groups(n_pairs, prompt_ids)
    order = np.random.default_rng(seed).permutation(G)
    size = np.bincount(grp, minlength=G)[order].astype(np.float64)
    share = np.empty(G, np.int64)
    share[order] = np.minimum((k * (np.cumsum(size) - size / 2) / max(n_pairs, 1)).astype(np.int64), k - 1)
    pair_share = share[grp]
    pos = np.argsort(pair_share, kind="stable").astype(np.int64)
    return np.split(pos, np.cumsum(np.bincount(pair_share, minlength=k))[:-1])


def _disjoint_splits(n_pairs: int, seeds: list[int], seed: int, val_fraction: float, pp) -> list[dict]:
    """Mode disjoint: each member's own split (split_pairs, by prompt with pp) inside its own share."""
    k = len(seeds)
    shares = disjoint_shares(n_pairs, k, seed, pp)
    smallest = min(len(s) for s in shares)
    if smallest < MIN_PAIRS_FOR_SPLIT:
        raise EmbrmError(f"mode disjoint splits the {n_pairs} training pairs into K = {k} disjoint shares: the "
                         f"smallest has {smallest} pairs, fewer than the {MIN_PAIRS_FOR_SPLIT} a member needs: use a "
                         f"smaller k or label more pairs", field="k")
    out = []
    for j, (share, sd) in enumerate(zip(shares, seeds)):
        tr, va = split_pairs(len(share), val_fraction, seed=sd, prompt_ids=None if pp is None else pp[share],
                             where=f"member {j}'s share of the {n_pairs} pairs (mode disjoint, K = {k})")
        out.append({"train": share[tr], "val": share[va]})
    return out


def feature_subsets(d: int, fraction: float, seeds: list[int]) -> list[np.ndarray]:
    """Mode features: each member's sorted dimensions, max(1, round(fraction * d)) of d, drawn without replacement
    from a stream of its own seed (not the one its split draws from)."""
    m = max(1, int(round(fraction * d)))
    return [np.sort(np.random.default_rng([int(sd), 1]).choice(d, m, replace=False)).astype(np.int64)
            for sd in seeds]


def _masked_init(init: list[np.ndarray], subset: np.ndarray) -> list[np.ndarray]:
    """An MLP init whose first layer reads only `subset`: the other rows zero, the kept rows scaled to the default
    init of a layer with len(subset) inputs (bound 1/sqrt(fan-in))."""
    W = np.zeros_like(init[0])
    W[subset] = init[0][subset] * np.float32(np.sqrt(len(init[0]) / len(subset)))
    return [W, *init[1:]]


class RewardEnsemble:
    """K fitted reward members. predict(X) -> (n, K) float32.

    Attributes: head, mode, members (fitted heads; for shared_trunk the linear heads), trunk (shared_trunk's
    MLPReward, else None), warm_ (WARM-averaged MLPReward or None), posterior (mode posterior's LaplaceBT, else
    None), seeds (per member), splits (per member dict
    with 'train' / 'val' pair positions into the fitted pairs), head_params, info (timings, dtype, per-member
    epochs and validation accuracy; mode features: feature_fraction and feature_subsets), feature_subsets (mode
    features: each member's dimensions, read from info)."""

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
    def feature_subsets(self) -> list[np.ndarray] | None:
        """Mode features: each member's input dimensions (int64, sorted); None in the other modes."""
        subsets = self.info.get("feature_subsets")
        return None if subsets is None else [np.asarray(s, np.int64) for s in subsets]

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
            raise EmbrmError(f"this ensemble has no WARM model: fit head='mlp' with warm=True "
                             f"(mode {', '.join(WARM_MODES)})")
        raw = map_rows(self.warm_.predict, X)[:, None]
        return (raw if self.length_correction is None else self.corrected(raw, length, self.k))[:, 0]

    def stacked_params(self) -> list[np.ndarray]:
        """MLP members' weights stacked (K, ...) per tensor."""
        if self._stack is None:
            self._stack = [np.stack(ps) for ps in zip(*(m.params_ for m in self.members))]
        return self._stack

    def summary(self) -> dict:
        """JSON-able description: head, mode, K, seeds, split sizes, training info."""
        subsets = self.feature_subsets or [None] * self.k
        return {
            "head": self.head, "mode": self.mode, "k": self.k, "seeds": self.seeds,
            "head_params": _jsonable(self.head_params), "warm": self.warm_ is not None,
            "splits": [{"n_train": int(len(s["train"])), "n_val": int(len(s["val"])),
                        "n_train_distinct": int(len(np.unique(s["train"]))),
                        **({} if f is None else {"n_features": int(len(f))})} for s, f in zip(self.splits, subsets)],
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
                 linear_C: float = 1.0, feature_fraction: float | None = None, odin: dict | None = None, length=None,
                 **head_params) -> RewardEnsemble:
    """Fit K reward members on pairs (m, 2) of row indices into X (column 0 preferred).

    head: "linear" | "mlp" | "lgbm"; mode: see the module doc; pair_prompt_ids: one prompt id per pair (splits
    and bootstraps then go by prompt); seed: derives every member's seed; warm: MLP members share one
    initialisation and warm_ holds their weight average; val_fraction: each member's held-out share (independent,
    features and disjoint modes; the trunk's in shared_trunk); linear_C: C of the linear heads in shared_trunk mode;
    feature_fraction: mode features' share of the dimensions each member sees (default 0.5); head_params: the
    head's parameters (e.g. hidden=(1024, 512), epochs=30, objective="bt", dtype="auto", n_estimators=200)."""
    t0 = time.perf_counter()
    _check_mode(head, mode, feature_fraction)
    check_value("k (ensemble size)", k, K)
    check_value("seed", seed, SEED)
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

    splits = _member_splits(mode, len(pairs), seeds, seed, val_fraction, pp)
    info: dict = {}
    subsets = None
    if mode == "features":
        feature_fraction = DEFAULT_FEATURE_FRACTION if feature_fraction is None else feature_fraction
        subsets = feature_subsets(X.shape[1], feature_fraction, seeds)
        info.update(feature_fraction=feature_fraction, feature_subsets=[s.tolist() for s in subsets])
    if mode == "disjoint":
        info["disjoint_by"] = "pair" if pp is None else "prompt"
    trunk = warm_model = posterior = None

    if odin is not None:
        members, warm_model, odin_info = _odin_members(X, pairs, splits, seeds, proto, head, mode, warm, seed, odin,
                                                       length)
        info.update(odin_info)
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
        members, warm_model, mlp_info = _mlp_members(X, pairs, splits, seeds, proto, mode, warm, seed, val_fraction,
                                                     subsets)
        info.update(mlp_info)
    else:
        members = _sequential_members(X, pairs, splits, seeds, proto, head, subsets)

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
    ens.info["val_fraction"] = (val_fraction if mode in ("independent", "shared_trunk", "features", "disjoint")
                                else None)
    return ens


def _check_mode(head: str, mode: str, feature_fraction) -> None:
    """The head and mode exist and go together; feature_fraction only with mode features, in (0, 1]."""
    if head not in HEADS:
        raise EmbrmError(f"unknown head {head!r}: use one of {', '.join(HEADS)}")
    if mode not in MODES:
        raise EmbrmError(f"unknown ensemble mode {mode!r}: use one of {', '.join(MODES)}")
    if mode == "shared_trunk" and head != "mlp":
        raise EmbrmError("mode shared_trunk trains an MLP trunk with K linear heads: use head='mlp'")
    if mode == "linear_heads" and head != "linear":
        raise EmbrmError("mode linear_heads fits K linear heads over the frozen embeddings: use head='linear'")
    if (mode == "posterior") != (head == "laplace"):
        raise EmbrmError("mode posterior draws the members from a Laplace posterior: use head='laplace' with "
                         "mode='posterior' (and only that mode)")
    if mode == "features" and head not in FEATURE_HEADS:
        raise EmbrmError(f"mode features gives each member a random subset of the embedding dimensions: use head "
                         f"{' or '.join(repr(h) for h in FEATURE_HEADS)}, not {head!r}")
    if feature_fraction is not None:
        if mode != "features":
            raise EmbrmError(f"feature_fraction is the share of dimensions each member sees in mode features: "
                             f"drop it for mode {mode}")
        check_value("feature_fraction", feature_fraction, FEATURE_FRACTION)


def _member_splits(mode: str, n_pairs: int, seeds: list[int], seed: int, val_fraction: float, pp) -> list[dict]:
    """Each member's 'train' / 'val' pair positions for the mode (see the module doc)."""
    if mode == "posterior":  # one fit on every pair: the posterior, not a split, makes the members differ
        everything = np.arange(n_pairs, dtype=np.int64)
        return [{"train": everything, "val": np.zeros(0, np.int64)} for _ in seeds]
    if mode in ("bootstrap", "linear_heads", "shared_trunk"):
        return [dict(zip(("train", "val"), bootstrap_split(n_pairs, s, pp))) for s in seeds]
    if mode == "disjoint":
        return _disjoint_splits(n_pairs, seeds, seed, val_fraction, pp)
    return [dict(zip(("train", "val"), split_pairs(n_pairs, val_fraction, seed=s, prompt_ids=pp))) for s in seeds]


def _mlp_members(X, pairs, splits, seeds, proto, mode, warm, seed, val_fraction, subsets):
    """MLP members trained together (train_stack); with feature subsets each member's first layer reads only its
    own dimensions (a masked init and a masked gradient). Returns (members, WARM model or None, info)."""
    hidden = tuple(int(h) for h in proto.hidden)
    d = X.shape[1]
    inits = ([init_params(d, hidden, seed)] * len(seeds) if warm else [init_params(d, hidden, s) for s in seeds])
    mask = None
    if subsets is not None:
        inits = [_masked_init(init, sub) for init, sub in zip(inits, subsets)]
        mask = np.zeros((len(seeds), d), bool)
        mask[np.repeat(np.arange(len(seeds)), [len(s) for s in subsets]), np.concatenate(subsets)] = True
    data = [MemberData(pairs[s["train"]], pairs[s["val"]], sd) for s, sd in zip(splits, seeds)]
    res = train_stack(X, data, inits, **proto.train_kwargs(), input_mask=mask)
    members = []
    for j, (s, sd) in enumerate(zip(splits, seeds)):
        m = MLPReward(**{**proto.get_params(), "val_fraction": val_fraction, "random_state": sd})
        m._set_result([p[j] for p in res.params], res, j, s["train"], s["val"])
        members.append(m)
    warm_model = None
    if warm and mode in WARM_MODES:
        warm_model = MLPReward.from_params([p.mean(0) for p in res.params],
                                           **{**proto.get_params(), "random_state": int(seed)})
    info = dict(dtype=res.dtype, train_seconds=res.seconds, matmul_flops=res.flops, best_epoch=res.best_epoch,
                n_epochs=res.n_epochs, skipped_steps=res.skipped_steps, warm_init=bool(warm))
    return members, warm_model, info


def _sequential_members(X, pairs, splits, seeds, proto, head: str, subsets) -> list:
    """Linear / LightGBM members fitted one after another; a linear member of mode features is fitted on its own
    dimensions and its coefficients scattered into a zero d-vector."""
    members = []
    with step_progress(len(seeds), f"{head} members", "members") as bar:
        for j, (s, sd) in enumerate(zip(splits, seeds)):
            sub = None if subsets is None else subsets[j]
            m = HEADS[head](**{**proto.get_params(), "random_state": sd})
            m.fit(X if sub is None else X[:, sub], pairs[s["train"]])
            if sub is not None:
                coef = np.zeros(X.shape[1], np.float32)
                coef[sub] = m.coef_
                m.coef_ = coef
            members.append(m)
            bar.advance()
    return members
