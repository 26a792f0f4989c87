"""Training: one loop for every agent (AdamW + warmup/cosine, EMA, checkpoints, resume, data parallel)."""

from diffctl.train.config import TrainConfig
from diffctl.train.ema import EMA, ema_decay
from diffctl.train.lr import warmup_cosine
from diffctl.train.trainer import Trainer

__all__ = ["EMA", "TrainConfig", "Trainer", "ema_decay", "warmup_cosine"]
