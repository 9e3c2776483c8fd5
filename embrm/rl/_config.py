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

from dataclasses import asdict, dataclass, fields

from embrm.core import SEED, EmbrmError, Integer, Number, check_choice, check_value, shown

__all__ = ["ALGORITHMS", "POLICIES", "TRANSFORMS", "KL_MODES", "RLConfig"]

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
