"""Planners: sample whole trajectories from the current state and act along the best one.

``Planner`` / ``Plan`` (the interface), ``Diffuser`` (state-action trajectory diffusion with inpainting and
value guidance), ``DecisionDiffuser`` (state diffusion with classifier-free return/goal guidance and inverse
dynamics), ``CoarseToFineDiffuser`` (DiffuserLite's coarse-to-fine plan refinement with tiny per-level
networks), and their parts ``ValueNet``, ``window_returns`` and ``InverseDynamics``.
"""

from diffctl.planners.base import Plan, Planner
from diffctl.planners.coarse_to_fine import CoarseToFineDiffuser
from diffctl.planners.decision_diffuser import DecisionDiffuser
from diffctl.planners.diffuser import Diffuser
from diffctl.planners.inverse_dynamics import InverseDynamics
from diffctl.planners.value import ValueNet, window_returns

__all__ = [
    "CoarseToFineDiffuser",
    "DecisionDiffuser",
    "Diffuser",
    "InverseDynamics",
    "Plan",
    "Planner",
    "ValueNet",
    "window_returns",
]
