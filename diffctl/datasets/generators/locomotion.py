"""Locomotion datasets with D4RL's recipe: a SAC run from stable-baselines3 (optional extra ``rl``).

One SAC run per (task, seed, budget) is trained once and cached in the data directory (``$DIFFCTL_DATA`` or
``~/.cache/diffctl``), with a checkpoint every ``checkpoint_every`` steps that also records the policy's
evaluation return; an interrupted run resumes from its last checkpoint (network weights, entropy
coefficient and replay buffer; Adam moments restart). From that run:

- ``expert``: rollouts of the final policy;
- ``medium``: rollouts of the checkpoint whose return is closest to a third of the final one;
- ``medium-replay``: the replay buffer up to that checkpoint (every transition the agent saw so far);
- ``medium-expert``: medium followed by expert.

Rollouts sample the stochastic SAC policy, as D4RL did. Budgets: ``budget="small"`` (sized for a CPU
machine: 200k SAC steps, hours on one core, and 100k-step datasets) or ``"d4rl"`` (1M SAC steps, 1M-step
datasets); both can be overridden with ``sac_steps`` / ``steps``. Files are safetensors, npz (no pickle)
and JSON.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from diffctl.atomic import atomic_dir, atomic_path, write_json

BUDGETS = {
    "small": {"sac_steps": 200_000, "steps": 100_000, "checkpoint_every": 10_000, "learning_starts": 10_000},
    "d4rl": {
        "sac_steps": 1_000_000,
        "steps": 1_000_000,
        "checkpoint_every": 20_000,
        "learning_starts": 10_000,
    },
}
EVAL_EPISODES = 5
ROLLOUT_KEYS = (
    "observations",
    "actions",
    "rewards",
    "next_observations",
    "terminals",
    "timeouts",
    "infos/qpos",
    "infos/qvel",
)


def data_dir() -> Path:
    """Where slow products (SAC runs) are cached: ``$DIFFCTL_DATA`` or ``~/.cache/diffctl``."""
    return Path(os.environ.get("DIFFCTL_DATA") or Path.home() / ".cache" / "diffctl")


def _require_sb3() -> Any:
    try:
        import stable_baselines3
    except ImportError as err:
        raise ImportError(
            "locomotion generators train SAC with stable-baselines3: `pip install diffctl[rl]`"
        ) from err
    return stable_baselines3


def _split(name: str) -> tuple[str, str]:
    from diffctl.datasets.generators.catalog import LOCOMOTION_KINDS, LOCOMOTION_TASKS

    for task in LOCOMOTION_TASKS:
        kind = name[len(task) + 1 :]
        if name.startswith(task + "-") and kind in LOCOMOTION_KINDS:
            return task, kind
    raise ValueError(f"not a locomotion dataset name: {name!r}")


def _new_sac(task: str, seed: int, learning_starts: int, buffer_size: int) -> Any:
    sb3 = _require_sb3()
    import torch
    from stable_baselines3.common.monitor import Monitor

    from diffctl.envs.registry import make_env

    torch.set_num_threads(1)
    env = Monitor(make_env(task))
    return sb3.SAC(
        "MlpPolicy",
        env,
        seed=seed,
        device="cpu",
        learning_starts=learning_starts,
        buffer_size=buffer_size,
        verbose=0,
    )


def _load_weights(model: Any, ckpt: Path) -> None:
    import torch
    from safetensors.torch import load_file

    state = load_file(str(ckpt / "policy.safetensors"))
    log_ent = state.pop("__log_ent_coef__", None)
    model.policy.load_state_dict(state)
    if log_ent is not None and getattr(model, "log_ent_coef", None) is not None:
        with torch.no_grad():
            model.log_ent_coef.copy_(log_ent)


def load_checkpoint(task: str, checkpoint: str | os.PathLike[str], seed: int = 0) -> Any:
    """The SAC policy saved in ``checkpoint`` (a ``checkpoints/step_*`` directory of a run), as a
    stable-baselines3 model (``model.predict(obs, deterministic=True)``)."""
    model = _new_sac(task, seed, learning_starts=0, buffer_size=1)
    _load_weights(model, Path(checkpoint))
    return model


def policy_return(model: Any, task: str, episodes: int = EVAL_EPISODES, seed: int = 10_000) -> float:
    """Mean undiscounted return of the deterministic policy over ``episodes`` episodes."""
    from diffctl.envs.registry import make_env

    env = make_env(task)
    total = 0.0
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done = False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
    env.close()
    return total / episodes


class _Checkpointer:
    """SB3 callback: progress bar, and a checkpoint (weights, eval return, replay buffer) every N steps."""

    def __init__(self, run: Path, task: str, every: int, total: int, stop_after: int | None, bar: Any):
        from stable_baselines3.common.callbacks import BaseCallback

        outer = self

        class Callback(BaseCallback):
            def _on_step(self) -> bool:
                return outer.on_step(self.model)

        self.callback = Callback()
        self.run, self.task, self.every, self.total, self.stop_after, self.bar = (
            run,
            task,
            every,
            total,
            stop_after,
            bar,
        )

    def on_step(self, model: Any) -> bool:
        step = int(model.num_timesteps)
        self.bar.update(1)
        if step % self.every == 0 or step == self.total:
            save_checkpoint(self.run, model, self.task)
        return self.stop_after is None or step < self.stop_after


def save_checkpoint(run: Path, model: Any, task: str) -> Path:
    """Write ``run/checkpoints/step_XXXXXXXX`` (weights + eval return) and ``run/replay.npz`` atomically."""
    from safetensors.torch import save_file

    step = int(model.num_timesteps)
    ret = policy_return(model, task)
    state = {k: v.detach().cpu().contiguous() for k, v in model.policy.state_dict().items()}
    if getattr(model, "log_ent_coef", None) is not None:
        state["__log_ent_coef__"] = model.log_ent_coef.detach().cpu().clone()

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / "policy.safetensors"))
        (tmp / "meta.json").write_text(json.dumps({"step": step, "eval_return": ret}))

    with atomic_dir(run / "checkpoints" / f"step_{step:08d}") as tmp:
        write(tmp)
    buf = model.replay_buffer
    n = buf.buffer_size if buf.full else buf.pos
    arrays = {
        "observations": buf.observations[:n, 0],
        "next_observations": buf.next_observations[:n, 0],
        "actions": buf.actions[:n, 0],
        "rewards": buf.rewards[:n, 0],
        "dones": buf.dones[:n, 0],
        "timeouts": buf.timeouts[:n, 0],
    }
    with atomic_path(run / "replay.npz") as tmp:
        np.savez(tmp, **arrays)
    write_json(run / "progress.json", {"step": step})
    return run / "checkpoints" / f"step_{step:08d}"


def checkpoints(run: Path) -> list[dict[str, Any]]:
    """Finished checkpoints of a run, oldest first: ``{"step", "eval_return", "path"}``."""
    out = []
    for meta in sorted((run / "checkpoints").glob("step_*/meta.json")):
        info = json.loads(meta.read_text())
        out.append({**info, "path": meta.parent})
    return out


def train_sac(
    task: str,
    seed: int = 0,
    sac_steps: int = BUDGETS["small"]["sac_steps"],
    checkpoint_every: int = BUDGETS["small"]["checkpoint_every"],
    learning_starts: int = BUDGETS["small"]["learning_starts"],
    root: Path | None = None,
    stop_after: int | None = None,
    progress: bool = True,
) -> Path:
    """Train (or resume, or reuse) the cached SAC run of ``task``; returns its directory.

    A finished run has ``done.json`` and is never retrained. ``stop_after`` stops early (for tests of resume).
    """
    from tqdm.auto import tqdm

    run = (root or data_dir()) / "sac" / f"{task}-seed{seed}-steps{sac_steps}"
    if (run / "done.json").exists():
        return run
    run.mkdir(parents=True, exist_ok=True)
    model = _new_sac(task, seed, min(learning_starts, max(1, sac_steps // 2)), max(sac_steps, 1))
    done_steps = 0
    existing = checkpoints(run)
    if existing and (run / "replay.npz").exists():
        last = existing[-1]
        _load_weights(model, last["path"])
        with np.load(run / "replay.npz", allow_pickle=False) as replay:
            n = min(int(last["step"]), len(replay["actions"]), model.replay_buffer.buffer_size)
            buf = model.replay_buffer
            for key in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
                getattr(buf, key)[:n, 0] = replay[key][:n]
            buf.pos = n % buf.buffer_size
            buf.full = n >= buf.buffer_size
        done_steps = int(last["step"])
        model.num_timesteps = done_steps
    started = time.perf_counter()
    with tqdm(
        total=sac_steps, initial=done_steps, desc=f"SAC {task}", unit="step", disable=not progress
    ) as bar:
        cb = _Checkpointer(run, task, checkpoint_every, sac_steps, stop_after, bar)
        if sac_steps > done_steps:
            model.learn(
                total_timesteps=sac_steps - done_steps, callback=cb.callback, reset_num_timesteps=False
            )
    if int(model.num_timesteps) < sac_steps:
        return run
    if not checkpoints(run) or checkpoints(run)[-1]["step"] != int(model.num_timesteps):
        save_checkpoint(run, model, task)
    info = {
        "task": task,
        "seed": seed,
        "sac_steps": sac_steps,
        "resumed_from": done_steps,
        "seconds_this_session": round(time.perf_counter() - started, 2),
    }
    (run / "done.json").write_text(json.dumps(info))
    return run


def pick_medium(run: Path) -> dict[str, Any]:
    """The checkpoint whose eval return is closest to a third of the final checkpoint's."""
    ckpts = checkpoints(run)
    if not ckpts:
        raise FileNotFoundError(f"{run}: no SAC checkpoints")
    target = ckpts[-1]["eval_return"] / 3.0
    return min(ckpts[:-1] or ckpts, key=lambda c: abs(c["eval_return"] - target))


def collect(
    task: str, ckpt: Path, steps: int, seed: int, progress: bool = True
) -> list[dict[str, np.ndarray]]:
    """Episodes of the stochastic SAC policy at ``ckpt`` until ``steps`` transitions are gathered; a last
    episode cut short ends with ``timeouts``."""
    from tqdm.auto import tqdm

    from diffctl.envs.registry import make_env

    model = _new_sac(task, seed, 1, 1)
    _load_weights(model, ckpt)
    model.policy.set_training_mode(False)
    env = make_env(task)
    episodes: list[dict[str, np.ndarray]] = []
    total, index = 0, 0
    with tqdm(total=steps, desc=f"rollouts {task}", unit="step", disable=not progress) as bar:
        while total < steps:
            obs, _ = env.reset(seed=seed * 1_000_003 + index)
            rows: dict[str, list[Any]] = {k: [] for k in ROLLOUT_KEYS}
            done = False
            while not done:
                data = env.unwrapped.data
                rows["infos/qpos"].append(data.qpos.copy())
                rows["infos/qvel"].append(data.qvel.copy())
                action, _ = model.predict(obs, deterministic=False)
                nxt, reward, terminated, truncated, _ = env.step(action)
                total += 1
                cut = total >= steps
                rows["observations"].append(obs)
                rows["actions"].append(action)
                rows["rewards"].append(reward)
                rows["next_observations"].append(nxt)
                rows["terminals"].append(terminated)
                rows["timeouts"].append((truncated or cut) and not terminated)
                obs, done = nxt, terminated or truncated or cut
                bar.update(1)
            episodes.append({k: np.asarray(v, dtype=_dtype(k)) for k, v in rows.items()})
            index += 1
    env.close()
    return episodes


def _dtype(key: str) -> Any:
    if key in ("terminals", "timeouts"):
        return bool
    return np.float64 if key.startswith("infos/") else np.float32


def replay_episodes(run: Path, upto: int) -> list[dict[str, np.ndarray]]:
    """The first ``upto`` replay-buffer transitions cut into episodes at terminals / timeouts."""
    with np.load(run / "replay.npz", allow_pickle=False) as replay:
        arr = {k: replay[k][:upto] for k in replay.files}
    ends_flag = arr["dones"].astype(bool)
    timeouts = arr["timeouts"].astype(bool) & ends_flag
    terminals = ends_flag & ~timeouts
    ends = np.flatnonzero(ends_flag) + 1
    if ends.size == 0 or ends[-1] != len(ends_flag):
        ends = np.append(ends, len(ends_flag))
        timeouts[-1] = True
    episodes, start = [], 0
    for end in ends:
        sl = slice(start, int(end))
        episodes.append(
            {
                "observations": arr["observations"][sl].astype(np.float32),
                "actions": arr["actions"][sl].astype(np.float32),
                "rewards": arr["rewards"][sl].astype(np.float32),
                "next_observations": arr["next_observations"][sl].astype(np.float32),
                "terminals": terminals[sl],
                "timeouts": timeouts[sl],
            }
        )
        start = int(end)
    return episodes


def generate_locomotion(
    name: str,
    out: Path,
    episodes: int | None = None,
    seed: int = 0,
    force: bool = False,
    budget: str = "small",
    sac_steps: int | None = None,
    steps: int | None = None,
    checkpoint_every: int | None = None,
    learning_starts: int | None = None,
    root: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Any:
    """Write ``{task}-{medium,medium-replay,expert,medium-expert}`` to ``out`` (trains / reuses SAC first).

    ``episodes`` caps the number of rollout episodes (``steps`` is the transition budget per policy).
    """
    _require_sb3()
    from diffctl.datasets.generators.card import make_card
    from diffctl.datasets.store import EpisodeStore
    from diffctl.envs.registry import get_task, normalized_score

    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    task, kind = _split(name)
    cfg = dict(BUDGETS[budget])
    for key, value in (
        ("sac_steps", sac_steps),
        ("steps", steps),
        ("checkpoint_every", checkpoint_every),
        ("learning_starts", learning_starts),
    ):
        if value is not None:
            if int(value) < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
            cfg[key] = int(value)
    start = time.perf_counter()
    run = train_sac(
        task,
        seed,
        cfg["sac_steps"],
        cfg["checkpoint_every"],
        cfg["learning_starts"],
        Path(root) if root else None,
        progress=progress,
    )
    final, medium = checkpoints(run)[-1], pick_medium(run)
    parts: list[list[dict[str, np.ndarray]]] = []
    if kind == "medium-replay":
        parts.append(replay_episodes(run, int(medium["step"])))
    else:
        sources = {"medium": [medium], "expert": [final], "medium-expert": [medium, final]}[kind]
        for k, ckpt in enumerate(sources):
            eps = collect(task, ckpt["path"], cfg["steps"], seed + 1 + k, progress)
            parts.append(eps[:episodes] if episodes is not None else eps)
    all_eps = [e for part in parts for e in part]
    limit = get_task(task).max_episode_steps
    complete = [e for e in all_eps if e["terminals"][-1] or len(e["rewards"]) == limit] or all_eps
    mean_return = float(np.mean([e["rewards"].sum() for e in complete]))
    card = make_card(
        task=task,
        dataset=name,
        recipe=(
            "D4RL locomotion: SAC (stable-baselines3 defaults, MlpPolicy 256x256) trained once per seed; "
            "expert = final policy, medium = checkpoint closest to 1/3 of the final eval return, "
            "medium-replay = replay buffer up to the medium checkpoint, medium-expert = medium + expert; "
            "rollouts sample the stochastic policy"
        ),
        seed=seed,
        budgets={"budget": budget, **cfg, "d4rl": BUDGETS["d4rl"]},
        behaviour={
            "mean_return": mean_return,
            "normalized_score": float(normalized_score(task, mean_return)),
            "medium_checkpoint": {"step": medium["step"], "eval_return": medium["eval_return"]},
            "expert_checkpoint": {"step": final["step"], "eval_return": final["eval_return"]},
            "episodes": len(all_eps),
            "complete_episodes": len(complete),
        },
        generation_seconds=0.0,
        sac_run=str(run),
    )
    store = EpisodeStore.create(out, overwrite=force, attrs=card)
    try:
        for ep in all_eps:
            store.add_episode(ep)
        store.attrs["generation_seconds"] = round(time.perf_counter() - start, 3)
        store.close()
    except BaseException:
        store.discard()
        raise
    return EpisodeStore.open(out)
