"""What every agent shares: typed configs, sampler settings, the agent registry and directory format,
seeding and module helpers. Depends on ``kernels`` and ``datasets.normalizer`` only, so policies, planners
and world models depend on it and not on each other."""

from diffctl.core.config import Config
from diffctl.core.modules import eval_mode, param_device
from diffctl.core.persistence import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    agent_config,
    build_agent,
    dataset_identity,
    read_agent_config,
    read_agent_dir,
    write_agent_dir,
)
from diffctl.core.registry import AGENT_CLASSES, agent_class, load, register_agent
from diffctl.core.sampler import SamplerConfig, refuse_fused
from diffctl.core.seeding import SeededSampler

__all__ = [
    "AGENT_CLASSES",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "Config",
    "SamplerConfig",
    "SeededSampler",
    "agent_class",
    "agent_config",
    "build_agent",
    "dataset_identity",
    "eval_mode",
    "load",
    "param_device",
    "read_agent_config",
    "read_agent_dir",
    "refuse_fused",
    "register_agent",
    "write_agent_dir",
]
