"""D4RL normalized scores: ``100 * (R - random) / (expert - random)`` with D4RL's reference returns.

The reference returns are task facts and live with the tasks in ``diffctl.envs.tasks`` (datasets build on
envs, never the other way round); this module re-exports them under their dataset-side names.
"""

from __future__ import annotations

from diffctl.envs.tasks import REFERENCE_SCORES, normalized_score, reference_task

__all__ = ["REFERENCE_SCORES", "normalized_score", "reference_task"]
