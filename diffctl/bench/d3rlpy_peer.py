"""Train a d3rlpy baseline (IQL or TD3+BC) on a D4RL-format HDF5 file and export its greedy policy
(``policy-<step>.pt``, every ``--save-every`` steps and at the end).

Run by ``benchmarks/offline_rl.py`` in a separate interpreter, because d3rlpy pins an older gymnasium than
diffctl's simulators need (a venv with ``--system-site-packages`` plus ``pip install d3rlpy`` is enough).
It imports only numpy, h5py and d3rlpy: the policy is written as TorchScript (``algo.save_policy``, with
d3rlpy's own observation / action scalers folded in) so the caller evaluates it with exactly the same
``dc.evaluate`` episodes and seeds as diffctl's agents.

Hyperparameters follow d3rlpy's reproduction scripts: IQL with a 1000 / (return range) reward scale,
expectile 0.7, advantage temperature 3 and a cosine actor schedule; TD3+BC with standardized observations
and alpha 2.5.

    python benchmarks/d3rlpy_peer.py --hdf5 FILE --algo {iql,td3bc} --steps N --seed S \\
        [--save-every K] --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import h5py
import numpy as np


def read_hdf5(path: Path, with_goal: bool) -> dict[str, np.ndarray]:
    """The D4RL keys as float32 arrays; ``infos/goal`` appended to the observations when asked."""
    with h5py.File(path, "r") as f:
        missing = [k for k in ("observations", "actions", "rewards", "terminals") if k not in f]
        if missing:
            raise ValueError(f"{path}: missing D4RL key(s) {missing}")
        data = {k: np.asarray(f[k], np.float32) for k in ("observations", "actions", "rewards", "terminals")}
        n = len(data["rewards"])
        timeouts = np.asarray(f["timeouts"], np.float32) if "timeouts" in f else np.zeros(n, np.float32)
        data["timeouts"] = timeouts
        if with_goal:
            if "infos/goal" not in f:
                raise ValueError(f"{path}: --goal needs an 'infos/goal' dataset")
            goal = np.asarray(f["infos/goal"], np.float32)
            data["observations"] = np.concatenate([data["observations"], goal], axis=1)
    # d3rlpy cuts episodes at terminals or timeouts; the last step always ends one.
    if not (data["terminals"][-1] or data["timeouts"][-1]):
        data["timeouts"][-1] = 1.0
    return data


def make_algo(name: str, steps: int, batch: int, lr: float = 3e-4):
    import d3rlpy

    if name == "iql":
        return d3rlpy.algos.IQLConfig(
            batch_size=batch,
            actor_learning_rate=lr,
            critic_learning_rate=lr,
            actor_optim_factory=d3rlpy.optimizers.AdamFactory(
                lr_scheduler_factory=d3rlpy.optimizers.CosineAnnealingLRFactory(T_max=steps)
            ),
            weight_temp=3.0,
            max_weight=100.0,
            expectile=0.7,
            reward_scaler=d3rlpy.preprocessing.ReturnBasedRewardScaler(multiplier=1000.0),
        ).create(device="cpu:0")
    if name == "td3bc":
        return d3rlpy.algos.TD3PlusBCConfig(
            batch_size=batch,
            actor_learning_rate=lr,
            critic_learning_rate=lr,
            target_smoothing_sigma=0.2,
            target_smoothing_clip=0.5,
            alpha=2.5,
            update_actor_interval=2,
            observation_scaler=d3rlpy.preprocessing.StandardObservationScaler(),
        ).create(device="cpu:0")
    raise ValueError(f"unknown --algo {name!r}; expected iql or td3bc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hdf5", type=Path, required=True)
    parser.add_argument("--algo", choices=("iql", "td3bc"), required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-4, help="actor and critic learning rate")
    parser.add_argument("--goal", action="store_true", help="append infos/goal to the observations")
    parser.add_argument("--save-every", type=int, default=0, help="also export the policy every N steps")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import d3rlpy
    import torch

    torch.set_num_threads(1)
    data = read_hdf5(args.hdf5, args.goal)
    dataset = d3rlpy.dataset.MDPDataset(
        data["observations"], data["actions"], data["rewards"], data["terminals"], data["timeouts"]
    )
    d3rlpy.seed(args.seed)
    algo = make_algo(args.algo, args.steps, args.batch_size, args.lr)
    args.out.mkdir(parents=True, exist_ok=True)
    saved: list[int] = []
    paused = {"s": 0.0}

    def save(algo, epoch: int, step: int) -> None:
        if step == args.steps or (args.save_every and step % args.save_every == 0):
            t0 = time.perf_counter()
            algo.save_policy(str(args.out / f"policy-{step}.pt"))
            saved.append(step)
            paused["s"] += time.perf_counter() - t0

    start = time.perf_counter()
    algo.fit(
        dataset,
        n_steps=args.steps,
        n_steps_per_epoch=args.steps,
        show_progress=False,
        save_interval=10**9,
        experiment_name=f"{args.algo}-seed{args.seed}",
        with_timestamp=False,
        logger_adapter=d3rlpy.logging.NoopAdapterFactory(),
        callback=save,
    )
    steps_per_s = args.steps / (time.perf_counter() - start - paused["s"])
    info = {"algo": args.algo, "steps": args.steps, "seed": args.seed, "train_steps_per_s": steps_per_s,
            "d3rlpy": d3rlpy.__version__, "obs_dim": int(data["observations"].shape[1]),
            "saved_steps": saved}  # fmt: skip
    tmp = args.out / f".info.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(info))
    os.replace(tmp, args.out / "info.json")


if __name__ == "__main__":
    main()
