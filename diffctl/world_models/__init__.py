"""World models behind one ``rollout`` API: the diffusion world model (DWM, H steps per sample), the
one-step MLP ensemble baseline (MBPO / MOPO) and the frame world model (DIAMOND: camera frames)."""

from diffctl.world_models.base import WorldModel
from diffctl.world_models.dwm import DiffusionWorldModel, DWMConfig
from diffctl.world_models.ensemble import MLPEnsembleConfig, MLPEnsembleWorldModel
from diffctl.world_models.frames import FrameWorldModel, FrameWorldModelConfig

__all__ = [
    "DWMConfig",
    "DiffusionWorldModel",
    "FrameWorldModel",
    "FrameWorldModelConfig",
    "MLPEnsembleConfig",
    "MLPEnsembleWorldModel",
    "WorldModel",
]
