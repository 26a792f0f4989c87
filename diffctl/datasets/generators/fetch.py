"""Fetch datasets (``fetch-reach``, ``fetch-push``, ``fetch-pick-place`` and their ``-image`` variants): the
scripted experts of ``diffctl.envs.fetch`` with D4RL-style Gaussian action noise, one 50-step episode per
environment reset.

Keys: ``observations`` (the state part of the task's observation: 10 or 25 wide; proprioception for image
tasks), ``infos/goal`` (3), ``actions`` (the executed, noisy and clipped action), ``rewards`` (0 at success,
else -1: Fetch's sparse reward), ``terminals`` (all false), ``timeouts`` (last step), ``infos/success``, and
for image tasks ``image`` (uint8 frames, one per chunk, compressed).

Episode ``i`` is seeded from ``(seed, i)`` alone, and episodes are written in blocks to ``<out>.partial``
(a finished store that grows), so an interrupted run resumes where it stopped and gives the same data;
the complete store is renamed to ``out`` with its card.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from diffctl.envs.evaluate import episode_seed

DEFAULT_EPISODES = {"fetch-reach": 100, "fetch-push": 300, "fetch-pick-place": 300}
DEFAULT_NOISE = 0.1
BLOCK = 20


def expert_episode(env: Any, expert: Any, seed: int, action_noise: float) -> dict[str, np.ndarray]:
    """One episode of the noisy expert in a ``FetchTask`` env, as arrays with a time axis."""
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    steps: list[dict[str, Any]] = []
    done = False
    while not done:
        action = expert(env.raw_obs)
        if action_noise > 0:
            action = action + rng.normal(0.0, action_noise, size=action.shape)
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        state = obs["observations"] if isinstance(obs, dict) else obs
        step = {
            "observations": state[:-3],
            "infos/goal": state[-3:],
            "actions": action,
        }
        if isinstance(obs, dict):
            step["image"] = obs["image"]
        obs, reward, terminated, truncated, info = env.step(action)
        step.update({"rewards": np.float32(reward), "infos/success": bool(info["success"])})
        steps.append(step)
        done = terminated or truncated
    episode = {k: np.stack([s[k] for s in steps]) for k in steps[0]}
    episode["terminals"] = np.zeros(len(steps), dtype=bool)
    episode["timeouts"] = np.zeros(len(steps), dtype=bool)
    episode["timeouts"][-1] = True
    return episode


def expert_success(task: str, episodes: int, seed: int, action_noise: float) -> float:
    """Last-step success rate of the expert on the state variant of ``task`` (no rendering)."""
    from diffctl.envs.fetch import expert_for
    from diffctl.envs.registry import get_task, make_env

    spec = get_task(task.removesuffix("-image"))
    env = make_env(spec.name)
    expert = expert_for(spec)
    try:
        runs = [expert_episode(env, expert, episode_seed(seed, i), action_noise) for i in range(episodes)]
        wins = [bool(run["infos/success"][-1]) for run in runs]
    finally:
        env.close()
    return float(np.mean(wins))


def generate_fetch(
    task: str,
    out: Path,
    episodes: int | None = None,
    seed: int = 0,
    force: bool = False,
    action_noise: float = DEFAULT_NOISE,
    eval_episodes: int = 50,
    progress: bool = True,
) -> Any:
    """Write the Fetch dataset ``task`` to ``out`` (resuming ``<out>.partial`` when a run was cut short)."""
    from tqdm.auto import tqdm

    from diffctl.datasets.generators.card import make_card
    from diffctl.datasets.store import EpisodeStore
    from diffctl.envs.fetch import CAMERA, expert_for
    from diffctl.envs.registry import get_task, make_env

    if action_noise < 0:
        raise ValueError(f"action_noise must be >= 0, got {action_noise}")
    spec = get_task(task)
    total = int(episodes if episodes is not None else DEFAULT_EPISODES[task.removesuffix("-image")])
    partial = out.with_name(out.name + ".partial")
    done = EpisodeStore.open(partial).num_episodes if partial.exists() else 0
    if done > total:
        raise ValueError(f"{partial} holds {done} episodes, more than the {total} asked for; remove it")
    start = time.perf_counter()
    env = make_env(spec.name)
    expert = expert_for(spec)
    try:
        with tqdm(total=total, initial=done, desc=f"generate {task}", unit="ep", disable=not progress) as bar:
            while done < total:
                block = [
                    expert_episode(env, expert, episode_seed(seed, i), action_noise)
                    for i in range(done, min(done + BLOCK, total))
                ]
                _append(partial, block)
                done += len(block)
                bar.update(len(block))
    finally:
        env.close()
    store = EpisodeStore.open(partial, mode="a")
    success = store.array("infos/success")[store.episode_ends - 1]
    card = make_card(
        task=spec.name,
        dataset=task,
        recipe=(
            f"scripted {spec.gym_id} expert (diffctl.envs.fetch), N(0,{action_noise}^2) action noise, "
            f"clipped to [-1, 1]; {spec.max_episode_steps}-step episodes"
        ),
        seed=seed,
        budgets={"episodes": total, "steps": int(store.num_steps)},
        behaviour={
            "data_policy": {"success_rate": float(np.mean(success)), "episodes": total},
            "noiseless_expert": {
                "success_rate": expert_success(task, eval_episodes, seed + 1, 0.0),
                "episodes": eval_episodes,
            },
        },
        generation_seconds=0.0,
        simulator=f"gymnasium-robotics {spec.gym_id} (MuJoCo)",
        observation_keys=_observation_keys(spec),
        action_noise=action_noise,
        **({"camera": {**CAMERA, "size": spec.image_size}} if spec.image_size else {}),
    )
    store.attrs.update({**card, "generation_seconds": round(time.perf_counter() - start, 3)})
    store.close()
    _publish(partial, out, force)
    return EpisodeStore.open(out)


def _append(partial: Path, episodes: list[dict[str, np.ndarray]]) -> None:
    """Add ``episodes`` to the growing store at ``partial`` (created, published, by the first block)."""
    from diffctl.datasets.store import EpisodeStore

    data = {k: np.concatenate([ep[k] for ep in episodes]) for k in episodes[0]}
    ends = np.cumsum([len(ep["actions"]) for ep in episodes])
    if not partial.exists():
        EpisodeStore.from_arrays(data, ends, path=partial)
        return
    store = EpisodeStore.open(partial, mode="a")
    store.add_episodes(data, ends)
    store.close()


def _publish(partial: Path, out: Path, force: bool) -> None:
    if out.exists():
        if not force:
            raise FileExistsError(f"{out} already exists (pass force=True / --force to replace it)")
        shutil.rmtree(out)
    os.replace(partial, out)


def _observation_keys(spec: Any) -> dict[str, str]:
    keys = {"infos/goal": "desired goal (x, y, z)"}
    if spec.image_size:
        keys["observations"] = "gripper position 3, finger widths 2, gripper velocity 3, finger velocities 2"
        keys["image"] = f"{spec.image_size}x{spec.image_size}x3 uint8 camera frame"
    else:
        keys["observations"] = f"gymnasium-robotics {spec.gym_id} 'observation' ({spec.obs_dim})"
    return keys
