"""The training loop shared by every agent: AdamW + warmup/cosine, EMA, clipping, checkpoints, resume, DDP.

An agent exposes one trainable ``network`` (an ``nn.Module``) and ``loss(batch) -> (loss, info)``; the dataset
exposes ``len()`` and a vectorized ``get_batch(indices) -> dict[str, Tensor]``. Nothing here knows what the
agent is, so policies, planners and world models all train through the same code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from diffctl.atomic import atomic_dir
from diffctl.train import checkpoint as ckpt
from diffctl.train.config import TrainConfig
from diffctl.train.distributed import (
    DistInfo,
    average_gradients,
    barrier,
    broadcast_module,
    gather_tensors,
    init_distributed,
)
from diffctl.train.ema import EMA
from diffctl.train.lr import set_lr, warmup_cosine
from diffctl.train.metrics import MetricsLogger

STATE_VERSION = 1
BEST_INFO = "checkpoint_info.json"

EvalFn = Callable[[Any], Mapping[str, Any]]


class TrainableAgent(Protocol):
    network: nn.Module

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]: ...

    def save(self, directory: str | Path) -> Any: ...


class BatchDataset(Protocol):
    def __len__(self) -> int: ...

    def get_batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]: ...


class Trainer:
    """Train ``agent.network`` on ``agent.loss`` over batches of ``dataset``; see ``fit``.

    Layout of ``run_dir``: ``checkpoints/step_XXXXXXX/`` (agent ``save()`` output with EMA weights plus
    ``trainer_state.safetensors``/``.json``), ``checkpoint/`` (best agent by ``eval_metric``, or the last one
    without ``eval_fn``), ``metrics.jsonl`` and ``tensorboard/`` when TensorBoard is installed.
    Under torchrun each rank draws a different slice of every step's indices, gradients are averaged across
    ranks, and only rank 0 writes files or evaluates.
    """

    def __init__(
        self,
        agent: TrainableAgent,
        dataset: BatchDataset,
        config: TrainConfig,
        run_dir: str | Path,
        eval_fn: EvalFn | None = None,
    ) -> None:
        network = getattr(agent, "network", None)
        if not isinstance(network, nn.Module):
            raise ValueError(f"agent {type(agent).__name__} has no trainable `network` nn.Module")
        if not callable(getattr(dataset, "get_batch", None)):
            raise ValueError(f"dataset {type(dataset).__name__} has no get_batch(indices) method")
        if len(dataset) == 0:
            raise ValueError("dataset is empty: it has no training windows")
        self.agent, self.dataset, self.config, self.eval_fn = agent, dataset, config, eval_fn
        self.run_dir = Path(run_dir)
        self.dist: DistInfo = init_distributed()
        self.device = _resolve_device(config.device, self.dist)
        if callable(getattr(agent, "to", None)):
            agent.to(self.device)  # type: ignore[attr-defined]
        network.to(self.device)
        self.network = network
        self.params = [p for p in network.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(f"agent {type(agent).__name__}.network has no trainable parameters")
        broadcast_module(network, self.dist)
        decay = [p for p in self.params if p.ndim >= 2]
        no_decay = [p for p in self.params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": config.weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.adam_eps)
        self.ema = (
            EMA(
                network,
                power=config.ema_power,
                inv_gamma=config.ema_inv_gamma,
                min_decay=config.ema_min_decay,
                max_decay=config.ema_max_decay,
                update_after=config.ema_update_after,
            )
            if config.ema
            else None
        )
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.last_loss: float | None = None
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.samples_per_s: float | None = None
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logger = MetricsLogger(self.run_dir, enabled=self.dist.is_main, tensorboard=config.tensorboard)

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def best_dir(self) -> Path:
        return self.run_dir / "checkpoint"

    def fit(self) -> dict[str, Any]:
        """Train to ``config.steps`` (resuming from the latest step checkpoint when ``config.resume``).

        Returns a summary: final step and loss, best score/step, the agent checkpoint path and samples/s.
        """
        cfg = self.config
        if cfg.resume and (found := ckpt.list_step_checkpoints(self.checkpoints_dir)):
            self.load_checkpoint(found[-1][1])
        else:
            torch.manual_seed(cfg.seed + 1_000_003 * self.dist.rank)
        self.network.train()
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc="train",
            disable=not (cfg.progress and self.dist.is_main),
            dynamic_ncols=True,
        )
        window_start, window_steps = time.perf_counter(), 0
        try:
            while self.step < cfg.steps:
                record = self._train_step()
                window_steps += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    elapsed = time.perf_counter() - window_start
                    samples = window_steps * cfg.batch_size * self.dist.world_size
                    self.samples_per_s = samples / max(elapsed, 1e-9)
                    record["samples_per_s"] = self.samples_per_s
                    self.logger.log(self.step, record)
                    bar.set_postfix(loss=f"{record['loss']:.4g}", samples_s=f"{self.samples_per_s:.0f}")
                    window_start, window_steps = time.perf_counter(), 0
                last = self.step == cfg.steps
                if self.eval_fn is not None and (
                    last or (cfg.eval_every and self.step % cfg.eval_every == 0)
                ):
                    self.evaluate()
                if last or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0):
                    self.save_checkpoint()
        finally:
            bar.close()
            self.logger.close()
        if self.eval_fn is None or not self.best_dir.exists():
            self._save_agent(self.best_dir, {"step": self.step, "reason": "last"})
        barrier(self.dist)
        return {
            "step": self.step,
            "loss": self.last_loss,
            "best_score": self.best_score,
            "best_step": self.best_step,
            "checkpoint": str(self.best_dir),
            "samples_per_s": self.samples_per_s,
        }

    def _train_step(self) -> dict[str, Any]:
        cfg, world = self.config, self.dist.world_size
        indices = torch.randint(0, len(self.dataset), (world * cfg.batch_size,), generator=self.generator)
        local = indices[self.dist.rank * cfg.batch_size : (self.dist.rank + 1) * cfg.batch_size]
        batch = _to_device(self.dataset.get_batch(local), self.device)
        lr = cfg.lr * warmup_cosine(
            self.step, total_steps=cfg.steps, warmup_steps=cfg.warmup_steps, min_ratio=cfg.min_lr_ratio
        )
        set_lr(self.optimizer, lr)
        loss, info = self.agent.loss(batch)
        if not torch.isfinite(loss):
            raise ValueError(
                f"training loss is {loss.item()} at step {self.step}; "
                f"check data normalization and training.lr (={cfg.lr})"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        mean_loss = average_gradients(self.params, loss, self.dist)
        grad_norms = self._clip_gradients(cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        decay = self.ema.update(self.network, self.step) if self.ema is not None else None
        self.last_loss = float(mean_loss)
        record: dict[str, Any] = {k: v for k, v in (info or {}).items() if k not in ("loss", "lr")}
        record.update(loss=self.last_loss, lr=lr)
        record.update(grad_norms)
        if decay is not None:
            record["ema_decay"] = decay
        return record

    def _clip_gradients(self, max_norm: float | None) -> dict[str, torch.Tensor]:
        """Clip to ``max_norm``; returns the pre-clip norms as tensors (no device sync per step). Agents
        with ``grad_groups()`` (actor, critic, ...) get each group clipped on its own, so a large critic
        gradient cannot shrink the actor's step."""
        if max_norm is None:
            return {}
        groups = getattr(self.agent, "grad_groups", None)
        if not callable(groups):
            return {"grad_norm": torch.nn.utils.clip_grad_norm_(self.params, max_norm)}
        return {
            f"grad_norm/{name}": torch.nn.utils.clip_grad_norm_(params, max_norm)
            for name, params in groups().items()
            if params
        }

    def evaluate(self) -> dict[str, Any] | None:
        """Run ``eval_fn`` on the EMA agent (rank 0); keep it as ``run_dir/checkpoint`` if it is the best."""
        if self.eval_fn is None:
            return None
        result: dict[str, Any] | None = None
        if self.dist.is_main:
            self.network.eval()
            try:
                with self._inference_weights():
                    result = dict(self.eval_fn(self.agent))
            finally:
                self.network.train()
            metric = self.config.eval_metric
            if metric not in result:
                raise ValueError(
                    f"eval_fn result has no key {metric!r} (training.eval_metric); got {sorted(result)}"
                )
            score = float(result[metric])
            self.logger.log(self.step, {f"eval/{k}": v for k, v in result.items()})
            if self.best_score is None or score >= self.best_score:
                self.best_score, self.best_step = score, self.step
                self._save_agent(
                    self.best_dir, {"step": self.step, "metric": metric, "score": score, "eval": result}
                )
        barrier(self.dist)
        return result

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_XXXXXXX`` atomically (all ranks call this; rank 0 writes)."""
        rng_states = gather_tensors(torch.get_rng_state(), self.dist)
        cuda_states = (
            gather_tensors(torch.cuda.get_rng_state(self.device), self.dist)
            if self.device.type == "cuda"
            else []
        )
        path = self.checkpoints_dir / ckpt.step_dir_name(self.step)
        if self.dist.is_main:
            tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in self.network.state_dict().items()}
            if self.ema is not None:
                tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
            optim_tensors, optim_meta = ckpt.flatten_optimizer(self.optimizer.state_dict())
            tensors.update(optim_tensors)
            tensors["rng.index"] = self.generator.get_state()
            tensors.update({f"rng.torch.{r}": s for r, s in enumerate(rng_states)})
            tensors.update({f"rng.cuda.{r}": s for r, s in enumerate(cuda_states)})
            meta = {
                "version": STATE_VERSION,
                "step": self.step,
                "loss": self.last_loss,
                "best_score": self.best_score,
                "best_step": self.best_step,
                "world_size": self.dist.world_size,
                "ema_decay": self.ema.decay if self.ema is not None else None,
                "optimizer": optim_meta,
                "config": self.config.to_dict(),
            }
            with atomic_dir(path) as tmp:
                with self._inference_weights():
                    self.agent.save(tmp)
                ckpt.save_state(tmp, tensors, meta)
            ckpt.prune_step_checkpoints(self.checkpoints_dir, self.config.keep_checkpoints)
        barrier(self.dist)
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore weights, EMA, optimizer, step, loss and RNG states from a step checkpoint."""
        tensors, meta = ckpt.load_state(path)
        if meta.get("version") != STATE_VERSION:
            raise ValueError(
                f"trainer checkpoint {path} has version {meta.get('version')!r}; expected {STATE_VERSION}"
            )
        model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            self.network.load_state_dict(model)
        except RuntimeError as err:
            raise ValueError(f"trainer checkpoint {path} does not match the agent's network: {err}") from err
        ema = {k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")}
        if self.ema is not None and ema:
            self.ema.load_state_dict(ema)
            self.ema.decay = float(meta.get("ema_decay") or 0.0)
        self.optimizer.load_state_dict(ckpt.unflatten_optimizer(tensors, meta["optimizer"]))
        self.generator.set_state(tensors["rng.index"])
        rank = self.dist.rank
        if f"rng.torch.{rank}" in tensors and meta.get("world_size") == self.dist.world_size:
            torch.set_rng_state(tensors[f"rng.torch.{rank}"])
            if self.device.type == "cuda" and f"rng.cuda.{rank}" in tensors:
                torch.cuda.set_rng_state(tensors[f"rng.cuda.{rank}"], self.device)
        else:
            torch.manual_seed(self.config.seed + 1_000_003 * rank + int(meta["step"]))
        self.step = int(meta["step"])
        self.last_loss = meta.get("loss")
        self.best_score, self.best_step = meta.get("best_score"), meta.get("best_step")
        self.logger.truncate_after(self.step)

    def _inference_weights(self) -> Any:
        if self.ema is not None:
            return self.ema.swapped_into(self.network)
        return nullcontext()

    def _save_agent(self, directory: Path, info: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with atomic_dir(directory) as tmp:
            with self._inference_weights():
                self.agent.save(tmp)
            ckpt.write_json(tmp / BEST_INFO, info)


def _resolve_device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        return torch.device("cuda", info.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"training.device={name!r} but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    if not isinstance(batch, Mapping):
        raise ValueError(f"dataset.get_batch must return a dict of tensors, got {type(batch).__name__}")
    return {k: _moved(v, device) for k, v in batch.items()}


def _moved(value: Any, device: torch.device) -> Any:
    """A tensor on ``device``; a dict of tensors (camera frames) moved entry by entry; anything else as is."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {k: _moved(v, device) for k, v in value.items()}
    return value
