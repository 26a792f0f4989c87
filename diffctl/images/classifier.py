"""The diffusion classifier: classify an image by which label's denoiser reconstructs it best.

For each image the same ``K`` pairs ``(sigma_k, eps_k)`` are used for every label ``c``; the score of ``c`` is
``mean_k w(sigma_k) |D(x + sigma_k eps_k, sigma_k, c) - x|^2`` (the training loss, a bound on ``-log p(x|c)``)
and the lowest wins. Early elimination: after the first ``first_round`` pairs only the ``keep`` best labels
are scored on the rest, cutting network evaluations when there are many labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

ConditionalDenoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Classification:
    """Predicted labels, per-label mean errors (inf for eliminated labels) and network evaluations per
    image."""

    labels: torch.Tensor
    errors: torch.Tensor
    nfe_per_image: float


def classifier_sigmas(k: int, p_mean: float = -1.2, p_std: float = 1.2) -> torch.Tensor:
    """``k`` fixed noise levels at evenly spaced quantiles of the training log-normal, in a low-discrepancy
    order (golden-ratio steps through the quantiles) so that every prefix, e.g. the first round of early
    elimination, spreads over the whole range instead of holding only the lowest levels."""
    if k < 1:
        raise ValueError(f"the diffusion classifier needs at least 1 noise level, got {k}")
    q = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    order = torch.argsort(torch.arange(k, dtype=torch.float64) * 0.6180339887498949 % 1.0)
    z = math.sqrt(2.0) * torch.erfinv(2 * q[order.argsort()] - 1)
    return (p_mean + p_std * z).exp()


def diffusion_classify(
    denoise: ConditionalDenoise,
    x: torch.Tensor,
    num_classes: int,
    sigmas: torch.Tensor,
    *,
    sigma_data: float = 0.5,
    first_round: int | None = None,
    keep: int | None = None,
    batch: int = 256,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Classification:
    """Labels ``(n,)`` of images ``x`` ``(n, ...)`` under ``denoise(x, sigma, labels)``; see the module.
    ``progress`` shows a bar over network evaluations."""
    if num_classes < 1:
        raise ValueError("the diffusion classifier needs a class-conditional model (num_classes >= 1)")
    sig = torch.as_tensor(sigmas, dtype=x.dtype, device=x.device).reshape(-1)
    k, n = len(sig), x.shape[0]
    first = k if first_round is None else max(1, min(int(first_round), k))
    keep = num_classes if keep is None else max(1, min(int(keep), num_classes))
    noise = torch.randn((n, k, *x.shape[1:]), generator=generator).to(x.device, x.dtype)
    weight = (sig**2 + sigma_data**2) / (sig * sigma_data) ** 2
    totals = torch.zeros(n, num_classes, dtype=torch.float64, device=x.device)
    evals = 0
    planned = n * num_classes * first + n * keep * (k - first)
    bar = tqdm(total=planned, desc="classify", unit="eval", disable=not progress, leave=False)

    def score(rows: torch.Tensor, labels: torch.Tensor, levels: range) -> torch.Tensor:
        """Summed weighted errors of (image rows[j], label labels[j]) over noise indices ``levels``."""
        out = torch.zeros(len(rows), dtype=torch.float64, device=x.device)
        all_js = torch.arange(len(rows), device=x.device).repeat(len(levels))
        all_ls = torch.tensor(list(levels), device=x.device).repeat_interleave(len(rows))
        for start in range(0, len(all_js), batch):
            js, ls = all_js[start : start + batch], all_ls[start : start + batch]
            clean = x[rows[js]]
            noisy = clean + sig[ls].reshape(-1, *[1] * (x.ndim - 1)) * noise[rows[js], ls]
            err = (denoise(noisy, sig[ls], labels[js]) - clean).pow(2).flatten(1).mean(1) * weight[ls]
            out.index_add_(0, js, err.double())
            bar.update(len(js))
        return out

    all_rows = torch.arange(n, device=x.device).repeat_interleave(num_classes)
    all_labels = torch.arange(num_classes, device=x.device).repeat(n)
    totals += score(all_rows, all_labels, range(first)).reshape(n, num_classes)
    evals += n * num_classes * first
    if first < k:
        kept = totals.topk(keep, dim=1, largest=False).indices  # (n, keep)
        rows = torch.arange(n, device=x.device).repeat_interleave(keep)
        extra = score(rows, kept.reshape(-1), range(first, k)).reshape(n, keep)
        evals += n * keep * (k - first)
        final = torch.full_like(totals, math.inf)
        final.scatter_(1, kept, (totals.gather(1, kept) + extra) / k)
    else:
        final = totals / k
    bar.close()
    return Classification(final.argmin(dim=1), final, evals / max(n, 1))
