"""ConsistencyPolicy: distilled from a tiny EDM teacher, 1- and 2-step sampling, save/load via dc.load."""

import pickle

import numpy as np
import pytest
import torch

import diffctl as dc
from diffctl.policies import DiffusionPolicy
from diffctl.policies.consistency import ConsistencyPolicy, consistency_sigmas

OBS, ACT, GOAL, H, TO, TA = 4, 2, 2, 8, 2, 4


def batch(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand(n, TO, OBS, generator=g) * 2 - 1
    goal = torch.rand(n, GOAL, generator=g) * 2 - 1
    ramp = torch.linspace(0, 1, H).reshape(1, H, 1)
    actions = 0.6 * obs[:, -1:, :ACT] * (1 - ramp) + 0.6 * goal.unsqueeze(1) * ramp
    return {"obs": obs, "goal": goal, "actions": actions}


def fit(policy, steps: int, lr: float) -> float:
    torch.manual_seed(0)
    opt = torch.optim.Adam(policy.network.parameters(), lr=lr)
    for step in range(steps):
        loss, _ = policy.loss(batch(128, step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def chunk_error(policy, steps: int) -> float:
    data = batch(64, seed=999)
    hist = torch.cat([data["obs"], data["goal"].unsqueeze(1).expand(-1, TO, -1)], dim=-1)
    policy.sampler = policy.sampler.replace(steps=steps)
    policy.seed(0)
    return (policy.predict_chunk(hist) - data["actions"]).abs().mean().item()


@pytest.fixture(scope="module")
def models():
    teacher = DiffusionPolicy(
        OBS, ACT, goal_dim=GOAL, horizon=H, n_obs_steps=TO, n_action_steps=TA, backbone="mlp",
        backbone_kwargs={"hidden": 128, "depth": 2, "embed_dim": 32}, goal_dropout=0.0,
    )  # fmt: skip
    ones = np.ones((1, OBS))
    teacher.fit_normalizers(np.concatenate([-ones, ones]), np.array([[-1.0] * ACT, [1.0] * ACT]),
                            np.array([[-1.0] * GOAL, [1.0] * GOAL]))  # fmt: skip
    fit(teacher, 500, 2e-3)
    student = ConsistencyPolicy.from_teacher(teacher, distill_steps=12)
    before = chunk_error(student, 1)
    fit(student, 300, 5e-4)
    return teacher, student, before


def test_grid():
    assert consistency_sigmas(1, 0.002, 80.0, 7.0).tolist() == [80.0, 0.0]
    g = consistency_sigmas(3, 0.002, 80.0, 7.0)
    assert len(g) == 4 and g[0] == 80.0 and g[-1] == 0 and 0.1 < g[2] < g[1] < 80


def test_distillation_gives_one_and_two_step_sampling(models):
    _, student, before = models
    one, two = chunk_error(student, 1), chunk_error(student, 2)
    assert one < 0.1 and two < 0.1, (one, two)
    assert one < 0.5 * before, (before, one)  # the teacher's weights alone are not a 1-step sampler
    assert student.sampler.solver == "consistency"


def test_nfe_equals_steps(models):
    _, student, _ = models
    calls = []
    hook = student.network.register_forward_hook(lambda *a: calls.append(1))
    try:
        for steps in (1, 2, 3):
            calls.clear()
            chunk_error(student, steps)
            assert len(calls) == steps
    finally:
        hook.remove()


def test_save_load_and_act(models, tmp_path):
    _, student, _ = models
    student.sampler = student.sampler.replace(steps=1)
    student.save(tmp_path / "cp")
    back = dc.load(tmp_path / "cp", steps=2)
    assert isinstance(back, ConsistencyPolicy) and back.sampler.steps == 2 and back.teacher is None
    obs = np.zeros(OBS + GOAL, np.float32)
    back.reset(seed=0)
    acts = [back.act(obs) for _ in range(TA + 1)]
    assert np.isfinite(acts).all()
    copy = pickle.loads(pickle.dumps(student))
    assert copy.teacher is None
    with pytest.raises(ValueError, match="teacher"):
        back.loss(batch(4, 0))


def test_bad_teacher():
    vp = DiffusionPolicy(OBS, ACT, horizon=H, n_obs_steps=TO, n_action_steps=TA, backbone="mlp",
                         parameterization="vp")  # fmt: skip
    with pytest.raises(ValueError, match="EDM"):
        ConsistencyPolicy.from_teacher(vp)
