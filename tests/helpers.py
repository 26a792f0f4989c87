"""Helpers the unit and integration tests share: a tiny regression agent and dataset for the Trainer, and
point-mass windows and a fitting loop for the planners."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from diffctl.policies import DiffusionPolicy
from diffctl.train import TrainConfig

STATE, ACT, H = 4, 2, 8


class TinyDataset:
    """Noisy linear map y = W x with vectorized get_batch."""

    def __init__(self, n: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, generator=g)
        self.y = self.x @ torch.randn(3, 2, generator=g) + 0.01 * torch.randn(n, 2, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def get_batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"obs": self.x[indices], "actions": self.y[indices]}


class TinyAgent:
    """Regression agent: an MLP with input noise drawn from the global RNG (so resume must restore it)."""

    def __init__(self, seed: int = 0, noise: float = 0.01) -> None:
        torch.manual_seed(seed)
        self.noise = noise
        self.network = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        obs = batch["obs"] + self.noise * torch.randn_like(batch["obs"])
        loss = (self.network(obs) - batch["actions"]).pow(2).mean()
        return loss, {"mse": loss.detach()}

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        save_file(
            {k: v.contiguous() for k, v in self.network.state_dict().items()},
            str(directory / "model.safetensors"),
        )
        (directory / "config.json").write_text(json.dumps({"class": "TinyAgent"}))

    @classmethod
    def load(cls, directory: str | Path) -> TinyAgent:
        agent = cls()
        agent.network.load_state_dict(load_file(str(Path(directory) / "model.safetensors")))
        return agent


def config(**overrides: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        steps=20,
        batch_size=8,
        lr=1e-2,
        warmup_steps=3,
        log_every=1,
        checkpoint_every=5,
        progress=False,
        tensorboard=False,
        seed=0,
    )
    base.update(overrides)
    return TrainConfig.from_dict(base)


def flat_weights(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.state_dict().values()])


def rollouts(
    n: int, direction: torch.Tensor | None = None, seed: int = 0, horizon: int = H
) -> dict[str, torch.Tensor]:
    """Point-mass windows ``p' = p + 0.2 a``, ``v = a`` with a constant action per window; reward = x."""
    g = torch.Generator().manual_seed(seed)
    pos0 = torch.rand(n, 2, generator=g) * 2 - 1
    act = -0.5 * pos0 if direction is None else direction.expand(n, 2)
    t = torch.arange(horizon, dtype=torch.float32).reshape(1, horizon, 1)
    pos = pos0[:, None] + 0.2 * t * act[:, None]
    vel = torch.cat([torch.zeros(n, 1, 2), act[:, None].expand(n, horizon - 1, 2)], dim=1)
    rewards = pos[..., 0]
    return {"obs": torch.cat([pos, vel], -1), "actions": act[:, None].expand(n, horizon, 2).contiguous(),
            "rewards": rewards, "returns": rewards[:, -1].clone()}  # fmt: skip


def fit(planner, data: dict[str, torch.Tensor], steps: int, lr: float = 2e-3) -> None:
    returns = torch.cat([data["returns"], data["rewards"].sum(1)]) if planner.uses_returns else None
    planner.fit_normalizers(data["obs"].reshape(-1, STATE).numpy() * 1.05, data["actions"].reshape(-1, ACT),
                            returns=returns)  # fmt: skip
    torch.manual_seed(0)
    opt = torch.optim.Adam(planner.network.parameters(), lr=lr)
    for _ in range(steps):
        loss, info = planner.loss(data)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(np.isfinite(v) for v in info.values()), info


LINE_STEPS = 10


class Line(gym.Env):
    """Toy task for fine-tuning tests: a point on a line moves by 0.3 * action toward a goal at -1 or 1;
    reward -|x - goal|; 10 steps."""

    observation_space = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.goal, self.t = 0.0, float(self.np_random.choice([-1.0, 1.0])), 0
        return self._obs(), {}

    def _obs(self):
        return np.array([self.x, self.goal], np.float32)

    def step(self, action):
        self.x = float(np.clip(self.x + 0.3 * float(action[0]), -2, 2))
        self.t += 1
        dist = abs(self.x - self.goal)
        return self._obs(), -dist, False, self.t >= LINE_STEPS, {"success": dist < 0.2}


def base_policy(tmp_path: Path) -> Any:
    """An untrained diffusion policy for ``Line`` (state x and goal), saved in ``tmp_path / base``."""
    policy = DiffusionPolicy(1, 1, goal_dim=1, horizon=4, n_obs_steps=1, n_action_steps=2, backbone="mlp",
                             backbone_kwargs={"hidden": 16, "depth": 1, "embed_dim": 8},
                             sampler={"solver": "euler", "steps": 2})  # fmt: skip
    limits = np.array([[-2.0], [2.0]])
    policy.fit_normalizers(limits, np.array([[-1.0], [1.0]]), limits)
    policy.save(tmp_path / "base")
    return policy
