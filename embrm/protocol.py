"""What an experiment is, as values: the learner, the annotator, the ensemble size, the split, the aggregations.

One Protocol describes one fit → evaluate run; `embrm fit`, `embrm bon-sim`, a study job, the methods and the
notebooks all build one and hand it to embrm.pipeline. Its defaults ARE the default study's (2,000 simulated
BT(beta = 10) pairs on the training prompts, 20 % of prompts held out, K = 10), so every entry point gives the
same answer for the same settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from embrm.aggregate import AGGREGATIONS
from embrm.data import Dataset
from embrm.ensemble import MODES
from embrm.errors import EmbrmError

HEADS = ("linear", "mlp", "lgbm")
DEFAULT_AGGREGATIONS = ("mean", "min", "median", "uwo", "lcb", "single")


@dataclass(frozen=True)
class Learner:
    """A reward head, an ensemble mode and the head's parameters (sorted (key, value) pairs: hashable)."""

    head: str = "linear"
    mode: str = "independent"
    params: tuple = ()

    @property
    def name(self) -> str:
        suffix = {"independent": "", "bootstrap": "-boot", "shared_trunk": "-trunk", "linear_heads": "-heads"}
        return self.head + suffix[self.mode]

    def head_params(self) -> dict:
        return {k: tuple(v) if isinstance(v, list) else v for k, v in self.params}

    def with_params(self, **params) -> "Learner":
        merged = {**dict(self.params), **{k: v for k, v in params.items() if v is not None}}
        return replace(self, params=tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                                 for k, v in merged.items())))

    def to_dict(self) -> dict:
        return {"head": self.head, "mode": self.mode, **self.head_params()}


# The default study's learners; `embrm fit --head X` starts from DEFAULT_LEARNERS[X].
DEFAULT_LEARNERS = {
    "linear": Learner("linear"),
    "mlp": Learner("mlp", params=(("hidden", (256, 128)),)),
    # LightGBM costs ~30 ms a tree at 384 features on one core: sized so a study runs in minutes on 2 cores
    "lgbm": Learner("lgbm", params=(("colsample_bytree", 0.5), ("n_estimators", 40), ("num_leaves", 15),
                                    ("objective", "bt"))),
}


@dataclass(frozen=True)
class LabelConfig:
    """Where training preferences come from. source: human (the dataset's pairs) | simulated (from gold) | auto.

    beta: BT annotator, P(a > b) = sigmoid(beta (g_a - g_b) / std(gold)); flip: Coste et al.'s annotator that
    flips the better response with this probability (beta is ignored when flip is given)."""

    source: str = "auto"
    beta: float | None = 10.0
    flip: float | None = None
    n_pairs: int = 2000
    within_prompt: bool = True

    @property
    def name(self) -> str:
        if self.source == "human":
            return "human"
        return f"flip{self.flip:g}" if self.flip is not None else f"bt{self.beta:g}"

    def resolved(self, ds: Dataset) -> "LabelConfig":
        source = self.source
        if source == "auto":
            source = "human" if ds.pairs is not None else "simulated"
        if source not in ("human", "simulated"):
            raise EmbrmError(f"--labels must be human, simulated or auto (got {self.source!r})")
        if source == "human" and ds.pairs is None:
            raise EmbrmError(f"{ds.source}: --labels human needs a pairwise dataset (chosen/rejected columns)")
        if source == "simulated" and not ds.has_gold:
            raise EmbrmError(f"{ds.source}: all gold scores are null: simulated labels need a gold column "
                             f"(--gold-col), or use --labels human on a pairwise file")
        if self.n_pairs < 20:
            raise EmbrmError(f"n_pairs = {self.n_pairs} is too few: use 20 or more")
        return LabelConfig(source, None if self.flip is not None else self.beta, self.flip, self.n_pairs,
                           self.within_prompt)


@dataclass(frozen=True)
class Protocol:
    """One fit → evaluate experiment. with_excluded: evaluate a second pool that keeps the dataset's excluded
    responses (e.g. hacking probes; they never label or train) and report how often each reward picks one."""

    learner: Learner = field(default_factory=Learner)
    labels: LabelConfig = field(default_factory=LabelConfig)
    k: int = 10
    test_size: float = 0.2
    seed: int = 0
    aggregations: tuple = DEFAULT_AGGREGATIONS
    lam: float = 0.5  # UWO: mean - lam * variance
    lcb_beta: float = 1.0  # LCB: mean - beta * std
    temperature: float = 1.0  # soft-min
    member: int = 0  # the member 'single' reports
    with_excluded: bool = False
    n_max: int | None = None

    def __post_init__(self):
        if self.learner.head not in HEADS:
            raise EmbrmError(f"head {self.learner.head!r}: use one of {', '.join(HEADS)}")
        if self.learner.mode not in MODES:
            raise EmbrmError(f"mode {self.learner.mode!r}: use one of {', '.join(MODES)}")
        if not 0 < self.test_size < 1:
            raise EmbrmError(f"test_size = {self.test_size} must be between 0 and 1")
        if self.k < 1:
            raise EmbrmError(f"k = {self.k} must be >= 1")
        bad = [a for a in self.aggregations if a not in AGGREGATIONS]
        if bad:
            raise EmbrmError(f"aggregation {bad[0]!r}: use any of {', '.join(AGGREGATIONS)}")

    def aggregation_params(self) -> dict:
        return {"lam": self.lam, "beta": self.lcb_beta, "temperature": self.temperature, "member": self.member}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["learner"] = self.learner.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Protocol":
        d = dict(d)
        learner = dict(d.pop("learner"))
        head, mode = learner.pop("head"), learner.pop("mode")
        d["learner"] = Learner(head, mode).with_params(**learner)
        d["labels"] = LabelConfig(**d["labels"])
        d["aggregations"] = tuple(d["aggregations"])
        return cls(**d)
