"""Scripted maze expert (D4RL maze2d recipe): grid waypoints toward the goal cell tracked by a PD controller.

From the cell the point is in, the waypoint is the centre of the neighbouring cell one step closer to the
goal cell (BFS over free cells, the fixed point of grid Q-iteration with unit step costs); inside the goal
cell it is the goal itself. The action is ``clip(kp (waypoint - pos) - kd vel, -1, 1)`` with kp 10, kd 1,
plus optional N(0, noise^2) action noise before clipping. Two adjacent cells form a convex rectangle, so the
straight line to the next cell centre never crosses a wall.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffctl.envs.maze import MazeLayout, maze_layout
from diffctl.envs.tasks import get_task


class WaypointController:
    """Vectorized waypoint + PD controller: ``controller(pos, vel, goal) -> actions``, all (N, 2)."""

    def __init__(self, layout: MazeLayout, kp: float = 10.0, kd: float = 1.0) -> None:
        self.layout = layout
        self.kp = float(kp)
        self.kd = float(kd)
        self._next_xy = layout.cell_to_xy(layout.next_cell_table)

    def waypoints(self, pos: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Next waypoint (N, 2) for points ``pos`` heading to ``goal``."""
        lay = self.layout
        cell = lay.xy_to_cell(pos)
        goal_cell = lay.xy_to_cell(goal)
        g = goal_cell[:, 0] * lay.cols + goal_cell[:, 1]
        wp = self._next_xy[g, cell[:, 0], cell[:, 1]]
        at_goal = np.all(cell == goal_cell, axis=-1)
        return np.where(at_goal[:, None], goal, wp)

    def __call__(self, pos: np.ndarray, vel: np.ndarray, goal: np.ndarray) -> np.ndarray:
        pos = np.atleast_2d(np.asarray(pos, dtype=np.float64))
        vel = np.atleast_2d(np.asarray(vel, dtype=np.float64))
        goal = np.atleast_2d(np.asarray(goal, dtype=np.float64))
        wp = self.waypoints(pos, goal)
        return np.clip(self.kp * (wp - pos) - self.kd * vel, -1.0, 1.0)


class MazeExpertAgent:
    """The maze expert as an agent (``reset`` / ``act``) on flat maze observations ``[x, y, vx, vy, gx, gy]``.

    ``noise`` is the action-noise std (0 = deterministic). Its random stream is drawn in ``reset`` from
    numpy's global generator, which ``evaluate`` seeds per episode, or fixed with ``seed``.
    """

    def __init__(
        self, task: str = "maze2d-umaze", noise: float = 0.0, kp: float = 10.0, kd: float = 1.0
    ) -> None:
        spec = get_task(task)
        if not spec.is_maze:
            raise ValueError(f"MazeExpertAgent needs a maze task, got {task!r}")
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.task = spec.name
        self.noise = float(noise)
        self.kp = float(kp)
        self.kd = float(kd)
        self._controller: WaypointController | None = None
        self._rng = np.random.default_rng(0)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_controller": None}

    def seed(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        if self._controller is None:
            self._controller = WaypointController(maze_layout(self.task), self.kp, self.kd)
        self._rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))

    def act(self, obs: Any) -> np.ndarray:
        if self._controller is None:
            self._controller = WaypointController(maze_layout(self.task), self.kp, self.kd)
        o = np.asarray(obs, dtype=np.float64).reshape(-1)
        if o.shape != (6,) or not np.all(np.isfinite(o)):
            raise ValueError(f"maze observation must be 6 finite numbers [x, y, vx, vy, gx, gy], got {o}")
        action = self._controller(o[None, :2], o[None, 2:4], o[None, 4:6])[0]
        if self.noise > 0:
            action = np.clip(action + self._rng.normal(0.0, self.noise, size=2), -1.0, 1.0)
        return action.astype(np.float32)
