"""Exact test bed: a diagonal Gaussian mixture, its exact denoiser and its probability-flow ODE.

For data ``sum_k w_k N(mu_k, diag(std_k^2))`` the data noised to ``sigma`` is the same mixture with variances
``std_k^2 + sigma^2``, and ``E[x0 | x] = sum_k r_k(x) (mu_k + std_k^2 / (std_k^2 + sigma^2) (x - mu_k))`` with
``r_k`` the posterior component weights. Sampler error is thus measurable with no training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["GaussianMixture", "sliced_wasserstein"]


class GaussianMixture:
    """Mixture of K diagonal Gaussians over events of any shape.

    ``means``: (K, *event); ``stds``: scalar, (K,) or (K, *event); ``weights``: (K,) non-negative
    (normalized; default uniform).
    """

    def __init__(
        self,
        means: torch.Tensor | Sequence,
        stds: torch.Tensor | Sequence | float,
        weights: torch.Tensor | Sequence | None = None,
    ) -> None:
        mu = torch.as_tensor(means, dtype=torch.float64)
        if mu.ndim < 2 or mu.shape[0] < 1:
            raise ValueError(f"means must have shape (K, *event) with K >= 1, got {tuple(mu.shape)}")
        k = mu.shape[0]
        self.event_shape = tuple(mu.shape[1:])
        flat_mu = mu.reshape(k, -1)
        std = torch.as_tensor(stds, dtype=torch.float64)
        if std.ndim == 0 or std.shape == (k,):
            std = std.reshape(-1, 1).expand_as(flat_mu) if std.ndim else std.expand_as(flat_mu)
        elif std.shape == mu.shape:
            std = std.reshape(k, -1)
        else:
            raise ValueError(f"stds must be a scalar, (K,) or {tuple(mu.shape)}, got {tuple(std.shape)}")
        if not (std > 0).all():
            raise ValueError("stds must all be > 0")
        w = (
            torch.ones(k, dtype=torch.float64)
            if weights is None
            else torch.as_tensor(weights, dtype=torch.float64)
        )
        if w.shape != (k,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be ({k},), non-negative with positive sum, got {w.tolist()}")
        self.means = flat_mu.contiguous()
        self.stds = std.contiguous()
        self.weights = w / w.sum()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x must have shape (B, *{self.event_shape}), got {tuple(x.shape)}")
        return x.reshape(x.shape[0], -1)

    def _sigma(self, sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        return s.expand(x.shape[0]) if s.ndim == 0 else s.reshape(x.shape[0])

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            self.means.to(x.device, x.dtype),
            self.stds.to(x.device, x.dtype),
            self.weights.to(x.device, x.dtype),
        )

    def responsibilities(self, x: torch.Tensor, sigma: torch.Tensor | float = 0.0) -> torch.Tensor:
        """Posterior component probabilities ``p(k | x)`` at noise level sigma, shape (B, K)."""
        xf = self._flat(x)
        mu, std, w = self._stats(xf)
        var = std[None] ** 2 + self._sigma(sigma, xf)[:, None, None] ** 2
        diff = xf[:, None, :] - mu[None]
        logp = -0.5 * (diff**2 / var + var.log()).sum(-1) + w.log()[None]
        return torch.softmax(logp, dim=-1)

    def log_prob(self, x: torch.Tensor, sigma: torch.Tensor | float = 0.0) -> torch.Tensor:
        """Log density of the data noised to sigma, shape (B,)."""
        xf = self._flat(x)
        mu, std, w = self._stats(xf)
        var = std[None] ** 2 + self._sigma(sigma, xf)[:, None, None] ** 2
        diff = xf[:, None, :] - mu[None]
        logp = -0.5 * (diff**2 / var + var.log() + math.log(2 * math.pi)).sum(-1) + w.log()[None]
        return torch.logsumexp(logp, dim=-1)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """Exact ``E[x0 | x_sigma = x]`` (the ideal denoiser), same shape and dtype as x."""
        xf = self._flat(x)
        mu, std, w = self._stats(xf)
        s2 = self._sigma(sigma, xf)[:, None, None] ** 2
        var = std[None] ** 2 + s2
        diff = xf[:, None, :] - mu[None]
        logp = -0.5 * (diff**2 / var + var.log()).sum(-1) + w.log()[None]
        r = torch.softmax(logp, dim=-1)
        post = mu[None] + (std[None] ** 2 / var) * diff
        return (r[:, :, None] * post).sum(1).reshape(x.shape)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        return self.denoise(x, sigma)

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        """``n`` exact samples of the clean data, shape (n, *event)."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[comp] + self.stds[comp] * z).reshape(n, *self.event_shape).to(dtype)

    def mean(self) -> torch.Tensor:
        """Exact mean, shape event."""
        return (self.weights[:, None] * self.means).sum(0).reshape(self.event_shape)

    def cov(self) -> torch.Tensor:
        """Exact covariance of the flattened event, shape (D, D)."""
        m = self.mean().reshape(-1)
        second = torch.einsum("k,kd,ke->de", self.weights, self.means, self.means)
        second = second + torch.diag((self.weights[:, None] * self.stds**2).sum(0))
        return second - torch.outer(m, m)

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """Most likely component of each clean sample, shape (B,)."""
        return self.responsibilities(x, 0.0).argmax(-1)

    def ode_velocity(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """Probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma``."""
        s = self._sigma(sigma, x).reshape(-1, *([1] * (x.ndim - 1)))
        return (x - self.denoise(x, sigma)) / s

    def ode_solve(
        self,
        x: torch.Tensor,
        sigma_from: float,
        sigma_to: float,
        rtol: float = 1e-10,
        atol: float = 1e-10,
    ) -> torch.Tensor:
        """Reference solution of the probability-flow ODE from sigma_from to sigma_to (scipy DOP853, float64).

        Integrates ``dx/du = x - D(x, e^u)`` in ``u = log sigma``; sigma_to = 0 is reached through 1e-9, where
        the remaining change is below 1e-17.
        """
        from scipy.integrate import solve_ivp

        if not sigma_from > sigma_to >= 0:
            raise ValueError(f"need sigma_from > sigma_to >= 0, got {sigma_from}, {sigma_to}")
        shape = x.shape
        x64 = x.detach().to("cpu", torch.float64)

        def rhs(u: float, y: object) -> object:
            xt = torch.from_numpy(y).reshape(shape)
            return (xt - self.denoise(xt, math.exp(u))).reshape(-1).numpy()

        u1 = math.log(max(sigma_to, 1e-9))
        sol = solve_ivp(
            rhs, (math.log(sigma_from), u1), x64.reshape(-1).numpy(), method="DOP853", rtol=rtol, atol=atol
        )
        if not sol.success:
            raise RuntimeError(f"reference ODE solve failed: {sol.message}")
        return torch.from_numpy(sol.y[:, -1].copy()).reshape(shape).to(x.dtype)


def sliced_wasserstein(
    a: torch.Tensor, b: torch.Tensor, n_projections: int = 256, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sliced 2-Wasserstein distance between two equal-size sample sets (flattened events), scalar float64."""
    af = a.reshape(a.shape[0], -1).to(torch.float64)
    bf = b.reshape(b.shape[0], -1).to(torch.float64)
    if af.shape != bf.shape:
        raise ValueError(f"sample sets must have equal shapes, got {tuple(af.shape)} and {tuple(bf.shape)}")
    dirs = torch.randn(af.shape[1], n_projections, generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa = (af @ dirs).sort(dim=0).values
    pb = (bf @ dirs).sort(dim=0).values
    return ((pa - pb) ** 2).mean().sqrt()
