"""Offline RL agents: Diffusion-QL, IDQL and EDP on diffusion actors, TD3+BC (optionally with value expansion
through a world model), their shared Q-learning parts (twin critics, target networks, IQL expectile value)
and a single-step transition sampler."""

from diffctl.policies.offline_rl.actor import DiffusionActor, dql_vp_alphas_cumprod
from diffctl.policies.offline_rl.common import OfflineRLAgent
from diffctl.policies.offline_rl.critics import (
    TwinQ,
    ValueNet,
    expectile_loss,
    polyak_update,
    returns_reward_scale,
    td_target,
)
from diffctl.policies.offline_rl.diffusion_ql import DiffusionQL
from diffctl.policies.offline_rl.edp import EDP
from diffctl.policies.offline_rl.idql import IDQL
from diffctl.policies.offline_rl.td3bc import TD3BC, TD3BCConfig
from diffctl.policies.offline_rl.transition_agent import TransitionAgent
from diffctl.policies.offline_rl.transitions import TransitionDataset

__all__ = [
    "EDP",
    "IDQL",
    "TD3BC",
    "DiffusionActor",
    "DiffusionQL",
    "OfflineRLAgent",
    "TD3BCConfig",
    "TransitionAgent",
    "TransitionDataset",
    "TwinQ",
    "ValueNet",
    "dql_vp_alphas_cumprod",
    "expectile_loss",
    "polyak_update",
    "returns_reward_scale",
    "td_target",
]
