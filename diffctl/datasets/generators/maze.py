"""maze2d datasets with D4RL's recipe: a waypoint + PD expert with action noise and continuing goals.

``streams`` point masses run in parallel, each without ever resetting: when one comes within
``goal_radius`` of its goal a new goal is drawn (uniform free cell + PointMaze position noise) and it carries
on. Each stream's run is cut into episodes of the D4RL limit (umaze 300, medium 600, large 800 steps) whose
last step has ``timeouts`` set; ``terminals`` are all false. Keys: ``observations`` [x, y, vx, vy],
``actions`` (the executed, noisy and clipped action), ``rewards`` (1 when the step ends within 0.5 of that
step's goal), ``terminals``, ``timeouts``, ``infos/goal``, ``infos/qpos``, ``infos/qvel``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

SMALL_EPISODES = {"maze2d-umaze": 500, "maze2d-medium": 250, "maze2d-large": 200}
DEFAULT_STREAMS = 32


def _episode_count(task: str, episodes: int | None, size: str, steps: int | None) -> int:
    from diffctl.envs.registry import get_task

    spec = get_task(task)
    if episodes is not None:
        return int(episodes)
    if steps is not None:
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return math.ceil(int(steps) / spec.max_episode_steps)
    if size == "small":
        return SMALL_EPISODES[task]
    if size == "d4rl":
        assert spec.dataset_steps is not None
        return math.ceil(spec.dataset_steps / spec.max_episode_steps)
    raise ValueError(f"size must be 'small' or 'd4rl', got {size!r}")


def rollout_expert(
    task: str,
    episodes: int,
    seed: int,
    action_noise: float = 0.0,
    goal_radius: float = 0.25,
    streams: int = DEFAULT_STREAMS,
    progress: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run the continuing-goal expert; returns arrays of shape (episodes, limit, ...) and statistics."""
    from tqdm.auto import tqdm

    from diffctl.envs.experts import WaypointController
    from diffctl.envs.maze import PointMassSim, maze_layout
    from diffctl.envs.registry import get_task

    spec = get_task(task)
    limit = spec.max_episode_steps
    n = max(1, min(int(streams), episodes))
    rounds = math.ceil(episodes / n)
    rng = np.random.default_rng(seed)
    layout = maze_layout(spec)
    controller = WaypointController(layout)
    sim = PointMassSim(spec, n)
    goal = layout.sample_positions(rng, n)
    sim.set_state(layout.sample_positions(rng, n, avoid=goal))

    shape = (rounds, n, limit)
    obs = np.empty((*shape, 4), dtype=np.float32)
    qpos = np.empty((*shape, 2), dtype=np.float64)
    qvel = np.empty((*shape, 2), dtype=np.float64)
    acts = np.empty((*shape, 2), dtype=np.float32)
    goals = np.empty((*shape, 2), dtype=np.float32)
    rewards = np.empty(shape, dtype=np.float32)
    goals_reached = 0
    steps_since_goal = np.zeros(n, dtype=np.int64)
    steps_to_goal: list[int] = []
    with tqdm(total=rounds * n * limit, desc=f"generate {task}", unit="step", disable=not progress) as bar:
        for r in range(rounds):
            for t in range(limit):
                pos, vel = sim.pos.copy(), sim.vel.copy()
                action = controller(pos, vel, goal)
                if action_noise > 0:
                    action = np.clip(action + rng.normal(0.0, action_noise, size=action.shape), -1.0, 1.0)
                qpos[r, :, t], qvel[r, :, t] = pos, vel
                obs[r, :, t, :2], obs[r, :, t, 2:] = pos, vel
                acts[r, :, t] = action
                goals[r, :, t] = goal
                sim.step(action)
                dist = np.linalg.norm(sim.pos - goal, axis=-1)
                rewards[r, :, t] = dist <= 0.5
                steps_since_goal += 1
                reached = np.flatnonzero(dist <= goal_radius)
                if reached.size:
                    goals_reached += int(reached.size)
                    steps_to_goal.extend(steps_since_goal[reached].tolist())
                    steps_since_goal[reached] = 0
                    goal[reached] = layout.sample_positions(rng, reached.size, avoid=sim.pos[reached])
            bar.update(n * limit)

    def flat(a: np.ndarray) -> np.ndarray:
        return a.reshape(rounds * n, limit, *a.shape[3:])[:episodes]

    data = {
        "observations": flat(obs),
        "actions": flat(acts),
        "rewards": flat(rewards),
        "infos/goal": flat(goals),
        "infos/qpos": flat(qpos),
        "infos/qvel": flat(qvel),
    }
    stats = {
        "streams": n,
        "goals_reached": goals_reached,
        "mean_steps_to_goal": float(np.mean(steps_to_goal)) if steps_to_goal else None,
    }
    return data, stats


def evaluate_expert(
    task: str, episodes: int = 100, seed: int = 0, action_noise: float = 0.0
) -> dict[str, float | int]:
    """D4RL-style score of the expert, fast (batched MuJoCo): goal fixed at the task's evaluation cell
    (with PointMaze position noise), random start at least 0.5 away, run to the episode limit, reward 1
    per step within 0.5 of the goal; success = reached the goal at least once."""
    from diffctl.envs.experts import WaypointController
    from diffctl.envs.maze import PointMassSim, maze_layout
    from diffctl.envs.registry import get_task, normalized_score

    spec = get_task(task)
    rng = np.random.default_rng(seed)
    layout = maze_layout(spec)
    controller = WaypointController(layout)
    sim = PointMassSim(spec, episodes)
    goal = layout.jitter(rng, np.repeat([spec.eval_goal_cell], episodes, axis=0))
    sim.set_state(layout.sample_positions(rng, episodes, avoid=goal))
    returns = np.zeros(episodes)
    for _ in range(spec.max_episode_steps):
        action = controller(sim.pos, sim.vel, goal)
        if action_noise > 0:
            action = np.clip(action + rng.normal(0.0, action_noise, size=action.shape), -1.0, 1.0)
        sim.step(action)
        returns += np.linalg.norm(sim.pos - goal, axis=-1) <= 0.5
    mean_return = float(returns.mean())
    return {
        "episodes": int(episodes),
        "action_noise": float(action_noise),
        "success_rate": float(np.mean(returns > 0)),
        "mean_return": mean_return,
        "normalized_score": float(normalized_score(spec.name, mean_return)),
    }


def generate_maze(
    task: str,
    out: Path,
    episodes: int | None = None,
    seed: int = 0,
    force: bool = False,
    size: str = "small",
    steps: int | None = None,
    action_noise: float = 0.5,
    goal_radius: float = 0.25,
    streams: int = DEFAULT_STREAMS,
    eval_episodes: int = 100,
    progress: bool = True,
) -> Any:
    """Write a maze2d dataset to ``out``; ``size="d4rl"`` gives D4RL's step count (1M / 2M / 4M)."""
    from diffctl.datasets.generators.card import make_card
    from diffctl.datasets.store import EpisodeStore
    from diffctl.envs.registry import get_task

    if action_noise < 0 or goal_radius <= 0:
        raise ValueError(f"action_noise must be >= 0 and goal_radius > 0, got {action_noise}, {goal_radius}")
    spec = get_task(task)
    n_episodes = _episode_count(task, episodes, size, steps)
    start = time.perf_counter()
    data, stats = rollout_expert(task, n_episodes, seed, action_noise, goal_radius, streams, progress)
    rollout_seconds = time.perf_counter() - start
    limit = spec.max_episode_steps
    timeouts = np.zeros(limit, dtype=bool)
    timeouts[-1] = True
    terminals = np.zeros(limit, dtype=bool)
    behaviour = {
        "data_policy": evaluate_expert(task, eval_episodes, seed + 1, action_noise),
        "noiseless_expert": evaluate_expert(task, eval_episodes, seed + 1, 0.0),
        "dataset_goals_reached": stats["goals_reached"],
        "dataset_mean_steps_to_goal": stats["mean_steps_to_goal"],
        "dataset_mean_episode_return": float(data["rewards"].sum(axis=1).mean()),
    }
    card = make_card(
        task=spec.name,
        dataset=task,
        recipe=(
            "D4RL maze2d: BFS waypoints over maze cells + PD a=clip(10(wp-pos)-vel,-1,1), "
            f"N(0,{action_noise}^2) action noise, continuing goals (new goal within {goal_radius} of it), "
            f"episodes cut at {limit} steps with timeouts, reward 1 within 0.5 of the goal"
        ),
        seed=seed,
        budgets={
            "episodes": n_episodes,
            "steps": n_episodes * limit,
            "size": size if episodes is None and steps is None else None,
            "d4rl_steps": spec.dataset_steps,
            "streams": stats["streams"],
        },
        behaviour=behaviour,
        generation_seconds=0.0,
        simulator=f"gymnasium-robotics {spec.gym_id}, stepped directly with mujoco.mj_step",
        observation_keys={"observations": "[x, y, vx, vy]", "infos/goal": "[goal_x, goal_y]"},
        reward_threshold=0.5,
        action_noise=action_noise,
        goal_radius=goal_radius,
    )
    store = EpisodeStore.create(out, overwrite=force, attrs=card)
    try:
        for i in range(n_episodes):
            store.add_episode(
                {**{k: v[i] for k, v in data.items()}, "terminals": terminals, "timeouts": timeouts}
            )
        store.attrs["generation_seconds"] = round(time.perf_counter() - start, 3)
        store.attrs["rollout_seconds"] = round(rollout_seconds, 3)
        store.close()
    except BaseException:
        store.discard()
        raise
    return EpisodeStore.open(out)
