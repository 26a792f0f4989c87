"""BCPolicy, the worked example of docs/adding_an_agent.md: learns a deterministic chunk map, acts through
ChunkRunner, round-trips through save/load and is built by the train pipeline from its config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import diffctl as dc
from diffctl.policies.bc import BCPolicy

OBS, ACT, GOAL, H, TO, TA = 4, 2, 2, 8, 2, 4


def chunk_data(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Windows whose action chunk is a fixed function of the last observation and the goal."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand(n, TO, OBS, generator=g) * 2 - 1
    goal = torch.rand(n, GOAL, generator=g) * 2 - 1
    ramp = torch.linspace(0, 1, H).reshape(1, H, 1)
    actions = (0.6 * obs[:, -1:, :ACT] * (1 - ramp) + 0.6 * goal.unsqueeze(1) * ramp).clamp(-1, 1)
    return {"obs": obs, "goal": goal, "actions": actions}


def trained_policy() -> tuple[BCPolicy, dict[str, torch.Tensor]]:
    dims = {"goal_dim": GOAL, "horizon": H, "n_obs_steps": TO, "n_action_steps": TA}
    policy = BCPolicy(OBS, ACT, **dims, hidden=64, depth=2)
    data = chunk_data(256)
    ones = torch.ones(1, OBS)
    policy.fit_normalizers(
        torch.cat([data["obs"].reshape(-1, OBS), -ones, ones]),
        torch.cat([data["actions"].reshape(-1, ACT), -torch.ones(1, ACT), torch.ones(1, ACT)]),
        torch.cat([data["goal"], -torch.ones(1, GOAL), torch.ones(1, GOAL)]),
    )
    opt = torch.optim.Adam(policy.network.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(400):
        loss, info = policy.loss(data)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert info["loss"] < 2e-3, info
    return policy, data


def test_bc_policy_learns_the_chunk_map_and_acts_through_the_runner(tmp_path: Path) -> None:
    policy, _ = trained_policy()
    test = chunk_data(32, seed=7)
    hist = torch.cat([test["obs"], test["goal"][:, None].expand(-1, TO, -1)], dim=-1)
    err = (policy.predict_chunk(hist) - test["actions"]).abs().max()
    assert float(err) < 0.1  # held-out windows: the map was learnt, not memorized

    obs = np.r_[test["obs"][0, -1].numpy(), test["goal"][0].numpy()].astype(np.float32)
    policy.reset()
    actions = [policy.act(obs) for _ in range(TA + 1)]
    chunk = policy.predict_chunk(np.stack([obs, obs])[None])[0].numpy()
    np.testing.assert_allclose(actions[:TA], chunk[TO - 1 : TO - 1 + TA], atol=1e-6)  # queue of Ta actions

    policy.save(tmp_path / "bc")
    loaded = dc.load(tmp_path / "bc")
    assert type(loaded) is BCPolicy and loaded.config == policy.config
    torch.testing.assert_close(loaded.predict_chunk(hist), policy.predict_chunk(hist), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"no sampler or act settings to override, got \['solver'\]"):
        dc.load(tmp_path / "bc", solver="ddim")
    with pytest.raises(ValueError, match=r"shape \(3,\); expected one of \[\(6,\)\]"):
        policy.act(np.zeros(3, np.float32))
