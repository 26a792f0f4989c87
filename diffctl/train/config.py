"""Training hyperparameters as one typed config, built from a plain dict (the hydra ``training`` node)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from diffctl.core.config import Config


@dataclass
class TrainConfig(Config):
    """Everything the Trainer needs besides the agent and the data; the single source of these defaults.

    Defaults follow the Diffusion Policy recipe (AdamW 1e-4, 500 warmup steps, cosine, EMA power 0.75).
    """

    section: ClassVar[str] = "training"

    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 256
    """Samples per step and process (data-parallel runs see world_size * batch_size)."""
    lr: float = 1e-4
    """Peak AdamW learning rate."""
    weight_decay: float = 1e-6
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.95, 0.999)
    """AdamW betas."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    warmup_steps: int = 500
    """Linear warmup steps before the cosine decay."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of ``lr``."""
    grad_clip: float | None = 1.0
    """Gradient-norm clip (None or <= 0: off)."""
    ema: bool = True
    """Keep an EMA of the weights; checkpoints and evaluations use it."""
    ema_power: float = 0.75
    """EMA warmup power (diffusers' EMAModel)."""
    ema_inv_gamma: float = 1.0
    """EMA warmup inverse gamma."""
    ema_min_decay: float = 0.0
    """Smallest EMA decay."""
    ema_max_decay: float = 0.9999
    """Largest EMA decay."""
    ema_update_after: int = 0
    """Steps before the EMA starts."""
    seed: int = 0
    """Seed of batch sampling and of everything the Trainer draws."""
    checkpoint_every: int = 1000
    """Steps between resumable checkpoints (0: only at the end)."""
    keep_checkpoints: int = 2
    """Resumable checkpoints kept."""
    eval_every: int = 0
    """Steps between closed-loop evaluations (0: only at the end)."""
    eval_metric: str = "success_rate"
    """Evaluation metric that picks the best checkpoint."""
    log_every: int = 10
    """Steps between metrics.jsonl records."""
    resume: bool = False
    """Continue from the run directory's latest checkpoint."""
    progress: bool = True
    """Show a progress bar."""
    tensorboard: bool = True
    """Also log to TensorBoard when it is installed."""
    device: str = "auto"
    """``auto``, ``cpu`` or ``cuda[:N]``."""

    def validate(self) -> None:
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
        if not all(0.0 <= b < 1.0 for b in self.betas):
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
