"""The datasets the generators can write: maze2d and Fetch (scripted experts) and locomotion (SAC, D4RL
recipe)."""

from __future__ import annotations

MAZE_DATASETS = ("maze2d-umaze", "maze2d-medium", "maze2d-large")
LOCOMOTION_TASKS = ("hopper", "halfcheetah", "walker2d")
LOCOMOTION_KINDS = ("medium", "medium-replay", "expert", "medium-expert")
LOCOMOTION_DATASETS = tuple(f"{t}-{k}" for t in LOCOMOTION_TASKS for k in LOCOMOTION_KINDS)
FETCH_TASKS = ("fetch-reach", "fetch-push", "fetch-pick-place")
FETCH_DATASETS = FETCH_TASKS + tuple(f"{t}-image" for t in FETCH_TASKS)
DATASETS = MAZE_DATASETS + LOCOMOTION_DATASETS + FETCH_DATASETS
