"""PointMaze geometry and a direct, batched MuJoCo stepper for the maze2d tasks.

``MazeLayout`` maps between maze cells and the gymnasium-robotics world frame (cell size 1, maze centred on
the origin). ``PointMassSim`` steps N independent copies of the exact PointMaze v3 model with
``mujoco.mj_step``, applying the same action and velocity clipping as ``PointEnv.step``, which is about ten
times faster than going through the gymnasium wrappers (dataset generation, expert evaluation).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from diffctl.envs.tasks import TaskSpec, get_task, register_robotics_envs

VELOCITY_LIMIT = 5.0
POSITION_NOISE = 0.25


@dataclass(frozen=True, eq=False)
class MazeLayout:
    """A maze grid (1 = wall) with ``scale``-sized cells centred on the origin, rows going down in y."""

    grid: np.ndarray
    scale: float = 1.0

    @property
    def rows(self) -> int:
        return int(self.grid.shape[0])

    @property
    def cols(self) -> int:
        return int(self.grid.shape[1])

    @cached_property
    def free_cells(self) -> np.ndarray:
        """(K, 2) int array of the (row, col) of every non-wall cell."""
        return np.argwhere(self.grid == 0)

    def cell_to_xy(self, cells: Any) -> np.ndarray:
        """Centre of cells (..., 2) [row, col] in world coordinates (..., 2) [x, y]."""
        rc = np.asarray(cells, dtype=np.float64)
        x = (rc[..., 1] + 0.5) * self.scale - self.cols * self.scale / 2
        y = self.rows * self.scale / 2 - (rc[..., 0] + 0.5) * self.scale
        return np.stack([x, y], axis=-1)

    def xy_to_cell(self, xy: Any) -> np.ndarray:
        """(row, col) int cells containing points (..., 2), clipped to the grid."""
        p = np.asarray(xy, dtype=np.float64)
        row = np.floor((self.rows * self.scale / 2 - p[..., 1]) / self.scale).astype(np.int64)
        col = np.floor((p[..., 0] + self.cols * self.scale / 2) / self.scale).astype(np.int64)
        return np.stack([np.clip(row, 0, self.rows - 1), np.clip(col, 0, self.cols - 1)], axis=-1)

    def is_free(self, cell: Any) -> bool:
        r, c = (int(v) for v in cell)
        return 0 <= r < self.rows and 0 <= c < self.cols and self.grid[r, c] == 0

    def distances_to(self, goal_cell: Any) -> np.ndarray:
        """Shortest path length in cells (4-connected BFS) from every cell to ``goal_cell``; walls are inf."""
        if not self.is_free(goal_cell):
            raise ValueError(
                f"goal cell {tuple(goal_cell)} is a wall or outside the {self.rows}x{self.cols} maze"
            )
        dist = np.full(self.grid.shape, np.inf)
        start = (int(goal_cell[0]), int(goal_cell[1]))
        dist[start] = 0
        queue = deque([start])
        while queue:
            r, c = queue.popleft()
            for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if self.is_free((nr, nc)) and dist[nr, nc] == np.inf:
                    dist[nr, nc] = dist[r, c] + 1
                    queue.append((nr, nc))
        return dist

    @cached_property
    def next_cell_table(self) -> np.ndarray:
        """(rows*cols, rows, cols, 2) int: for goal cell index g and current cell, the neighbour one step
        closer to the goal (the cell itself at the goal or where the goal is unreachable)."""
        table = np.zeros((self.rows * self.cols, self.rows, self.cols, 2), dtype=np.int64)
        rr, cc = np.meshgrid(np.arange(self.rows), np.arange(self.cols), indexing="ij")
        own = np.stack([rr, cc], axis=-1)
        for gr, gc in self.free_cells:
            dist = np.pad(self.distances_to((gr, gc)), 1, constant_values=np.inf)
            best = own.copy()
            best_d = dist[1:-1, 1:-1].copy()
            for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                d = dist[1 + dr : 1 + dr + self.rows, 1 + dc : 1 + dc + self.cols]
                better = d < best_d
                best_d = np.where(better, d, best_d)
                best = np.where(better[..., None], own + np.array([dr, dc]), best)
            table[gr * self.cols + gc] = best
        return table

    def sample_positions(
        self, rng: np.random.Generator, n: int, avoid: np.ndarray | None = None, min_distance: float = 0.5
    ) -> np.ndarray:
        """``n`` points: uniform free cell centres plus uniform noise of +-0.25 cells (gymnasium-robotics
        PointMaze), redrawn where closer than ``min_distance`` to the matching row of ``avoid``."""
        out = np.empty((n, 2))
        todo = np.arange(n)
        for _ in range(1000):
            cells = self.free_cells[rng.integers(0, len(self.free_cells), size=todo.size)]
            noise = rng.uniform(-POSITION_NOISE, POSITION_NOISE, size=(todo.size, 2)) * self.scale
            out[todo] = self.cell_to_xy(cells) + noise
            if avoid is None:
                return out
            todo = todo[np.linalg.norm(out[todo] - avoid[todo], axis=-1) <= min_distance]
            if todo.size == 0:
                return out
        raise ValueError("could not place points away from the given positions; is the maze a single cell?")

    def jitter(self, rng: np.random.Generator, cells: Any) -> np.ndarray:
        """Centres of ``cells`` (n, 2) plus the PointMaze position noise."""
        centres = self.cell_to_xy(np.atleast_2d(cells))
        return centres + rng.uniform(-POSITION_NOISE, POSITION_NOISE, size=centres.shape) * self.scale


def maze_layout(task: str | TaskSpec) -> MazeLayout:
    """The maze grid of a maze2d task, from gymnasium-robotics' maps (reset/goal markers become free)."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if not spec.is_maze or spec.maze_map is None:
        raise ValueError(f"task {spec.name!r} is not a maze task")
    register_robotics_envs()
    from gymnasium_robotics.envs.maze import maps

    raw = getattr(maps, spec.maze_map)
    grid = np.array([[1 if v == 1 else 0 for v in row] for row in raw], dtype=np.int8)
    return MazeLayout(grid=grid, scale=1.0)


def build_model(task: str | TaskSpec) -> Any:
    """The compiled MuJoCo model of a maze task, built by gymnasium-robotics itself (walls, target site)."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    import gymnasium as gym

    register_robotics_envs()
    env = gym.make(spec.gym_id, continuing_task=True, reset_target=False)
    model = env.unwrapped.model
    env.close()
    return model


class PointMassSim:
    """``n`` independent PointMaze point masses stepped with ``mujoco.mj_step`` (no gymnasium layers).

    One step applies ``clip(action, -1, 1)`` as control and clips the velocity to +-5 first, as
    gymnasium-robotics' ``PointEnv.step`` does, so trajectories match ``make_env`` step for step.
    """

    def __init__(self, task: str | TaskSpec, n: int, model: Any = None) -> None:
        import mujoco

        if n < 1:
            raise ValueError(f"PointMassSim needs n >= 1 copies, got {n}")
        self._mujoco = mujoco
        self.model = build_model(task) if model is None else model
        self.datas = [mujoco.MjData(self.model) for _ in range(n)]
        self.pos = np.zeros((n, 2))
        self.vel = np.zeros((n, 2))

    @property
    def n(self) -> int:
        return len(self.datas)

    def set_state(
        self, pos: np.ndarray, vel: np.ndarray | None = None, which: np.ndarray | None = None
    ) -> None:
        """Place copies ``which`` (default all) at ``pos`` with velocity ``vel`` (default 0)."""
        idx = np.arange(self.n) if which is None else np.asarray(which)
        pos = np.asarray(pos, dtype=np.float64).reshape(len(idx), 2)
        vel = np.zeros_like(pos) if vel is None else np.asarray(vel, dtype=np.float64).reshape(len(idx), 2)
        for k, i in enumerate(idx):
            d = self.datas[i]
            self._mujoco.mj_resetData(self.model, d)
            d.qpos[:] = pos[k]
            d.qvel[:] = vel[k]
            self._mujoco.mj_forward(self.model, d)
            self.pos[i] = pos[k]
            self.vel[i] = vel[k]

    def step(self, actions: np.ndarray) -> None:
        """Advance every copy by one control step (``timestep`` 0.01 s)."""
        acts = np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0)
        mj_step = self._mujoco.mj_step
        model = self.model
        for i, d in enumerate(self.datas):
            d.ctrl[:] = acts[i]
            np.clip(d.qvel, -VELOCITY_LIMIT, VELOCITY_LIMIT, out=d.qvel)
            mj_step(model, d)
            self.pos[i] = d.qpos
            self.vel[i] = d.qvel
