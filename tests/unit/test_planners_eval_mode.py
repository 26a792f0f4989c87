"""plan() runs every network module in eval mode and gives each module its own training flag back."""

import numpy as np
import pytest
import torch

from diffctl.planners import DecisionDiffuser, Diffuser

STATE, ACT, GOAL, H = 4, 2, 2, 8
SMALL_NET = {"backbone": "mlp", "backbone_kwargs": {"hidden": 32, "depth": 1, "embed_dim": 16}}


def build(cls: type, value: bool) -> Diffuser | DecisionDiffuser:
    rng = np.random.default_rng(0)
    if cls is Diffuser:
        planner = Diffuser(STATE + GOAL, ACT, goal_dim=GOAL, horizon=H, value=value, **SMALL_NET,
                           sampler={"steps": 3, "seed": 0})  # fmt: skip
    else:
        planner = DecisionDiffuser(STATE + GOAL, ACT, goal_dim=GOAL, horizon=H, **SMALL_NET,
                                   sampler={"steps": 3, "seed": 0, "guidance_scale": 1.5})  # fmt: skip
    obs = rng.uniform(-2, 2, size=(128, STATE + GOAL))
    returns = rng.uniform(0, 10, 128) if planner.uses_returns else None
    planner.fit_normalizers(obs, rng.uniform(-1, 1, (128, ACT)), obs[:, STATE:], returns=returns)
    return planner


@pytest.mark.parametrize(("cls", "value"), [(Diffuser, False), (Diffuser, True), (DecisionDiffuser, False)])
def test_plan_runs_in_eval_mode_and_restores_mixed_flags(cls: type, value: bool) -> None:
    planner = build(cls, value)
    modules = list(planner.network.modules())
    planner.network.train()
    frozen = modules[len(modules) // 2]
    frozen.eval()  # a submodule the caller keeps in eval mode must stay there
    before = {id(m): m.training for m in modules}
    assert any(before.values()) and not all(before.values())
    seen: list[bool] = []
    hooks = [m.register_forward_pre_hook(lambda m, _: seen.append(m.training)) for m in modules]
    try:
        obs = np.array([0.3, -1.2, 0.5, 0.1, 1.5, 1.7], dtype=np.float32)
        plan = planner.plan(obs)
    finally:
        for h in hooks:
            h.remove()
    assert seen and not any(seen)
    assert {id(m): m.training for m in modules} == before
    assert torch.isfinite(plan.states).all()
    planner.network.eval()
    planner.plan(obs)
    assert not any(m.training for m in modules)
