"""Shared test setup: one torch thread (CI has 2 cores) and offscreen MuJoCo rendering."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import torch

torch.set_num_threads(1)
