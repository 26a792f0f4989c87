"""Sample quality without downloaded weights: a small CNN trained here on the real images.

``train_classifier`` fits ``SmallCNN`` on a labelled image set; its accuracy on class-conditional samples
says whether they show their class, and ``feature_frechet`` compares the Gaussian statistics of its
penultimate features on two image sets. That is a Frechet distance in this CNN's feature space, comparable
only between runs that use the same CNN: it is not FID (no Inception network).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


class SmallCNN(nn.Module):
    """Three conv blocks, global average pooling, a 128-wide feature layer and a linear head."""

    def __init__(self, channels: int, num_classes: int, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())

        self.body = nn.Sequential(
            block(channels, width), block(width, width), nn.AvgPool2d(2),
            block(width, 2 * width), block(2 * width, 2 * width), nn.AvgPool2d(2),
            block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * width, 128), nn.SiLU(),
        )  # fmt: skip
        self.head = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 1/8 of the side (padding by edge replication)."""
    pad = max(1, x.shape[-1] // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    return padded[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, steps: int = 1500, batch: int = 128,
    seed: int = 0, width: int = 32, progress: bool = True,
) -> SmallCNN:  # fmt: skip
    """A ``SmallCNN`` fitted on ``images`` (n, C, H, W) in [-1, 1] with integer ``labels`` (AdamW, shifts)."""
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(
            f"need as many labels as images (> 0), got {len(images)} images, {len(labels)} labels"
        )
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SmallCNN(images.shape[1], num_classes, width)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    net.train()
    for _ in tqdm(range(steps), desc="metric classifier", disable=not progress, leave=False):
        idx = torch.randint(0, len(images), (batch,), generator=g)
        loss = F.cross_entropy(net(_augment(images[idx], g)), labels[idx].long())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


@torch.no_grad()
def predict(net: SmallCNN, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Class predictions (n,)."""
    return torch.cat([net(images[i : i + batch]).argmax(1) for i in range(0, len(images), batch)])


@torch.no_grad()
def features(net: SmallCNN, images: torch.Tensor, batch: int = 512) -> np.ndarray:
    """Penultimate features (n, 128) as float64."""
    return (
        torch.cat([net.features(images[i : i + batch]) for i in range(0, len(images), batch)])
        .double()
        .numpy()
    )


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((m + m.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``a`` (n, d) and ``b`` (m, d):
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two feature sets (n >= 2, d) of the same width, got {a.shape}, {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = _sqrt_psd(s_a)
    cross = _sqrt_psd(root @ s_b @ root)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(cross))


def feature_frechet(net: SmallCNN, real: torch.Tensor, generated: torch.Tensor) -> float:
    """``frechet_distance`` of ``net``'s features on real and generated images (not FID; see the module)."""
    return frechet_distance(features(net, real), features(net, generated))


def label_verifier(net: SmallCNN) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A verifier for best-of-N seed selection: the log-probability ``net`` gives each image's label."""

    @torch.no_grad()
    def score(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return net(images).log_softmax(1).gather(1, labels.reshape(-1, 1).long()).squeeze(1)

    return score
