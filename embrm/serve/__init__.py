"""A fitted reward, served to RL trainers: `embrm serve` (OpenRLHF's remote reward protocol and /score over
HTTP, with micro-batching across requests), and reward functions for TRL and verl, in-process or as clients of a
server.

    rm = RewardModel.load("models/mlp", settings=RewardSettings("lcb", lam=1.0))
    rm.rewards(prompts, responses).rewards
    GRPOTrainer(..., reward_funcs=[trl_reward("models/mlp")])
"""

from embrm.serve._app import CONFIG_ENV, ServeConfig, app_from_env, create_app, serve
from embrm.serve._batcher import MicroBatcher, Overloaded
from embrm.serve._functions import (
    REWARD_ENV,
    RemoteRewards,
    reward_source,
    trl_reward,
    verl_compute_score,
    verl_compute_score_batch,
    verl_reward,
)
from embrm.serve._requests import BadRequest, split_query, unwrap_prompt
from embrm.serve._reward import Reference, RewardModel, Rewards, RewardSettings

__all__ = [
    "app_from_env", "BadRequest", "CONFIG_ENV", "create_app", "MicroBatcher", "Overloaded", "Reference",
    "RemoteRewards", "REWARD_ENV", "reward_source", "RewardModel", "Rewards", "RewardSettings", "serve",
    "ServeConfig", "split_query", "trl_reward", "unwrap_prompt", "verl_compute_score", "verl_compute_score_batch",
    "verl_reward",
]
