"""Gymnasium wrappers giving every task a flat float32 observation and actions in [-1, 1].

Maze tasks wrap gymnasium-robotics PointMaze v3 with D4RL's evaluation protocol: the goal stays fixed for
the whole episode, the episode never terminates early and is truncated at the D4RL limit, and the reward is
1 for every step that ends within 0.5 of the goal (D4RL maze2d's sparse reward). ``info["success"]`` says
whether the goal has been reached so far in the episode.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from diffctl.envs.tasks import TaskSpec, register_robotics_envs

RENDER_SIZE = 256


def _disable_shadows(model: Any) -> None:
    model.vis.quality.shadowsize = 0
    model.light_castshadow[:] = 0


class MazeTask(gym.Wrapper):
    """PointMaze with a flat observation ``[x, y, vx, vy, goal_x, goal_y]`` and D4RL's sparse reward."""

    def __init__(self, env: gym.Env, spec: TaskSpec) -> None:
        super().__init__(env)
        self.spec_ = spec
        self.threshold = float(spec.success_threshold or 0.5)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(6,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._reached = False
        self._top_down = False
        _disable_shadows(env.unwrapped.model)

    @property
    def goal(self) -> np.ndarray:
        return np.asarray(self.env.unwrapped.goal, dtype=np.float64).copy()

    @property
    def position(self) -> np.ndarray:
        return np.asarray(self.env.unwrapped.data.qpos[:2], dtype=np.float64).copy()

    def _flat(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([obs["observation"], obs["desired_goal"]]).astype(np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._reached = False
        info = {**info, "goal": obs["desired_goal"].copy(), "success": False}
        return self._flat(obs), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        a = np.asarray(action, dtype=np.float64).reshape(2)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"maze action must be 2 finite numbers, got {a}")
        obs, _, _, truncated, info = self.env.step(np.clip(a, -1.0, 1.0))
        dist = float(np.linalg.norm(obs["achieved_goal"] - obs["desired_goal"]))
        reward = 1.0 if dist <= self.threshold else 0.0
        self._reached = self._reached or reward > 0
        info = {**info, "goal": obs["desired_goal"].copy(), "distance": dist, "success": self._reached}
        return self._flat(obs), reward, False, truncated, info

    def render(self) -> Any:
        renderer = self.env.unwrapped.point_env.mujoco_renderer
        if not self._top_down and self.env.unwrapped.render_mode == "rgb_array":
            viewer = renderer._get_viewer("rgb_array")
            viewer.cam.elevation = -90.0
            viewer.cam.azimuth = 90.0
            viewer.cam.lookat[:] = (0.0, 0.0, 0.0)
            self._top_down = True
        return self.env.render()


class FloatObservation(gym.ObservationWrapper):
    """Casts a Box observation to float32 (gymnasium MuJoCo envs emit float64)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        box = env.observation_space
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=box.shape, dtype=np.float32)

    def observation(self, observation: Any) -> np.ndarray:
        return np.asarray(observation, dtype=np.float32)


def _unit_actions(env: gym.Env) -> gym.Env:
    box = env.action_space
    if np.allclose(box.low, -1.0) and np.allclose(box.high, 1.0):
        return env
    return gym.wrappers.RescaleAction(env, -1.0, 1.0)


def make_maze_env(spec: TaskSpec, render_mode: str | None = None, **kwargs: Any) -> gym.Env:
    register_robotics_envs()
    if render_mode is not None:
        kwargs.setdefault("width", RENDER_SIZE)
        kwargs.setdefault("height", RENDER_SIZE)
    env = gym.make(
        spec.gym_id,
        continuing_task=True,
        reset_target=False,
        max_episode_steps=spec.max_episode_steps,
        render_mode=render_mode,
        **kwargs,
    )
    return MazeTask(env, spec)


def make_locomotion_env(spec: TaskSpec, render_mode: str | None = None, **kwargs: Any) -> gym.Env:
    if render_mode is not None:
        kwargs.setdefault("width", RENDER_SIZE)
        kwargs.setdefault("height", RENDER_SIZE)
    env = gym.make(spec.gym_id, max_episode_steps=spec.max_episode_steps, render_mode=render_mode, **kwargs)
    return FloatObservation(_unit_actions(env))


def make_pusht_env(spec: TaskSpec, render_mode: str | None = None, **kwargs: Any) -> gym.Env:
    import gym_pusht  # noqa: F401

    kwargs.setdefault("obs_type", "state")
    env = gym.make(spec.gym_id, max_episode_steps=spec.max_episode_steps, render_mode=render_mode, **kwargs)
    return FloatObservation(_unit_actions(env))
