"""Image datasets with no download: scikit-learn's digits, procedural shapes, simulator frames, PNG folders.

An image dataset is an ``EpisodeStore`` (written atomically, chunked, compressed and checksummed) with
``images`` (N, C, H, W) uint8 and ``labels`` (N,) int64 (-1 when unlabelled), all in one episode. The card
(``store.attrs``) records ``kind: images``, the class names and the split: the first ``split.train`` rows are
the training set, the rest are held out. ``ImageDataset`` serves one split as float images in [-1, 1].
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffctl.datasets.generators.card import make_card
from diffctl.datasets.store import EpisodeStore

IMAGE_DATASETS = ("digits", "shapes", "frames")
SHAPES = ("circle", "square", "triangle", "cross")
HELD_OUT = 0.2


def _need(module: str, extra: str = "images") -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{module} is needed here: pip install 'diffctl[{extra}]' ({err})") from err


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of uint8 ``(N, C, h, w)`` images to ``(N, C, size, size)`` uint8."""
    x = torch.as_tensor(images, dtype=torch.float32)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).numpy()


def digits_images(size: int = 16) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's 1,797 8x8 digits (shipped with it, 17 grey levels) upscaled to ``size``, in the shipped
    order; labels 0-9."""
    datasets = _need("sklearn.datasets")
    digits = datasets.load_digits()
    images = (digits.images.astype(np.float64) * (255.0 / 16.0)).round().astype(np.uint8)[:, None]
    return resize(images, size), digits.target.astype(np.int64), [str(d) for d in range(10)]


def shapes_images(n: int = 4000, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``n`` RGB images of one filled shape on a dark background: class = shape (circle, square, triangle,
    cross); colour, size and position are random."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    images = np.zeros((n, 3, size, size), np.uint8)
    labels = rng.integers(0, len(SHAPES), n)
    for i, label in enumerate(labels):
        r = rng.uniform(0.18, 0.3) * size
        cx, cy = rng.uniform(r, size - r, 2)
        dx, dy = xx - cx, yy - cy
        if label == 0:
            mask = dx**2 + dy**2 <= r**2
        elif label == 1:
            mask = (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
        elif label == 2:
            mask = (dy <= 0.8 * r) & (dy >= -r + 2 * np.abs(dx))
        else:
            mask = ((np.abs(dx) <= 0.3 * r) | (np.abs(dy) <= 0.3 * r)) & (np.abs(dx) <= r) & (np.abs(dy) <= r)
        colour = rng.integers(90, 256, 3)
        background = rng.integers(0, 50, 3)
        images[i] = np.where(mask[None], colour[:, None, None], background[:, None, None])
    return images, labels.astype(np.int64), list(SHAPES)


def frames_images(task: str = "maze2d-umaze", n: int = 2000, size: int = 32, seed: int = 0) -> tuple:
    """``n`` frames rendered from ``task``'s simulator under random actions, unlabelled (``MUJOCO_GL=egl``
    renders offscreen on the CPU)."""
    from diffctl.envs.registry import make_env

    env = make_env(task, seed=seed, render_mode="rgb_array", width=size, height=size)
    rng = np.random.default_rng(seed)
    frames = []
    env.reset(seed=seed)
    while len(frames) < n:
        _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, env.action_space.shape))
        frames.append(np.asarray(env.render()).transpose(2, 0, 1))
        if terminated or truncated or len(frames) % 200 == 0:
            env.reset(seed=int(rng.integers(1 << 31)))
    env.close()
    return resize(np.stack(frames), size), np.full(n, -1, np.int64), []


def folder_images(root: str | os.PathLike[str], size: int, channels: int = 3) -> tuple:
    """PNGs under ``root``: one subfolder per class (its name is the class) or a flat folder (unlabelled)."""
    image_module = _need("PIL.Image")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    groups = [(i, sorted((root / c).glob("*.png"))) for i, c in enumerate(classes)] or [
        (-1, sorted(root.glob("*.png")))
    ]
    mode = "L" if channels == 1 else "RGB"
    images, labels = [], []
    for label, files in groups:
        for f in files:
            with image_module.open(f) as im:
                pixels = np.asarray(im.convert(mode).resize((size, size), image_module.BILINEAR), np.uint8)
            images.append(pixels.reshape(size, size, channels).transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise ValueError(f"no .png files in {root} (expected class subfolders of PNGs, or PNGs)")
    return np.stack(images), np.asarray(labels, np.int64), classes


def store_images(source: str, key: str, size: int) -> tuple:
    """Frames under ``key`` of an ``EpisodeStore``, uint8 ``(N, C, H, W)`` or ``(N, H, W, C)``; unlabelled."""
    store = EpisodeStore.open(source)
    if key not in store.keys:
        raise ValueError(f"{source} has no key {key!r}; keys: {store.keys}")
    frames = store.array(key)
    if frames.dtype != np.uint8 or frames.ndim != 4:
        raise ValueError(
            f"{source}:{key} must hold uint8 images (N, C, H, W) or (N, H, W, C), "
            f"got {frames.dtype} {frames.shape}"
        )
    if frames.shape[-1] in (1, 3) and frames.shape[1] not in (1, 3):
        frames = frames.transpose(0, 3, 1, 2)
    return resize(frames, size), np.full(len(frames), -1, np.int64), []


def write_image_store(
    path: str | os.PathLike[str],
    images: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    *,
    dataset: str,
    recipe: str,
    seed: int = 0,
    train: int | None = None,
    force: bool = False,
    seconds: float = 0.0,
) -> EpisodeStore:
    """Write an image store (see the module docstring); ``train`` rows form the training split (default:
    the first 80%)."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"images must be uint8 (N, C, H, W) with C 1 or 3, got {images.dtype} {images.shape}"
        )
    if labels.shape != (len(images),):
        raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}")
    n_train = int(train if train is not None else round(len(images) * (1 - HELD_OUT)))
    card = make_card(
        task=dataset, dataset=dataset, recipe=recipe, seed=seed, budgets={"images": len(images)},
        behaviour={}, generation_seconds=seconds, kind="images", classes=list(classes),
        split={"train": n_train, "held_out": int(len(images) - n_train)},
        image_shape=[int(s) for s in images.shape[1:]],
    )  # fmt: skip
    return EpisodeStore.from_arrays(
        {"images": images, "labels": labels.astype(np.int64)}, np.array([len(images)]), path=path,
        overwrite=force, attrs=card,
    )  # fmt: skip


def generate_images(
    name: str, out: str | os.PathLike[str], *, seed: int = 0, force: bool = False, size: int | None = None,
    n: int | None = None, task: str = "maze2d-umaze", **options: Any,
) -> EpisodeStore:  # fmt: skip
    """Generate image dataset ``name`` (``digits``, ``shapes`` or ``frames``) into a store at ``out``."""
    if options:
        raise ValueError(
            f"unknown options {sorted(options)} for image dataset {name!r}; valid: size, n, task"
        )
    t0 = time.perf_counter()
    if name == "digits":
        images, labels, classes = digits_images(size or 16)
        recipe = f"sklearn digits 8x8 -> {size or 16}px bilinear; last 20% of the shipped order held out"
    elif name == "shapes":
        images, labels, classes = shapes_images(n or 4000, size or 32, seed)
        recipe = f"procedural shapes {SHAPES}, random colour/size/position, {size or 32}px"
    elif name == "frames":
        images, labels, classes = frames_images(task, n or 2000, size or 32, seed)
        recipe = f"{task} frames under random actions, {size or 32}px"
    else:
        raise ValueError(f"unknown image dataset {name!r}; valid: {', '.join(IMAGE_DATASETS)}")
    seconds = time.perf_counter() - t0
    return write_image_store(
        out, images, labels, classes, dataset=name, recipe=recipe, seed=seed, force=force, seconds=seconds
    )


def import_images(
    source: str, out: str | os.PathLike[str], *, size: int, channels: int = 3, force: bool = False
) -> EpisodeStore:
    """Import a folder of PNGs, or ``STORE:key`` (an image key of an episode store), as an image store."""
    store_path, _, key = source.rpartition(":")
    if key and store_path and Path(store_path).is_dir() and not Path(source).exists():
        images, labels, classes = store_images(store_path, key, size)
    else:
        images, labels, classes = folder_images(source, size, channels)
    return write_image_store(
        out, images, labels, classes, dataset=Path(source).name, recipe=f"imported from {source}", force=force
    )


def check_image_store(store: EpisodeStore) -> dict[str, Any]:
    """The card of an image store, or a ValueError naming what is missing."""
    card = dict(store.attrs)
    missing = [k for k in ("images", "labels") if k not in store.keys]
    if card.get("kind") != "images" or missing:
        raise ValueError(
            f"{store.path} is not an image store (needs card kind 'images' and keys images, labels; has "
            f"{store.keys}); generate one with diffctl data generate digits or import PNGs"
        )
    return card


class ImageDataset:
    """One split of an image store: ``get_batch(idx)`` gives ``images`` (B, C, H, W) in [-1, 1] and
    ``labels`` (B,)."""

    def __init__(self, store: EpisodeStore, split: str = "train") -> None:
        card = check_image_store(store)
        if split not in ("train", "held_out", "all"):
            raise ValueError(f"split must be 'train', 'held_out' or 'all', got {split!r}")
        images, labels = store.array("images"), store.array("labels")
        n_train = int(card.get("split", {}).get("train", len(images)))
        rows = {"train": slice(0, n_train), "held_out": slice(n_train, None), "all": slice(None)}[split]
        self.images = torch.as_tensor(np.ascontiguousarray(images[rows]))
        self.labels = torch.as_tensor(np.ascontiguousarray(labels[rows]))
        self.classes: list[str] = list(card.get("classes", []))
        self.split = split

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.images)

    def get_batch(self, indices: Any) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {"images": to_float(self.images[idx]), "labels": self.labels[idx]}

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images in [-1, 1] and their labels."""
        return to_float(self.images), self.labels


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8 (clamped)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
