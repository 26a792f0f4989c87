"""The datasets the generators can write: maze2d (scripted expert) and locomotion (SAC, D4RL recipe)."""

from __future__ import annotations

MAZE_DATASETS = ("maze2d-umaze", "maze2d-medium", "maze2d-large")
LOCOMOTION_TASKS = ("hopper", "halfcheetah", "walker2d")
LOCOMOTION_KINDS = ("medium", "medium-replay", "expert", "medium-expert")
LOCOMOTION_DATASETS = tuple(f"{t}-{k}" for t in LOCOMOTION_TASKS for k in LOCOMOTION_KINDS)
DATASETS = MAZE_DATASETS + LOCOMOTION_DATASETS
