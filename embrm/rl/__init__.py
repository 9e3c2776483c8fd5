"""Reinforcement learning in miniature: online policy optimisation (GRPO, RLOO, PPO, REINFORCE) against a fitted
reward over cached embeddings, on a CPU, with the gold of every sample known exactly: where over-optimisation under
RL shows, beside Best-of-n at the same exact KL.

    result = rl_experiment(ds, X, Protocol(...), RLConfig(algo="grpo", steps=500), aggregations=("mean", "min"))
    result.markdown(); result.plot("rl.png")
"""

from embrm.rl._config import ALGORITHMS, KL_MODES, POLICIES, TRANSFORMS, RLConfig, RLPlan
from embrm.rl._experiment import RLResult, RLRun, frame_gold_axes, plot_rl, rl_experiment, run_plan, run_rl
from embrm.rl._policies import GaussianPolicy, PoolPolicy, PoolSet
from embrm.rl._rewards import PromptReward, SampleReward, reference_cdf, transform_rewards
from embrm.rl._train import advantages, eval_steps, train

__all__ = [
    "advantages", "ALGORITHMS", "eval_steps", "frame_gold_axes", "GaussianPolicy", "KL_MODES", "plot_rl", "POLICIES", "PoolPolicy",
    "PoolSet", "PromptReward", "reference_cdf", "rl_experiment", "RLConfig", "RLPlan", "RLResult", "RLRun", "run_plan", "run_rl",
    "SampleReward", "train", "transform_rewards", "TRANSFORMS",
]
