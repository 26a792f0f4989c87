"""Training hyperparameters as one typed dataclass, built from a plain dict (the hydra ``training`` node)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass
class TrainConfig:
    """Everything the Trainer needs besides the agent and the data.

    Defaults follow the Diffusion Policy recipe (AdamW 1e-4, 500 warmup steps, cosine, EMA power 0.75).
    ``batch_size`` is per process: data-parallel runs see ``world_size * batch_size`` samples per step.
    """

    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 1e-6
    betas: tuple[float, float] = (0.95, 0.999)
    adam_eps: float = 1e-8
    warmup_steps: int = 500
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    ema: bool = True
    ema_power: float = 0.75
    ema_inv_gamma: float = 1.0
    ema_min_decay: float = 0.0
    ema_max_decay: float = 0.9999
    ema_update_after: int = 0
    seed: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    eval_every: int = 0
    eval_metric: str = "success_rate"
    log_every: int = 10
    resume: bool = False
    progress: bool = True
    tensorboard: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        self._coerce_types()
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        positive = ("steps", "batch_size", "lr", "log_every", "ema_power", "ema_inv_gamma")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"training.{name} must be positive, got {getattr(self, name)!r}")
        non_negative = ("warmup_steps", "weight_decay", "checkpoint_every", "eval_every", "ema_update_after")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"training.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"training.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"training.betas must be two values in [0, 1), got {self.betas}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"training.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            self.grad_clip = None
        if not 0.0 <= self.ema_min_decay <= self.ema_max_decay <= 1.0:
            raise ValueError(
                "training.ema_min_decay and ema_max_decay must satisfy 0 <= min <= max <= 1, "
                f"got {self.ema_min_decay} and {self.ema_max_decay}"
            )
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"training.device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")

    def _coerce_types(self) -> None:
        """Turn hydra's strings/ints into the declared types; a value that does not convert names its key."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            declared = str(f.type)
            if value is None and "None" in declared:
                continue
            kind = declared.split(" ")[0]
            try:
                setattr(self, f.name, _cast(kind, value))
            except (TypeError, ValueError):
                raise ValueError(f"training.{f.name} must be of type {declared}, got {value!r}") from None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping; unknown keys raise ValueError listing the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown training keys {unknown}; valid keys: {sorted(names)}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out


def _cast(kind: str, value: Any) -> Any:
    """Strict conversion: no bool where a number is expected, no fractional value for an int."""
    if kind == "bool":
        if not isinstance(value, bool):
            raise TypeError(kind)
        return value
    if isinstance(value, bool):
        raise TypeError(kind)
    if kind == "int":
        number = float(value)
        if not number.is_integer():
            raise ValueError(kind)
        return int(number)
    if kind == "float":
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise TypeError(kind)
        return value
    return value
