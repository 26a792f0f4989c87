"""Trainer: LR and EMA schedules, resume equivalence, atomic checkpoints, best-checkpoint selection.

Uses a tiny in-test regression agent and dataset so these tests do not depend on the policy or dataset code.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import TinyAgent, TinyDataset, config, flat_weights
from torch import nn

from diffctl.train import EMA, TrainConfig, Trainer, ema_decay, warmup_cosine
from diffctl.train.checkpoint import list_step_checkpoints
from diffctl.train.metrics import read_metrics


def test_warmup_cosine_values() -> None:
    kw = dict(total_steps=11, warmup_steps=4)
    assert [warmup_cosine(s, **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine(4, **kw) == pytest.approx(1.0)
    assert warmup_cosine(7, **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert warmup_cosine(10, **kw) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(10, total_steps=11, warmup_steps=4, min_ratio=0.1) == pytest.approx(0.1)
    values = [warmup_cosine(s, **kw) for s in range(4, 11)]
    assert all(a > b for a, b in itertools.pairwise(values))
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine(0, total_steps=0, warmup_steps=0)


def test_ema_power_schedule_values() -> None:
    assert ema_decay(1) == 0.0
    assert ema_decay(2) == pytest.approx(1 - 2**-0.75)
    assert ema_decay(11) == pytest.approx(1 - 11**-0.75)
    assert ema_decay(10**9) == 0.9999
    assert ema_decay(5, update_after=10) == 0.0
    assert ema_decay(2, min_decay=0.5) == 0.5
    assert ema_decay(101, inv_gamma=10.0, power=2 / 3) == pytest.approx(1 - 11 ** (-2 / 3))


def test_ema_tracks_weights_and_swaps() -> None:
    net = nn.Linear(2, 1)
    ema = EMA(net)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net, 1)
    assert torch.equal(ema.shadow["weight"], net.weight)
    with torch.no_grad():
        net.weight.fill_(3.0)
    decay = ema.update(net, 2)
    assert torch.allclose(ema.shadow["weight"], torch.full_like(net.weight, decay * 1.0 + (1 - decay) * 3.0))
    with ema.swapped_into(net):
        assert torch.equal(net.weight, ema.shadow["weight"])
    assert torch.all(net.weight == 3.0)


def test_train_config_rejects_bad_keys_and_values() -> None:
    with pytest.raises(ValueError, match=r"unknown training keys \['stepz'\]"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match=r"training\.steps must be positive"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match=r"training\.device"):
        TrainConfig(device="tpu")


def test_fit_reduces_loss_and_writes_run(tmp_path: Path) -> None:
    agent = TinyAgent()
    summary = Trainer(agent, TinyDataset(), config(steps=60, ema=False), tmp_path).fit()
    records = [r for r in read_metrics(tmp_path) if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, 61))
    assert records[-1]["loss"] < 0.2 * records[0]["loss"]
    assert {"lr", "grad_norm", "samples_per_s", "mse"} <= set(records[-1])
    assert summary["step"] == 60 and summary["loss"] == records[-1]["loss"]
    loaded = TinyAgent.load(tmp_path / "checkpoint")
    assert torch.equal(flat_weights(loaded.network), flat_weights(agent.network))
    steps = [s for s, _ in list_step_checkpoints(tmp_path / "checkpoints")]
    assert steps == [55, 60]  # keep_checkpoints=2


def test_checkpoint_holds_ema_weights(tmp_path: Path) -> None:
    agent = TinyAgent()
    trainer = Trainer(agent, TinyDataset(), config(steps=10), tmp_path)
    trainer.fit()
    saved = TinyAgent.load(tmp_path / "checkpoints" / "step_0000010")
    assert torch.equal(
        flat_weights(saved.network), torch.cat([v.reshape(-1) for v in trainer.ema.shadow.values()])
    )
    assert not torch.equal(flat_weights(saved.network), flat_weights(agent.network))


def test_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    full = TinyAgent()
    Trainer(full, TinyDataset(), config(), tmp_path / "full").fit()

    first = Trainer(TinyAgent(), TinyDataset(), config(checkpoint_every=10), tmp_path / "split")
    _run_until(first, 13)  # dies 3 steps after the step-10 checkpoint: those steps are redone
    with (tmp_path / "split" / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 14, "lo')  # killed while appending a record

    # A fresh agent with another init: weights, optimizer, EMA and RNG must all come from the checkpoint.
    resumed = TinyAgent(seed=123)
    trainer = Trainer(resumed, TinyDataset(), config(checkpoint_every=10, resume=True), tmp_path / "split")
    summary = trainer.fit()
    assert summary["step"] == 20
    assert torch.equal(flat_weights(resumed.network), flat_weights(full.network))
    assert torch.equal(
        torch.cat([v.reshape(-1) for v in trainer.ema.shadow.values()]),
        torch.cat(
            [
                v.reshape(-1)
                for v in TinyAgent.load(tmp_path / "full" / "checkpoint").network.state_dict().values()
            ]
        ),
    )
    full_losses = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "full") if "loss" in r]
    split_losses = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "split") if "loss" in r]
    assert split_losses == full_losses


def _run_until(trainer: Trainer, stop: int) -> None:
    """Run ``trainer`` and kill it (by an exception from the data) right after step ``stop``'s checkpoint."""
    dataset = trainer.dataset
    original = dataset.get_batch

    def get_batch(indices: torch.Tensor) -> dict[str, torch.Tensor]:
        if trainer.step >= stop:
            raise KeyboardInterrupt
        return original(indices)

    dataset.get_batch = get_batch  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert trainer.step == stop


def test_interrupted_save_keeps_previous_checkpoint(tmp_path: Path) -> None:
    agent = TinyAgent()
    Trainer(agent, TinyDataset(), config(steps=5, checkpoint_every=5), tmp_path).fit()
    before = flat_weights(TinyAgent.load(tmp_path / "checkpoint").network)

    class Crash(Exception):
        pass

    def broken_save(directory: str | Path) -> None:
        (Path(directory) / "model.safetensors").write_bytes(b"half")
        raise Crash

    agent.save = broken_save  # type: ignore[method-assign]
    trainer = Trainer(agent, TinyDataset(), config(steps=10, checkpoint_every=5, resume=True), tmp_path)
    with pytest.raises(Crash):
        trainer.fit()
    assert [s for s, _ in list_step_checkpoints(tmp_path / "checkpoints")] == [5]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000005"]
    assert torch.equal(flat_weights(TinyAgent.load(tmp_path / "checkpoint").network), before)
    fresh = Trainer(
        TinyAgent(seed=9), TinyDataset(), config(steps=10, checkpoint_every=5, resume=True), tmp_path
    )
    assert fresh.fit()["step"] == 10


def test_eval_keeps_best_checkpoint(tmp_path: Path) -> None:
    scores = iter([0.2, 0.9, 0.5, 0.1])
    seen: list[torch.Tensor] = []

    def eval_fn(agent: TinyAgent) -> dict[str, float]:
        assert not agent.network.training
        seen.append(flat_weights(agent.network))
        return {"success_rate": next(scores), "mean_return": 1.0}

    agent = TinyAgent()
    summary = Trainer(agent, TinyDataset(), config(steps=20, eval_every=5), tmp_path, eval_fn=eval_fn).fit()
    assert summary["best_step"] == 10 and summary["best_score"] == 0.9
    info = json.loads((tmp_path / "checkpoint" / "checkpoint_info.json").read_text())
    assert info["step"] == 10 and info["score"] == 0.9
    assert torch.equal(flat_weights(TinyAgent.load(tmp_path / "checkpoint").network), seen[1])
    evals = [r for r in read_metrics(tmp_path) if "eval/success_rate" in r]
    assert [r["step"] for r in evals] == [5, 10, 15, 20]

    with pytest.raises(ValueError, match="no key 'score'"):
        Trainer(
            TinyAgent(),
            TinyDataset(),
            config(steps=2, eval_metric="score"),
            tmp_path / "x",
            eval_fn=lambda a: {"success_rate": 1.0},
        ).fit()


def test_bad_inputs_raise_clear_errors(tmp_path: Path) -> None:
    class NoNet:
        network = None

    with pytest.raises(ValueError, match="no trainable `network`"):
        Trainer(NoNet(), TinyDataset(), config(), tmp_path)  # type: ignore[arg-type]
    empty = TinyDataset(n=0)
    with pytest.raises(ValueError, match="dataset is empty"):
        Trainer(TinyAgent(), empty, config(), tmp_path)

    class NanAgent(TinyAgent):
        def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
            return self.network(batch["obs"]).sum() * float("nan"), {}

    with pytest.raises(ValueError, match="training loss is nan at step 0"):
        Trainer(NanAgent(), TinyDataset(), config(), tmp_path).fit()


class TwoPartAgent(TinyAgent):
    """TinyAgent whose loss adds a second head with 1e4-times larger gradients, clipped as its own group."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 2)
        self.network = nn.ModuleDict({"small": self.network, "big": self.head})

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        small = (self.network["small"](batch["obs"]) - batch["actions"]).pow(2).mean()
        big = 1e4 * (self.network["big"](batch["obs"]) - batch["actions"]).pow(2).mean()
        return small + big, {}

    def grad_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"small": list(self.network["small"].parameters()), "big": list(self.head.parameters())}


def test_grad_groups_are_clipped_separately(tmp_path: Path) -> None:
    agent, data = TwoPartAgent(), TinyDataset()
    cfg = TrainConfig(steps=1, batch_size=16, grad_clip=5.0, ema=False, progress=False, tensorboard=False)
    trainer = Trainer(agent, data, cfg, tmp_path)
    loss, _ = agent.loss(data.get_batch(torch.arange(16)))
    loss.backward()
    small_before = [p.grad.clone() for p in agent.network["small"].parameters()]
    small_norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in small_before])).item()
    assert small_norm < 5.0  # below the clip: its gradient must come through unscaled
    norms = trainer._clip_gradients(5.0)
    assert set(norms) == {"grad_norm/small", "grad_norm/big"}
    assert norms["grad_norm/big"] > 100
    assert float(norms["grad_norm/small"]) == pytest.approx(small_norm, rel=1e-5)
    for before, p in zip(small_before, agent.network["small"].parameters(), strict=True):
        assert torch.equal(before, p.grad)
    big = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in agent.head.parameters()]))
    assert big.item() == pytest.approx(5.0, rel=1e-4)
    trainer.fit()
    assert {"grad_norm/small", "grad_norm/big"} <= set(read_metrics(tmp_path)[-1])


def test_plot_learning_curves_draws_loss_and_eval_panels(tmp_path: Path) -> None:
    from diffctl.train.metrics import plot_learning_curves

    assert plot_learning_curves(tmp_path) is None  # nothing logged yet
    lines = [{"step": s, "loss": 1.0 / s} for s in range(1, 6)]
    lines += [{"step": 5, "eval/normalized_score": 12.5, "eval/success_rate": 0.4}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    path = plot_learning_curves(tmp_path)
    assert path == tmp_path / "learning_curves.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_metrics_tolerate_a_torn_last_line_and_name_other_bad_lines(tmp_path: Path) -> None:
    from diffctl.train.metrics import METRICS_FILE, MetricsLogger

    path = tmp_path / METRICS_FILE
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]  # a run killed while appending
    MetricsLogger(tmp_path, tensorboard=False).truncate_after(2)
    assert path.read_text() == '{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n'
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=f"{METRICS_FILE} line 2 is not a JSON record"):
        read_metrics(tmp_path)
