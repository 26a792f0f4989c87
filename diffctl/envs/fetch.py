"""Fetch robot-arm tasks (gymnasium-robotics v4, MuJoCo): flat state observations or a camera frame plus
proprioception, and stateless scripted experts.

State tasks emit ``[observation, desired_goal]`` (FetchReach: 10 + 3, FetchPush / FetchPickAndPlace:
25 + 3). Image tasks (``-image``) emit a dict: ``observations`` = ``[proprioception (10), desired_goal (3)]``
(gripper position, finger widths, gripper velocities: no object state) and ``image`` = an ``H x W x 3``
uint8 frame from a fixed camera close to the table, rendered offscreen (``MUJOCO_GL=egl``). Episodes run
50 steps and never terminate; ``info["success"]`` is the step's ``is_success`` (the object, or the
gripper for Reach, within 5 cm of the goal), and an episode succeeds when its last step does.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from diffctl.envs.tasks import TaskSpec, register_robotics_envs

CAMERA = {"lookat": (1.3, 0.75, 0.45), "distance": 0.9, "azimuth": 145.0, "elevation": -45.0}
"""The fixed camera of the image tasks: behind and beside the table, looking down at 45 degrees, so the
gripper, the object and the goal marker are all in view."""
PROPRIO = np.r_[0:3, 9:11, 20:25]
"""Proprioceptive entries of the 25-wide Fetch observation: gripper position, finger widths, gripper
linear velocity, finger velocities (FetchReach's 10-wide observation is exactly these)."""
ACTION_SCALE = 0.05
"""Metres the gripper target moves per unit of action (gymnasium-robotics' Fetch position control)."""


class FetchTask(gym.Wrapper):
    """A Fetch env with diffctl's observation layout (module docstring) and ``info["success"]``."""

    def __init__(self, env: gym.Env, spec: TaskSpec) -> None:
        super().__init__(env)
        self.spec_ = spec
        self.image_size = spec.image_size
        if spec.image_size:
            size = spec.image_size
            self.observation_space = spaces.Dict({
                "observations": spaces.Box(-np.inf, np.inf, (spec.flat_obs_dim,), np.float32),
                "image": spaces.Box(0, 255, (size, size, 3), np.uint8),
            })  # fmt: skip
        else:
            self.observation_space = spaces.Box(-np.inf, np.inf, (spec.flat_obs_dim,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self.raw_obs: dict[str, np.ndarray] = {}

    def _convert(self, obs: dict[str, np.ndarray]) -> Any:
        self.raw_obs = obs
        if not self.image_size:
            return np.concatenate([obs["observation"], obs["desired_goal"]]).astype(np.float32)
        proprio = obs["observation"] if obs["observation"].shape[0] == 10 else obs["observation"][PROPRIO]
        state = np.concatenate([proprio, obs["desired_goal"]]).astype(np.float32)
        return {"observations": state, "image": np.ascontiguousarray(self.env.render())}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        return self._convert(obs), {**info, "goal": obs["desired_goal"].copy(), "success": False}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (4,) or not np.all(np.isfinite(a)):
            raise ValueError(f"Fetch action must be 4 finite numbers (dx, dy, dz, gripper), got {a}")
        obs, reward, _, truncated, info = self.env.step(np.clip(a, -1.0, 1.0))
        success = bool(info.get("is_success", False))
        info = {**info, "goal": obs["desired_goal"].copy(), "success": success}
        return self._convert(obs), float(reward), False, truncated, info


def make_fetch_env(spec: TaskSpec, render_mode: str | None = None, **kwargs: Any) -> gym.Env:
    """The gymnasium-robotics env of a Fetch ``spec``; image tasks always render (``rgb_array``) at their
    image size through ``CAMERA``."""
    if spec.image_size or render_mode is not None:
        os.environ.setdefault("MUJOCO_GL", "egl")
        size = spec.image_size or 256
        kwargs.setdefault("width", size)
        kwargs.setdefault("height", size)
        camera = {k: np.asarray(v, dtype=np.float64) if k == "lookat" else v for k, v in CAMERA.items()}
        kwargs.setdefault("default_camera_config", camera)
        render_mode = "rgb_array"
    register_robotics_envs()
    env = gym.make(spec.gym_id, max_episode_steps=spec.max_episode_steps, render_mode=render_mode, **kwargs)
    return FetchTask(env, spec)


# ----- scripted experts ------------------------------------------------------------------------------------
def _move(target: np.ndarray, grip: np.ndarray, gain: float = 10.0) -> np.ndarray:
    """Position action toward ``target`` (each axis clipped to [-1, 1]: at most 5 cm per step)."""
    return np.clip(gain * (target - grip), -1.0, 1.0)


def reach_expert(obs: dict[str, np.ndarray]) -> np.ndarray:
    """FetchReach: move the gripper straight to the goal."""
    grip = obs["observation"][:3]
    return np.r_[_move(obs["desired_goal"], grip), 0.0]


def push_expert(obs: dict[str, np.ndarray]) -> np.ndarray:
    """FetchPush: get behind the block (seen from the goal), lower the closed gripper to its height,
    push it to the goal. Stateless: the phase is read off the observation, so noisy actions recover."""
    o = obs["observation"]
    grip, block, goal = o[:3], o[3:6], obs["desired_goal"]
    to_goal = goal[:2] - block[:2]
    dist = float(np.linalg.norm(to_goal))
    if dist < 0.01:
        return np.r_[_move(np.r_[grip[:2], block[2] + 0.05], grip) * 0.5, -1.0]
    d = to_goal / dist
    rel = grip[:2] - block[:2]
    along, across = float(rel @ d), float(abs(rel[0] * d[1] - rel[1] * d[0]))
    behind = np.r_[block[:2] - 0.06 * d, block[2]]
    if along < -0.03 and across < 0.02 and abs(grip[2] - block[2]) < 0.02:  # in place: push
        target = np.r_[goal[:2] - 0.03 * d, block[2]]
        return np.r_[_move(target, grip), -1.0]
    if float(np.linalg.norm(grip[:2] - behind[:2])) < 0.015:  # above the spot behind: go down
        return np.r_[_move(behind, grip), -1.0]
    high = block[2] + 0.06
    if grip[2] < high - 0.02 and float(np.linalg.norm(rel)) < 0.08:  # near the block and low: lift first
        return np.r_[_move(np.r_[grip[:2], high], grip), -1.0]
    return np.r_[_move(np.r_[behind[:2], max(grip[2], high - 0.01)], grip), -1.0]


def pick_place_expert(obs: dict[str, np.ndarray]) -> np.ndarray:
    """FetchPickAndPlace: open above the block, descend, close, carry it to the goal (in the air too)."""
    o = obs["observation"]
    grip, block, goal, fingers = o[:3], o[3:6], obs["desired_goal"], float(o[9] + o[10])
    rel = block - grip
    near = float(np.linalg.norm(rel)) < 0.02
    if near and fingers < 0.06:  # holding it: carry to the goal
        return np.r_[_move(goal, grip), -1.0]
    if near:  # around it with open fingers: close
        return np.array([0.0, 0.0, 0.0, -1.0])
    if float(np.linalg.norm(rel[:2])) > 0.01:  # not above it: open and move above it
        return np.r_[_move(np.r_[block[:2], max(grip[2], block[2] + 0.05)], grip), 1.0]
    return np.r_[_move(block, grip), 1.0]  # above it: descend with open fingers


EXPERTS = {
    "FetchReach-v4": reach_expert,
    "FetchPush-v4": push_expert,
    "FetchPickAndPlace-v4": pick_place_expert,
}


def expert_for(spec: TaskSpec) -> Any:
    """The scripted expert of a Fetch task: ``expert(raw_obs_dict) -> action (4,)``."""
    if spec.gym_id not in EXPERTS:
        raise ValueError(f"no scripted expert for {spec.name!r}; Fetch tasks: {sorted(EXPERTS)}")
    return EXPERTS[spec.gym_id]
