"""Run metrics: one JSON line per record in ``metrics.jsonl`` always, TensorBoard scalars when installed."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from diffctl.atomic import atomic_path, write_text

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
        """Drop records past ``step`` (left by a run that died after its last checkpoint) and torn lines
        before resuming; the file is replaced atomically."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            record_step = _record_step(line)
            if record_step is not None and record_step <= step:
                kept.append(line)
        write_text(self.path, "".join(f"{line}\n" for line in kept))

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


def _record_step(line: str) -> int | None:
    """The step of a record line, None for a line that is not a JSON record (torn by a killed run)."""
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of a run, in order. A torn last line (a run killed while appending) is dropped; any other
    unreadable line is a ValueError naming the file and line."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    records = []
    for k, (number, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if k == len(lines) - 1:
                break
            raise ValueError(f"{path} line {number} is not a JSON record: {err}") from err
    return records


CURVE_KEYS = (
    "eval/normalized_score", "eval/success_rate", "eval/mean_return",
    "train/success_rate", "train/mean_return",
)  # fmt: skip
"""Panels beside the loss: closed-loop evaluations, and the rollouts of fine-tuning runs in simulation."""


def plot_learning_curves(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """``learning_curves.png`` in ``run_dir``: training loss and every metric of ``CURVE_KEYS`` the run
    logged, against the step. Returns the path, or None when the run logged nothing to plot."""
    records = read_metrics(run_dir)
    loss = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), (int, float))]
    evals = {
        key: [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        for key in CURVE_KEYS
    }
    panels = ([("training loss", loss)] if loss else []) + [(k, v) for k, v in evals.items() if v]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (title, points) in zip(axes[0], panels, strict=True):
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, ms=3)
        if title == "training loss" and min(values) > 0:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(out) if out is not None else Path(run_dir) / "learning_curves.png"
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return path
