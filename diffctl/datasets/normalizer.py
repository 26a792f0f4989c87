"""Per-feature affine normalizers (min-max to [-1, 1] or gaussian) for numpy arrays and torch tensors.

Statistics are taken over every axis but the last, so one normalizer serves (N, D), (B, T, D) and (D,) inputs.
They round-trip through JSON (``to_dict`` / ``from_dict``) so agents save them in ``config.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

MODES = ("limits", "gaussian")
_EPS = 1e-6


def _to_numpy(values: Any) -> np.ndarray:
    if type(values).__module__.startswith("torch"):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


class Normalizer:
    """``normalize(x) = x * scale + offset`` per feature (last axis); ``unnormalize`` inverts it."""

    def __init__(
        self, scale: Any, offset: Any, *, mode: str = "limits", stats: Mapping[str, Any] | None = None
    ):
        if mode not in MODES:
            raise ValueError(f"unknown normalizer mode {mode!r}; expected one of {MODES}")
        self.scale = np.asarray(scale, dtype=np.float64).reshape(-1)
        self.offset = np.asarray(offset, dtype=np.float64).reshape(-1)
        if self.scale.shape != self.offset.shape:
            raise ValueError(f"normalizer scale {self.scale.shape} and offset {self.offset.shape} differ")
        if not (np.isfinite(self.scale).all() and np.isfinite(self.offset).all()) or np.any(self.scale == 0):
            raise ValueError("normalizer scale/offset must be finite and the scale non-zero")
        self.mode = mode
        self.stats = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in (stats or {}).items()}
        self._torch_cache: dict[tuple[Any, Any], tuple[Any, Any]] = {}

    @property
    def dim(self) -> int:
        return int(self.scale.size)

    @classmethod
    def fit(cls, array: Any, mode: str = "limits", *, name: str = "array") -> Normalizer:
        """Fit on data of shape (..., D): ``limits`` maps [min, max] to [-1, 1]; ``gaussian`` to zero
        mean, unit std. Constant features map to 0 (limits) or are only centred (gaussian)."""
        if mode not in MODES:
            raise ValueError(f"unknown normalizer mode {mode!r}; expected one of {MODES}")
        data = _to_numpy(array)
        if data.ndim == 0 or data.size == 0:
            raise ValueError(f"cannot fit a normalizer on empty or scalar {name} of shape {data.shape}")
        flat = data.reshape(-1, data.shape[-1]) if data.ndim > 1 else data.reshape(-1, 1)
        if not np.isfinite(flat).all():
            raise ValueError(f"cannot fit a normalizer: {name} contains NaN or inf")
        lo, hi = flat.min(axis=0), flat.max(axis=0)
        mean, std = flat.mean(axis=0), flat.std(axis=0)
        stats = {"min": lo, "max": hi, "mean": mean, "std": std}
        if mode == "limits":
            span = hi - lo
            wide = span > _EPS
            scale = np.where(wide, 2.0 / np.where(wide, span, 1.0), 1.0)
            offset = np.where(wide, -1.0 - lo * scale, -lo)
        else:
            safe = np.where(std > _EPS, std, 1.0)
            scale = 1.0 / safe
            offset = -mean / safe
        return cls(scale, offset, mode=mode, stats=stats)

    @classmethod
    def identity(cls, dim: int) -> Normalizer:
        return cls(np.ones(dim), np.zeros(dim), mode="limits")

    def _params(self, x: Any) -> tuple[Any, Any]:
        if x.shape[-1] != self.dim if x.ndim else True:
            raise ValueError(f"normalizer expects last dimension {self.dim}, got shape {tuple(x.shape)}")
        if type(x).__module__.startswith("torch"):
            key = (x.device, x.dtype)
            if key not in self._torch_cache:
                import torch

                dtype = x.dtype if x.dtype.is_floating_point else torch.float32
                self._torch_cache[key] = (
                    torch.as_tensor(self.scale, dtype=dtype, device=x.device),
                    torch.as_tensor(self.offset, dtype=dtype, device=x.device),
                )
            return self._torch_cache[key]
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
        return self.scale.astype(dtype), self.offset.astype(dtype)

    def normalize(self, x: Any) -> Any:
        x = x if type(x).__module__.startswith("torch") else np.asarray(x)
        scale, offset = self._params(x)
        return x * scale + offset

    def unnormalize(self, x: Any) -> Any:
        x = x if type(x).__module__.startswith("torch") else np.asarray(x)
        scale, offset = self._params(x)
        return (x - offset) / scale

    __call__ = normalize

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "scale": self.scale.tolist(),
            "offset": self.offset.tolist(),
            "stats": {k: v.tolist() for k, v in self.stats.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Normalizer:
        missing = [k for k in ("mode", "scale", "offset") if k not in data]
        if missing:
            raise ValueError(f"normalizer dict is missing keys {missing}; got {sorted(data)}")
        return cls(data["scale"], data["offset"], mode=data["mode"], stats=data.get("stats"))

    def __repr__(self) -> str:
        return f"Normalizer(mode={self.mode!r}, dim={self.dim})"
