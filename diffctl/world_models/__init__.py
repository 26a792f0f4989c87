"""World models behind one ``rollout`` API: the diffusion world model (DWM, H steps per sample) and the
one-step MLP ensemble baseline (MBPO / MOPO)."""

from diffctl.world_models.base import WorldModel
from diffctl.world_models.dwm import DiffusionWorldModel, DWMConfig
from diffctl.world_models.ensemble import MLPEnsembleConfig, MLPEnsembleWorldModel

__all__ = ["DWMConfig", "DiffusionWorldModel", "MLPEnsembleConfig", "MLPEnsembleWorldModel", "WorldModel"]
