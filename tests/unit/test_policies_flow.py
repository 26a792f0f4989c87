"""FlowPolicy: rectified flow on a tiny dataset, Euler sampling, reflow couplings, save/load via dc.load."""

import copy

import numpy as np
import pytest
import torch

import diffctl as dc
from diffctl.policies.flow import FlowPolicy

OBS, ACT, GOAL, H, TO, TA = 4, 2, 2, 8, 2, 4


def batch(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand(n, TO, OBS, generator=g) * 2 - 1
    goal = torch.rand(n, GOAL, generator=g) * 2 - 1
    ramp = torch.linspace(0, 1, H).reshape(1, H, 1)
    actions = 0.6 * obs[:, -1:, :ACT] * (1 - ramp) + 0.6 * goal.unsqueeze(1) * ramp
    return {"obs": obs, "goal": goal, "actions": actions}


def make() -> FlowPolicy:
    pol = FlowPolicy(
        OBS, ACT, goal_dim=GOAL, horizon=H, n_obs_steps=TO, n_action_steps=TA, backbone="mlp",
        backbone_kwargs={"hidden": 128, "depth": 2, "embed_dim": 32}, goal_dropout=0.0,
    )  # fmt: skip
    ones = np.ones((1, OBS))
    pol.fit_normalizers(np.concatenate([-ones, ones]), np.array([[-1.0] * ACT, [1.0] * ACT]),
                        np.array([[-1.0] * GOAL, [1.0] * GOAL]))  # fmt: skip
    return pol


def fit(policy, steps: int, lr: float, reflow: FlowPolicy | None = None) -> None:
    torch.manual_seed(0)
    opt = torch.optim.Adam(policy.network.parameters(), lr=lr)
    for step in range(steps):
        b = batch(128, step)
        loss, _ = policy.loss(reflow.reflow_batch(b, steps=8) if reflow else b)
        opt.zero_grad()
        loss.backward()
        opt.step()


def error(policy, steps: int) -> float:
    data = batch(64, seed=999)
    hist = torch.cat([data["obs"], data["goal"].unsqueeze(1).expand(-1, TO, -1)], dim=-1)
    policy.sampler = policy.sampler.replace(steps=steps)
    policy.seed(0)
    return (policy.predict_chunk(hist) - data["actions"]).abs().mean().item()


@pytest.fixture(scope="module")
def trained() -> FlowPolicy:
    pol = make()
    fit(pol, 500, 2e-3)
    return pol


def test_learns_with_few_euler_steps(trained):
    assert trained.sampler.solver == "euler"
    assert error(trained, 10) < 0.08
    assert error(trained, 2) < 0.15


def test_reflow_batch_and_stage(trained):
    b = trained.reflow_batch(batch(16, 0), steps=8)
    assert b["noise"].shape == b["actions"].shape == (16, H, ACT)
    assert torch.isfinite(b["actions"]).all() and (b["actions"].abs() <= 1).all()
    student = copy.deepcopy(trained)
    fit(student, 60, 5e-4, reflow=trained)
    assert error(student, 1) < 0.1
    with pytest.raises(ValueError, match="noise"):
        trained.loss({**batch(4, 0), "noise": torch.zeros(4, H + 1, ACT)})


def test_save_load(trained, tmp_path):
    trained.save(tmp_path / "f")
    back = dc.load(tmp_path / "f", steps=3)
    assert isinstance(back, FlowPolicy) and back.parameterization == "flow" and back.sampler.steps == 3
    back.reset(seed=0)
    assert np.isfinite([back.act(np.zeros(OBS + GOAL, np.float32)) for _ in range(3)]).all()


def test_bad_settings():
    with pytest.raises(ValueError, match="t_sampling"):
        FlowPolicy(OBS, ACT, horizon=H, n_obs_steps=TO, n_action_steps=TA, t_sampling="beta")


@pytest.mark.parametrize("name", ["flow_mlp", "streaming_mlp", "consistency_mlp"])
def test_policy_configs_build_their_class(name):
    from diffctl.agents import AGENT_CLASSES
    from diffctl.train.pipeline import RESERVED_POLICY_KEYS, agent_class, compose_config

    conf = compose_config([f"policy={name}"])
    section = dict(conf["policy"])
    assert section["class"] in AGENT_CLASSES
    kwargs = {k: v for k, v in section.items() if k not in RESERVED_POLICY_KEYS}
    dims = {"goal_dim": GOAL, "horizon": H, "n_obs_steps": TO, "n_action_steps": TA}
    agent = agent_class(section["class"])(OBS, ACT, **dims, **kwargs)
    assert type(agent).__name__ == section["class"]
