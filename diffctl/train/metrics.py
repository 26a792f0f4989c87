"""Run metrics: one JSON line per record in ``metrics.jsonl`` always, TensorBoard scalars when installed."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def _scalar(value: Any) -> float | None:
    try:
        out = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return out if math.isfinite(out) else None


class MetricsLogger:
    """Appends scalar records; a no-op on non-zero ranks (``enabled=False``)."""

    def __init__(self, run_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (left by a run that died after its last checkpoint) before resuming."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if _record_step(line) <= step]
        self.path.write_text("".join(f"{line}\n" for line in kept))

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record: dict[str, Any] = {"step": step}
        for key, value in values.items():
            scalar = _scalar(value)
            if scalar is not None:
                record[key] = scalar
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step":
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _record_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 0


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of a run, in order."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
