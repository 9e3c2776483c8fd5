"""What an experiment is, as values: the learner, the annotator, the ensemble size, the split, the aggregations.

One Protocol describes one fit → evaluate run; `embrm fit`, `embrm bon-sim`, a study job, the methods and the
notebooks all build one and hand it to embrm.pipeline._steps. Its defaults ARE the default study's (1,000 simulated
BT(beta = 10) pairs on the training prompts, 20 % of prompts held out, K = 5 as Coste et al.), so every entry point
gives the same answer for the same settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from embrm.core import SEED, EmbrmError, Integer, Number, check_choice, check_params, check_value, shown
from embrm.data import Dataset
from embrm.evaluation import AGGREGATION_RULES, AGGREGATIONS
from embrm.rewards import DEFAULT_FEATURE_FRACTION, FEATURE_FRACTION, FEATURE_HEADS, MODES, K
from embrm.rewards.heads import HEADS as HEAD_CLASSES
from embrm.rewards.heads import ODIN_PARAMS

HEADS = tuple(HEAD_CLASSES)  # the names of the heads embrm.rewards.heads registers
# How a learner controls for response length (see rewards/_length.py, data/_augment.py, rewards/heads/_odin.py):
#   none            the reward as trained
#   posthoc         each member's within-prompt regression on length (training responses) subtracted
#   posthoc_global  the same with one global regression (the prompt's mean length left in)
#   odin            a quality head and a length head trained together (Chen et al. 2024); the quality head scores
#   rrm             training pairs augmented with other prompts' answers as losers and ties (Liu et al. 2024)
LENGTH_CONTROLS = ("none", "posthoc", "posthoc_global", "odin", "rrm")
DEFAULT_AGGREGATIONS = ("mean", "min", "median", "uwo", "lcb", "conformal", "single")
# Aggregations calibrated on held-out gold (not a function of the member scores alone: embrm.pipeline._steps.proxies)
#   conformal   split-conformal lower bound with Protocol.coverage (embrm.evaluation._conformal)
CALIBRATED = ("conformal",)
LABEL_SOURCES = ("auto", "human", "simulated")
# The gold a pool's length-controlled Best-of-n (pool-lc) is judged by (embrm.rewards):
#   alpacaeval  AlpacaEval 2's length-controlled GLM, length term removed (alpacaeval_controlled_gold)
#   loglinear   gold ~ prompt + answer source + one slope x log(1 + characters), slope removed (controlled_gold)
LC_GOLDS = ("alpacaeval", "loglinear")

# The bounds of an experiment's values: every entry point (`embrm fit`, `embrm bon-sim`, a study job, the Python API)
# builds a Protocol, so these are checked once here. Upper bounds refuse what cannot finish on a CPU.
RULES = {
    "k": K,  # see embrm.rewards._ensemble
    "seed": SEED,
    "test_size": Number(0, 1, lo_open=True, hi_open=True),  # both sides need prompts
    **AGGREGATION_RULES,  # lam, lcb_beta, temperature: see embrm.evaluation._aggregate
    "coverage": Number(0, 1, lo_open=True, hi_open=True),  # the conformal bound's target coverage
    "n_max": Integer(1, 1_000_000, none=True),  # Best-of-n's largest n (<= the pool: checked with the data)
    # 1,000x the default 1,000 labels (more than any of the papers reproduced); pairs and their difference vectors
    # must fit in memory: 10^6 pairs x 384 dims x 2 (mirrored) float32 is 3 GB for the linear head already
    "n_pairs": Integer(20, 1_000_000),  # fewer than 20 cannot be split for early stopping
    "beta": Number(0, lo_open=True),  # BT annotator: 0 would be coin flips, < 0 prefers the worse response
    "flip": Number(0, 0.5, hi_open=True),  # 0.5 is coin flips, above it the labels invert
    "pairs_per_prompt": Integer(1, 1_000_000),
}
SHOWN_AS = {"k": "k (ensemble size)", "n_max": "n_max (largest n of Best-of-n)"}
N_GRIDS = ("all", "log")  # every n, or a log-spaced grid (evaluation.log_grid); None: "all" up to ALL_N_LIMIT
MAX_GRID = 10_000  # values of n in a user grid: the curves keep (aggregations x grid) numbers per pool


def _check(obj, names: tuple[str, ...]) -> None:
    for name in names:
        check_value(SHOWN_AS.get(name, name), getattr(obj, name), RULES[name], field=name)


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise EmbrmError(f"{name} must be true or false, got {shown(value)}", field=name)


def _frozen_params(params) -> tuple:
    """(key, value) pairs (or a dict) as sorted pairs with lists as tuples: hashable, one spelling."""
    items = params.items() if isinstance(params, dict) else params
    try:
        return tuple(sorted(((str(k), tuple(v) if isinstance(v, list) else v) for k, v in items), key=lambda kv: kv[0]))
    except (TypeError, ValueError):
        raise EmbrmError(f"learner params must be (key, value) pairs or a dict, got {shown(params)}") from None


@dataclass(frozen=True)
class Learner:
    """A reward head, an ensemble mode and the head's parameters (sorted (key, value) pairs: hashable).

    The parameters are checked with the head's own rules (embrm.rewards.heads: e.g. hidden widths, num_leaves >= 2);
    random_state is not one of them: the Protocol's seed derives every member's."""

    head: str = "linear"
    mode: str | None = None  # None: "posterior" for the laplace head (its only mode), else "independent"
    params: tuple = ()
    length_control: str = "none"
    k: int | None = None  # this learner's ensemble size, when it differs from the Protocol's (a study's learners)

    def __post_init__(self):
        check_choice("head", self.head, HEADS)
        if self.mode is None:
            object.__setattr__(self, "mode", "posterior" if self.head == "laplace" else "independent")
        if self.k is not None:
            check_value(SHOWN_AS["k"], self.k, RULES["k"], field="k")
        check_choice("mode", self.mode, MODES)
        check_choice("length_control", self.length_control, LENGTH_CONTROLS)
        if self.length_control == "odin" and (self.head not in ("linear", "mlp")
                                              or self.mode not in ("independent", "bootstrap")):
            raise EmbrmError("length_control odin trains a quality and a length head: it needs head = linear or mlp "
                             "with mode = independent or bootstrap", field="length_control")
        if self.mode == "shared_trunk" and self.head != "mlp":
            raise EmbrmError("mode shared_trunk needs head = mlp (an MLP trunk with K linear heads)", field="mode")
        if self.mode == "linear_heads" and self.head != "linear":
            raise EmbrmError("mode linear_heads needs head = linear (K linear heads on the frozen embeddings)",
                             field="mode")
        if (self.mode == "posterior") != (self.head == "laplace"):
            raise EmbrmError("head laplace draws its members from its posterior: it takes mode = posterior, and "
                             "mode posterior needs head = laplace", field="mode")
        if self.mode == "features" and self.head not in FEATURE_HEADS:
            raise EmbrmError(f"mode features needs head = {' or '.join(FEATURE_HEADS)} (each member zero outside its "
                             f"random subset of the embedding dimensions), not {self.head}", field="mode")
        object.__setattr__(self, "params", _frozen_params(self.params))
        rules = {k: r for k, r in HEAD_CLASSES[self.head].PARAMS.items() if k != "random_state"}
        if self.length_control == "odin":
            rules.update(ODIN_PARAMS)
        if self.mode == "features":
            rules["feature_fraction"] = FEATURE_FRACTION
        elif "feature_fraction" in dict(self.params):
            raise EmbrmError(f"feature_fraction is the share of dimensions each member sees in mode features: set "
                             f"mode = features or drop it (mode is {self.mode})", field="feature_fraction")
        check_params(dict(self.params), rules, f"head {self.head}")

    @property
    def name(self) -> str:
        suffix = {"independent": "", "bootstrap": "-boot", "shared_trunk": "-trunk", "linear_heads": "-heads",
                  "posterior": "", "features": "-feat", "disjoint": "-disjoint"}[self.mode]
        fraction = dict(self.params).get("feature_fraction", DEFAULT_FEATURE_FRACTION)
        if fraction != DEFAULT_FEATURE_FRACTION:  # "-feat0.25": learners of other fractions keep apart in a study
            suffix += f"{fraction:g}"
        control = "" if self.length_control == "none" else "." + self.length_control.replace("_", "-")
        # Sun et al.'s classification (order-consistency) objective, where asked for by name: ".clf"
        objective = ".clf" if dict(self.params).get("objective") == "classification" else ""
        return self.head + suffix + objective + control + ("" if self.k is None else f".k{self.k}")

    def head_params(self) -> dict:
        """The head's parameters (ODIN's loss weights are odin_params)."""
        return {k: v for k, v in self.params if k not in ODIN_PARAMS}

    def odin_params(self) -> dict:
        return {k: v for k, v in self.params if k in ODIN_PARAMS}

    def with_params(self, **params) -> "Learner":
        return replace(self, params={**dict(self.params), **{k: v for k, v in params.items() if v is not None}})

    def to_dict(self) -> dict:
        control = {} if self.length_control == "none" else {"length_control": self.length_control}
        size = {} if self.k is None else {"k": self.k}
        return {"head": self.head, "mode": self.mode, **control, **size, **dict(self.params)}


# The default study's learners; `embrm fit --head X` starts from DEFAULT_LEARNERS[X].
DEFAULT_LEARNERS = {
    "linear": Learner("linear"),
    "mlp": Learner("mlp", params=(("hidden", (256, 128)),)),
    # LightGBM costs ~30 ms a tree at 384 features on one core: sized so a study runs in minutes on 2 cores
    "lgbm": Learner("lgbm", params=(("colsample_bytree", 0.5), ("n_estimators", 40), ("num_leaves", 15),
                                    ("objective", "bt"))),
    "laplace": Learner("laplace"),  # Bayesian linear BT: K posterior draws as members
}


@dataclass(frozen=True)
class LabelConfig:
    """Where training preferences come from. source: human (the dataset's pairs) | simulated (from gold) | auto.

    beta: BT annotator, P(a > b) = sigmoid(beta (g_a - g_b) / std(gold)); flip: Coste et al.'s annotator that
    flips the better response with this probability (beta is ignored when flip is given).
    Sun et al.'s annotator (pair_annotate): annotation quality q > 0 is beta = q, their perfect annotator
    (quality -1) is flip = 0, and pairs_per_prompt = k draws k pairs on each of n_pairs / k random prompts."""

    source: str = "auto"
    beta: float | None = 10.0
    flip: float | None = None
    n_pairs: int = 1000
    within_prompt: bool = True
    pairs_per_prompt: int | None = None

    def __post_init__(self):
        check_choice("labels source (--labels)", self.source, LABEL_SOURCES, field="source")
        _check(self, ("n_pairs",))
        for name in ("beta", "flip"):  # None: not this annotator
            if getattr(self, name) is not None:
                _check(self, (name,))
        _check_bool("within_prompt", self.within_prompt)
        if self.pairs_per_prompt is not None:
            _check(self, ("pairs_per_prompt",))
            if not self.within_prompt:
                raise EmbrmError("pairs_per_prompt draws pairs within prompts: it cannot be combined with "
                                 "across-prompt pairs (within_prompt = false, --across-prompts)",
                                 field="pairs_per_prompt")

    @property
    def name(self) -> str:
        if self.source == "human":
            return "human"
        per = "" if self.pairs_per_prompt is None else f".ppp{self.pairs_per_prompt}"
        return (f"flip{self.flip:g}" if self.flip is not None else f"bt{self.beta:g}") + per

    def resolved(self, ds: Dataset) -> "LabelConfig":
        source = self.source
        if source == "auto":
            source = "human" if ds.pairs is not None else "simulated"
        if source == "human" and ds.pairs is None:
            raise EmbrmError(f"{ds.source}: --labels human needs a pairwise dataset (chosen/rejected columns)")
        if source == "simulated" and not ds.has_gold:
            raise EmbrmError(f"{ds.source}: all gold scores are null: simulated labels need a gold column "
                             f"(--gold-col), or use --labels human on a pairwise file")
        return LabelConfig(source, None if self.flip is not None else self.beta, self.flip, self.n_pairs,
                           self.within_prompt, self.pairs_per_prompt)


@dataclass(frozen=True)
class Protocol:
    """One fit → evaluate experiment. with_excluded (default on): where the dataset excludes responses (e.g. hacking
    probes; they never label or train), evaluate a second pool that keeps them and report how often each reward
    picks one."""

    learner: Learner = field(default_factory=Learner)
    labels: LabelConfig = field(default_factory=LabelConfig)
    k: int = 5
    test_size: float = 0.2
    seed: int = 0
    aggregations: tuple = DEFAULT_AGGREGATIONS
    lam: float = 0.5  # UWO: mean - lam * variance
    lcb_beta: float = 1.0  # LCB: mean - beta * std
    temperature: float = 1.0  # soft-min
    coverage: float = 0.9  # conformal: the lower bound holds for this share of held-out responses
    member: int = 0  # the member 'single' reports
    with_excluded: bool = True
    n_max: int | None = None
    n_grid: str | tuple | None = None  # the n of Best-of-n: None (automatic), "all", "log" or the values themselves
    sun_metrics: bool = False  # also Sun et al.'s numbers (embrm.evaluation.sun_metrics) beside the exact ones
    length_control_gold: str = "alpacaeval"  # the gold of pool-lc: one of LC_GOLDS

    def __post_init__(self):
        if not isinstance(self.learner, Learner) or not isinstance(self.labels, LabelConfig):
            raise EmbrmError("Protocol(learner=Learner(...), labels=LabelConfig(...)): got "
                             f"{type(self.learner).__name__} and {type(self.labels).__name__}")
        if self.learner.k is not None:  # the learner's own ensemble size wins (one K per experiment)
            object.__setattr__(self, "k", self.learner.k)
        _check(self, ("k", "seed", "test_size", "lam", "lcb_beta", "temperature", "coverage", "n_max"))
        _check_aggregations(self.aggregations)
        object.__setattr__(self, "aggregations", tuple(self.aggregations))
        check_value("member", self.member, Integer(0, self.k - 1))  # the member 'single' reports: one of the K
        _check_bool("with_excluded", self.with_excluded)
        _check_bool("sun_metrics", self.sun_metrics)
        check_choice("length_control_gold", self.length_control_gold, LC_GOLDS)
        object.__setattr__(self, "n_grid", checked_n_grid(self.n_grid))

    def aggregation_params(self) -> dict:
        return {"lam": self.lam, "beta": self.lcb_beta, "temperature": self.temperature, "member": self.member}

    @property
    def member_fit(self) -> "Protocol":
        """The protocol whose members this one's are: a post-hoc length control corrects fitted members, so the
        protocols that differ only in it share one fit (pipeline.run_experiments)."""
        if not self.learner.length_control.startswith("posthoc"):
            return self
        return replace(self, learner=replace(self.learner, length_control="none"))

    def to_dict(self) -> dict:
        """JSON-able; options added since the first release are left out while they hold their defaults, so saved
        models' manifests and study jobs' digests stay what they were."""
        d = asdict(self)
        d["learner"] = self.learner.to_dict()
        if not self.sun_metrics:
            del d["sun_metrics"]
        if self.length_control_gold == "loglinear":  # what every protocol stored before it was an option
            del d["length_control_gold"]
        if self.labels.pairs_per_prompt is None:
            del d["labels"]["pairs_per_prompt"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Protocol":
        """The Protocol of to_dict() (e.g. a saved model's manifest); a damaged one is an EmbrmError."""
        try:
            d = dict(d)
            learner = dict(d.pop("learner"))
            head, mode = learner.pop("head"), learner.pop("mode")
            control, size = learner.pop("length_control", "none"), learner.pop("k", None)
            d["learner"] = Learner(head, mode, learner, control, size)
            d["labels"] = LabelConfig(**d["labels"])
            d.setdefault("length_control_gold", "loglinear")  # stored before the AlpacaEval-style gold
            return cls(**d)
        except (KeyError, TypeError, ValueError) as e:
            raise EmbrmError(f"a saved protocol is damaged ({type(e).__name__}: {e}): re-fit the model") from None


def checked_n_grid(grid) -> str | tuple | None:
    """None, "all", "log", or the values of n as a sorted tuple of distinct integers >= 1 (an n beyond a prompt's
    pool is refused with the data, by embrm.evaluation._bon)."""
    if grid is None or grid in N_GRIDS:
        return grid
    if isinstance(grid, str) or not isinstance(grid, (list, tuple)) or not 1 <= len(grid) <= MAX_GRID:
        raise EmbrmError(f"n_grid must be {' or '.join(repr(g) for g in N_GRIDS)} or a list of 1 to {MAX_GRID:,} "
                         f"integers n >= 1, got {shown(grid)}")
    for n in grid:
        check_value("n_grid value", n, Integer(1, 1_000_000), field="n_grid")
    return tuple(sorted({int(n) for n in grid}))


def _check_aggregations(aggregations) -> None:
    """A non-empty list of distinct names from embrm.evaluation._aggregate (and the calibrated ones)."""
    allowed = AGGREGATIONS + CALIBRATED
    if isinstance(aggregations, str) or not isinstance(aggregations, (list, tuple)) or not aggregations:
        raise EmbrmError(f"aggregations must be a non-empty list of {', '.join(allowed)}, "
                         f"got {shown(aggregations)}")
    for a in aggregations:
        check_choice("aggregation", a, allowed)
    if len(set(aggregations)) < len(aggregations):
        raise EmbrmError(f"aggregations {shown(list(aggregations))} name one twice: list each once")
