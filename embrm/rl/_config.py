"""What one RL run is, as values: the policy, the algorithm and its settings (checked once, here).

    RLConfig(algo="grpo", policy="pool", steps=500, group=16, lr=0.05, kl=0.0)

Policies (embrm.rl._policies): ``pool`` a softmax per prompt over its candidate pool (a logit per candidate),
``linear`` a softmax over the pool with logits phi(y)^T theta shared by all prompts (trained on half of the RL
prompts, its curves measured on the other half), ``gaussian`` a normal distribution in the embedding space per
prompt whose samples are NEW candidates (generated datasets only: their gold is known for any embedding).

Algorithms (embrm.rl._train): ``grpo`` group-relative advantages (r - mean of the group, / its std when
``std_norm``), ``rloo`` leave-one-out baseline, ``ppo`` a per-prompt running-mean baseline (no value network) with
``epochs`` clipped updates per batch, ``reinforce`` the raw reward. All use the clipped ratio (inactive with one
update per batch). KL to the reference: ``kl_mode = "reward"`` subtracts kl * (log pi - log pi_ref) from each
sample's reward (the PPO-RLHF penalty), ``"loss"`` adds kl * KL(pi || pi_ref) to the loss, computed exactly (over the
pool, or in closed form for the Gaussian). Either way, without std normalisation, the optimum of the objective
E[r] - kl * KL is the tilted policy pi_ref exp(r / kl) / Z (embrm.methods.tilted_policy); GRPO's std normalisation
rescales each prompt's advantages and so, with the KL in the loss, each prompt's effective coefficient.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from embrm.core import SEED, EmbrmError, Integer, Number, check_choice, check_value, shown
from embrm.evaluation import AGGREGATIONS

__all__ = ["ALGORITHMS", "POLICIES", "TRANSFORMS", "KL_MODES", "RLConfig", "RLPlan"]

ALGORITHMS = ("grpo", "rloo", "ppo", "reinforce")
POLICIES = ("pool", "linear", "gaussian")
# Reward transforms (embrm.rl._rewards): none; sigmoid = sigmoid(r - E_ref[r]) per prompt (preference-as-reward
# shaping); cdf = P_ref(r' <= r) per prompt (the calibrated reward of InfAlign, Balashankar et al. 2024)
TRANSFORMS = ("none", "sigmoid", "cdf")
KL_MODES = ("reward", "loss")

# Bounds: a run is (steps x prompts x group) samples; these keep one run within minutes on a CPU.
RULES = {
    "steps": Integer(1, 1_000_000),
    "group": Integer(2, 4096),  # G >= 2: every baseline but REINFORCE's needs two samples of a prompt
    "lr": Number(0, 100, lo_open=True),
    "kl": Number(0, 1e6),
    "clip": Number(0, 10, lo_open=True),
    "epochs": Integer(1, 64, none=True),
    "baseline_decay": Number(0, 1, hi_open=True),
    "length_penalty": Number(-1e6, 1e6),
    "points": Integer(2, 10_000),
    "seed": SEED,
}


@dataclass(frozen=True)
class RLConfig:
    """One RL run's settings (the reward, its aggregation and transform, is chosen by the experiment).

    epochs: policy updates per sampled batch (None: 4 for ppo, 1 otherwise); points: evaluations along the run
    (log-spaced steps, always step 0 and the last); normalize: z-score the reward by the training responses'
    statistics before any transform; length_penalty: minus this times the z-scored log length (text pools only)."""

    algo: str = "grpo"
    policy: str = "pool"
    steps: int = 500
    group: int = 16
    lr: float = 0.05
    kl: float = 0.0
    kl_mode: str = "reward"
    std_norm: bool = True
    clip: float = 0.2
    epochs: int | None = None
    baseline_decay: float = 0.9
    normalize: bool = True
    length_penalty: float = 0.0
    points: int = 40
    seed: int = 0

    def __post_init__(self):
        check_choice("algo", self.algo, ALGORITHMS)
        check_choice("policy", self.policy, POLICIES)
        check_choice("kl_mode", self.kl_mode, KL_MODES)
        for name, rule in RULES.items():
            check_value(name, getattr(self, name), rule, field=name)
        for name in ("std_norm", "normalize"):
            if not isinstance(getattr(self, name), bool):
                raise EmbrmError(f"{name} must be true or false, got {shown(getattr(self, name))}", field=name)

    @property
    def updates(self) -> int:
        """Policy updates per sampled batch."""
        return self.epochs if self.epochs is not None else (4 if self.algo == "ppo" else 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RLConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise EmbrmError(f"unknown RL setting {unknown[0]!r}: use one of {', '.join(sorted(known))}",
                             field=unknown[0])
        return cls(**d)


@dataclass(frozen=True)
class RLPlan:
    """A set of RL runs on every fitted reward of a study (its ``[rl]`` table): ``config`` for each of ``policies``
    and each (aggregation, transform, KL coefficient); aggregations None: the study's.

        [rl]
        algo = "grpo"                  # and every other RLConfig key but kl / policy
        policies = ["pool", "gaussian"]  # gaussian: generated datasets only (skipped on others, said in the report)
        kl = [0.0, 0.1]                # a number or a list: one run per coefficient
        transforms = ["none", "cdf"]
        aggregations = ["mean", "min", "uwo"]
        [rl.gaussian]                  # optional, per policy: settings that differ for it (e.g. its own lr)
        lr = 0.05
    """

    config: RLConfig = RLConfig()
    policies: tuple = ("pool",)
    transforms: tuple = ("none",)
    kls: tuple = (0.0,)
    aggregations: tuple | None = None
    overrides: tuple = ()  # (policy, ((key, value), ...)) pairs: a policy's own settings

    def config_of(self, policy: str) -> RLConfig:
        """The run settings of one policy (its overrides applied)."""
        return replace(self.config, policy=policy, **dict(dict(self.overrides).get(policy, ())))

    def __post_init__(self):
        for name, values, allowed in (("policies", self.policies, POLICIES), ("transforms", self.transforms,
                                                                                TRANSFORMS)):
            if not values:
                raise EmbrmError(f"{name} is empty: give at least one of {', '.join(allowed)}", field=name)
            for v in values:
                check_choice(name, v, allowed)
            if len(set(values)) != len(values):
                raise EmbrmError(f"{name} lists a value twice: {', '.join(values)}", field=name)
        if not self.kls or len(set(self.kls)) != len(self.kls):
            raise EmbrmError(f"kl must give distinct coefficients, got {list(self.kls)}", field="kl")
        for k in self.kls:
            check_value("kl", k, RULES["kl"])
        for policy, _ in self.overrides:
            check_choice("[rl] policy table", policy, POLICIES)
            self.config_of(policy)
        if self.aggregations is not None and not self.aggregations:
            raise EmbrmError("aggregations is empty: leave it out for the study's", field="aggregations")
        for a in self.aggregations or ():
            check_choice("aggregations", a, (*AGGREGATIONS, "conformal", "warm"))

    @classmethod
    def from_dict(cls, doc: dict) -> RLPlan:
        """From a study's [rl] table (unknown keys refused, values checked by RLConfig)."""
        doc = dict(doc)
        allowed = ({f.name for f in fields(RLConfig)} - {"policy"}) | {"policies", "transforms", "aggregations"}
        tables = {k: doc.pop(k) for k in [k for k, v in doc.items() if isinstance(v, dict)]}
        unknown = sorted(set(doc) - allowed) + sorted(set(tables) - set(POLICIES))
        if unknown:
            hint = " (a list: policies = [...])" if unknown[0] == "policy" else ""
            raise EmbrmError(f"unknown key {unknown[0]!r}{hint}: [rl] takes {', '.join(sorted(allowed))}",
                             field=unknown[0])
        lists = {"policies": ("pool",), "transforms": ("none",), "aggregations": None}
        plan = {k: tuple(doc.pop(k)) if isinstance(doc.get(k), list) else doc.pop(k, default)
                for k, default in lists.items()}
        kl = doc.pop("kl", 0.0)
        kls = tuple(kl) if isinstance(kl, list) else (kl,)
        config = RLConfig.from_dict({**doc, "kl": kls[0] if kls else 0.0})
        for policy, table in tables.items():
            bad = sorted(set(table) - (allowed - {"policies", "transforms", "aggregations", "kl"}))
            if bad:
                raise EmbrmError(f"[rl.{policy}]: unknown key {bad[0]!r}: a policy's table takes run settings "
                                 f"(lr, steps, group, ...)", field=bad[0])
        overrides = tuple((p, tuple(sorted(t.items()))) for p, t in tables.items())
        return cls(config, kls=kls, overrides=overrides, **plan)

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.config.to_dict().items() if k not in ("kl", "policy")}
        return d | {"policies": list(self.policies), "transforms": list(self.transforms), "kl": list(self.kls),
                    "aggregations": None if self.aggregations is None else list(self.aggregations)} | {
                    p: dict(t) for p, t in self.overrides}
