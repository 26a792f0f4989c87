"""Shared test setup: one torch thread (CI has 2 cores) and offscreen MuJoCo rendering."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

torch.set_num_threads(1)
