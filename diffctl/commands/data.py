"""``diffctl data``: generate, import, export and inspect offline datasets."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

IMPORT_FORMATS = ("d4rl", "minari", "zarr", "images")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("data", help="generate, import, export and inspect offline datasets")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: _usage(parser))

    gen = sub.add_parser("generate", help="generate a dataset for a task (e.g. maze2d-umaze)")
    gen.add_argument("task", help="task or dataset name, e.g. maze2d-umaze, hopper-medium or digits")
    gen.add_argument("--out", required=True, help="output store path (.zarr directory)")
    gen.add_argument("--episodes", type=int, default=None, help="number of episodes (default: the recipe's)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument(
        "--size",
        choices=("small", "d4rl"),
        default=None,
        help="maze2d and locomotion: 'small' (minutes, the default) or 'd4rl' (D4RL's step counts)",
    )
    gen.add_argument("--force", action="store_true", help="replace an existing --out")
    gen.set_defaults(func=_generate)

    imp = sub.add_parser(
        "import", help="import a D4RL HDF5 file, Minari dataset, diffusion_policy zarr or images"
    )
    imp.add_argument("format", choices=IMPORT_FORMATS)
    imp.add_argument(
        "src", help="source file or directory (images: a folder of PNGs, class subfolders, or STORE:key)"
    )
    imp.add_argument("--out", required=True, help="output store path (.zarr directory)")
    imp.add_argument("--task", default=None, help="task name for the card (and D4RL episode limits)")
    imp.add_argument(
        "--episode-limit", type=int, default=None, help="D4RL files without timeouts: split length"
    )
    imp.add_argument("--size", type=int, default=32, help="images: side in pixels to resize to")
    imp.add_argument("--channels", type=int, choices=(1, 3), default=3, help="images: 1 grey or 3 RGB")
    imp.add_argument("--force", action="store_true", help="replace an existing --out")
    imp.set_defaults(func=_import)

    exp = sub.add_parser("export", help="export a store to another format")
    exp.add_argument("format", choices=("d4rl",))
    exp.add_argument("store", help="EpisodeStore path")
    exp.add_argument("--out", required=True, help="output file (.hdf5)")
    exp.add_argument("--force", action="store_true", help="replace an existing --out")
    exp.set_defaults(func=_export)

    syn = sub.add_parser(
        "synthesize", help="imagine episodes of a policy in a world model (policy-guided synthetic data)"
    )
    syn.add_argument("source", help="the store the world model was trained on (start states)")
    syn.add_argument("--world-model", required=True, help="world model checkpoint directory")
    syn.add_argument("--policy", required=True, help="checkpoint of the policy whose actions steer it")
    syn.add_argument("--out", required=True, help="output store path (.zarr directory)")
    syn.add_argument("--episodes", type=int, default=2000, help="imagined episodes")
    syn.add_argument("--horizon", type=int, default=16, help="steps per imagined episode (at most)")
    syn.add_argument("--noise", type=float, default=0.1, help="action noise, in half action ranges")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--synthetic-only", action="store_true", help="leave the real episodes out")
    syn.add_argument("--force", action="store_true", help="replace an existing --out")
    syn.set_defaults(func=_synthesize)

    info = sub.add_parser("info", help="episodes, steps, keys and the card of a store")
    info.add_argument("path", help="EpisodeStore path")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.add_argument(
        "--verify", action="store_true", help="read every chunk and compare it with the checksums of the card"
    )
    info.set_defaults(func=_info)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _refuse_existing(out: str, force: bool) -> None:
    if Path(out).exists() and not force:
        raise FileExistsError(f"{out} already exists (use --force to replace it)")


def _size_option(task: str, size: str) -> dict[str, str]:
    """``--size`` as the generator's option: maze ``size``, locomotion ``budget``; other data has none."""
    from diffctl.datasets.generators import LOCOMOTION_DATASETS, MAZE_DATASETS

    if task in MAZE_DATASETS:
        return {"size": size}
    if task in LOCOMOTION_DATASETS:
        return {"budget": size}
    raise ValueError(f"--size applies to maze2d and locomotion datasets, not {task!r}")


def _generate(args: argparse.Namespace) -> int:
    from diffctl.datasets.generators import generate

    _refuse_existing(args.out, args.force)
    start = time.perf_counter()
    options = {} if args.size is None else _size_option(args.task, args.size)
    generate(args.task, args.out, episodes=args.episodes, seed=args.seed, force=args.force, **options)
    elapsed = time.perf_counter() - start
    print(f"generated {args.task} in {elapsed:.1f} s")
    return _info(argparse.Namespace(path=args.out, json=False, verify=False))


def _synthesize(args: argparse.Namespace) -> int:
    from diffctl.core.registry import load
    from diffctl.datasets.store import EpisodeStore
    from diffctl.envs.termination import termination_fn
    from diffctl.world_models.synthesis import SynthesisSettings, synthesize

    _refuse_existing(args.out, args.force)
    if not Path(args.source).exists():
        raise ValueError(f"no dataset store at {args.source}")
    settings = SynthesisSettings(episodes=args.episodes, horizon=args.horizon, action_noise=args.noise,
                                 seed=args.seed, include_real=not args.synthetic_only)  # fmt: skip
    model, policy = load(args.world_model), load(args.policy)
    if not callable(getattr(model, "rollout", None)):
        raise ValueError(
            f"--world-model {args.world_model} holds a {type(model).__name__}, not a world model"
        )
    origin = {"world_model": str(args.world_model), "policy": str(args.policy)}
    start = time.perf_counter()
    source = EpisodeStore.open(args.source)
    rule = termination_fn(str(source.attrs.get("task") or getattr(model, "task", None) or ""))
    synthesize(model, policy, source, args.out, settings, overwrite=args.force, origin=origin,
               terminal_fn=rule)  # fmt: skip
    print(f"synthesized {args.episodes} episodes in {time.perf_counter() - start:.1f} s")
    return _info(argparse.Namespace(path=args.out, json=False, verify=False))


def _import(args: argparse.Namespace) -> int:
    from diffctl.datasets.convert import import_dataset

    _refuse_existing(args.out, args.force)
    if args.format == "images":
        from diffctl.datasets.images import import_images

        start = time.perf_counter()
        import_images(args.src, args.out, size=args.size, channels=args.channels, force=args.force)
        print(f"imported {args.src} (images) in {time.perf_counter() - start:.1f} s")
        return _info(argparse.Namespace(path=args.out, json=False, verify=False))
    options = {"episode_limit": args.episode_limit} if args.format == "d4rl" else {}
    if args.episode_limit is not None and args.format != "d4rl":
        raise ValueError("--episode-limit applies to d4rl imports only")
    start = time.perf_counter()
    import_dataset(args.format, args.src, args.out, task=args.task, force=args.force, **options)
    print(f"imported {args.src} ({args.format}) in {time.perf_counter() - start:.1f} s")
    return _info(argparse.Namespace(path=args.out, json=False, verify=False))


def _export(args: argparse.Namespace) -> int:
    from diffctl.datasets.d4rl import export_d4rl

    dst = export_d4rl(args.store, args.out, force=args.force)
    print(f"wrote {dst} ({dst.stat().st_size / 1e6:.2f} MB)")
    return 0


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def describe(path: str) -> dict[str, Any]:
    """A JSON-able summary of a store: counts, episode length stats, keys with shapes/dtypes, its card."""
    from diffctl.datasets.store import EpisodeStore

    store = EpisodeStore.open(path)
    lengths = store.episode_lengths
    return {
        "path": str(Path(path).resolve()),
        "episodes": store.num_episodes,
        "steps": store.num_steps,
        "episode_length": {
            "min": int(lengths.min()) if lengths.size else 0,
            "mean": float(lengths.mean()) if lengths.size else 0.0,
            "max": int(lengths.max()) if lengths.size else 0,
        },
        "size_mb": round(_dir_size(Path(path)) / 1e6, 3),
        "keys": {k: {"shape": list(store.shape(k)), "dtype": str(store.dtype(k))} for k in store.keys},
        "card": store.attrs,
    }


def _info(args: argparse.Namespace) -> int:
    summary = describe(args.path)
    if args.verify:
        from diffctl.datasets import EpisodeStore

        summary["verify"] = EpisodeStore.open(args.path).verify()
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    lens = summary["episode_length"]
    print(f"{summary['path']}")
    print(f"  episodes {summary['episodes']}   steps {summary['steps']}   size {summary['size_mb']} MB")
    print(f"  episode length min {lens['min']} / mean {lens['mean']:.1f} / max {lens['max']}")
    print("  keys:")
    width = max((len(k) for k in summary["keys"]), default=0)
    for key, meta in summary["keys"].items():
        print(f"    {key:<{width}}  per-step shape {tuple(meta['shape'])}  {meta['dtype']}")
    if "verify" in summary:
        check = summary["verify"]
        if check["checked"]:
            print(
                f"  verified: {check['chunks']} chunks of {len(check['arrays'])} arrays match their checksums"
            )
        else:
            print(f"  not verified: {check['reason']}")
    if summary["card"]:
        print("  card:")
        for line in json.dumps(summary["card"], indent=2, default=str).splitlines():
            print(f"    {line}")
    return 0
