"""CoarseToFineDiffuser: level strides, shape checks, overfitting tiny windows, refinement, save/load, act."""

import numpy as np
import pytest
import torch
from helpers import fit
from helpers import rollouts as point_mass_windows

import diffctl as dc
from diffctl.planners import CoarseToFineDiffuser
from diffctl.planners.coarse_to_fine import level_strides

STATE, ACT, POINTS, LEVELS = 4, 2, 3, 3
H = (POINTS - 1) ** LEVELS + 1  # 9: strides 4, 2, 1
NET = {"backbone_kwargs": {"hidden": 128, "depth": 2, "embed_dim": 32}}


def rollouts(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    return point_mass_windows(n, seed=seed, horizon=H)


@pytest.fixture(scope="module")
def trained() -> tuple[CoarseToFineDiffuser, dict[str, torch.Tensor]]:
    data = rollouts(32)
    planner = CoarseToFineDiffuser(STATE, ACT, horizon=H, points=POINTS, levels=LEVELS, value=True, n_plans=4,
                                   sampler={"solver": "heun", "steps": 8, "seed": 0}, **NET)  # fmt: skip
    fit(planner, data, steps=400)
    return planner, data


def test_level_strides_and_horizon_check() -> None:
    assert level_strides(9, 2) == [8, 1]
    assert level_strides(5, 3) == [16, 4, 1]
    assert level_strides(3, 3) == [4, 2, 1]
    with pytest.raises(ValueError, match=r"horizon must be \(points - 1\) \*\* levels \+ 1 = 65"):
        CoarseToFineDiffuser(STATE, ACT, horizon=64, points=9, levels=2)
    with pytest.raises(ValueError, match="points must be >= 2"):
        CoarseToFineDiffuser(STATE, ACT, horizon=2, points=1, levels=1)


def test_loss_trains_every_level_on_its_strided_cut() -> None:
    planner = CoarseToFineDiffuser(STATE, ACT, horizon=H, points=POINTS, levels=LEVELS, value=False, **NET)
    data = rollouts(8)
    planner.fit_normalizers(data["obs"].reshape(-1, STATE).numpy(), data["actions"].reshape(-1, ACT))
    loss, info = planner.loss(data)
    assert sorted(info) == ["diffusion_loss/level0", "diffusion_loss/level1", "diffusion_loss/level2", "loss"]
    loss.backward()
    for den in planner.network.denoisers:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in den.parameters())


def test_refined_plan_reproduces_the_first_steps_of_the_data(trained) -> None:
    planner, data = trained
    plan = planner.plan(data["obs"][:8, 0])
    assert plan.states.shape == (8, 4, POINTS, STATE) and plan.actions.shape == (8, 4, POINTS, ACT)
    err = (plan.states[:, 0] - data["obs"][:8, :POINTS]).abs().mean()
    act_err = (plan.actions[:, 0] - data["actions"][:8, :POINTS]).abs().mean()
    untrained = CoarseToFineDiffuser(STATE, ACT, horizon=H, points=POINTS, levels=LEVELS, value=False,
                                     normalizers=planner.normalizers, sampler={"solver": "heun", "steps": 8},
                                     **NET)  # fmt: skip
    base = (untrained.plan(data["obs"][:8, 0]).states[:, 0] - data["obs"][:8, :POINTS]).abs().mean()
    assert float(err) < 0.12 and float(act_err) < 0.12, (float(err), float(act_err))
    assert float(err) < 0.3 * float(base)
    torch.testing.assert_close(plan.states[:, :, 0], data["obs"][:8, None, 0].expand(-1, 4, -1))


def test_values_are_ranked_and_noise_fixes_the_plan(trained) -> None:
    planner, data = trained
    obs = data["obs"][:2, 0]
    plan = planner.plan(obs)
    assert plan.values is not None and plan.values.shape == (2, 4)
    assert torch.all(plan.values[:, :-1] >= plan.values[:, 1:])
    noise = torch.randn(LEVELS, 2 * 4, POINTS, STATE + ACT)
    a, b = planner.plan(obs, noise=noise), planner.plan(obs, noise=noise)
    assert torch.equal(a.states, b.states)
    with pytest.raises(ValueError, match="noise must have shape"):
        planner.plan(obs, noise=noise[0])


def test_save_load_round_trip_and_act_replans_every_fine_plan(trained, tmp_path) -> None:
    planner, data = trained
    path = planner.save(tmp_path / "c2f")
    loaded = dc.load(path)
    assert isinstance(loaded, CoarseToFineDiffuser) and loaded.strides == [4, 2, 1]
    obs = data["obs"][:2, 0]
    planner.seed(3)
    loaded.seed(3)
    torch.testing.assert_close(planner.plan(obs).states, loaded.plan(obs).states, rtol=0, atol=0)
    loaded.reset()
    for _ in range(5):
        assert loaded.act(data["obs"][0, 0].numpy()).shape == (ACT,)
    assert loaded.replans == 3  # a fine plan has POINTS - 1 = 2 steps to execute
    warm = dc.load(path, warm_start=0.5)
    warm.reset()
    warm.act(data["obs"][0, 0].numpy())
    warm.act(data["obs"][0, 0].numpy())
    with pytest.raises(ValueError, match="does not warm-start"):
        warm.act(data["obs"][0, 0].numpy())


def test_each_level_refines_the_first_gap_of_the_level_above(trained, monkeypatch) -> None:
    planner, data = trained
    calls = []
    inner = planner._level

    def record(level, start, end, noise):
        out = inner(level, start, end, noise)
        calls.append((level, start, end, out))
        return out

    monkeypatch.setattr(planner, "_level", record)
    plan = planner.plan(data["obs"][:2, 0])
    assert [c[0] for c in calls] == [0, 1, 2]
    assert calls[0][2] is None  # no goal: level 0 pins only the start
    for _, start, end, out in calls[1:]:
        torch.testing.assert_close(out[:, 0, :STATE], start)
        torch.testing.assert_close(out[:, -1, :STATE], end)  # the end is inpainted exactly
    # level 1 ends at the second point of the value-ranked level-0 plans, level 2 at level 1's second point
    level0 = calls[0][3].reshape(2, 4, POINTS, -1)
    order = planner.network.value(calls[0][3]).reshape(2, 4).argsort(1, descending=True)
    ranked0 = level0.gather(1, order[:, :, None, None].expand_as(level0)).reshape(8, POINTS, -1)
    torch.testing.assert_close(calls[1][2], ranked0[:, 1, :STATE])
    torch.testing.assert_close(calls[2][2], calls[1][3][:, 1, :STATE])
    torch.testing.assert_close(calls[2][3].reshape(2, 4, POINTS, -1), plan.trajectory)


@pytest.mark.parametrize("cls", ["Diffuser", "CoarseToFineDiffuser"])
def test_goal_conditioned_planners_refuse_a_plan_without_goal(cls) -> None:
    from diffctl.planners import Diffuser

    shape = {"horizon": H, "points": POINTS, "levels": LEVELS} if cls == "CoarseToFineDiffuser" else {
        "horizon": 8, "backbone": "mlp"}  # fmt: skip
    planner = {"Diffuser": Diffuser, "CoarseToFineDiffuser": CoarseToFineDiffuser}[cls](
        STATE + 2, ACT, goal_dim=2, **shape, **NET
    )
    data = rollouts(4)
    planner.fit_normalizers(data["obs"].reshape(-1, STATE).numpy(), data["actions"].reshape(-1, ACT))
    with pytest.raises(ValueError, match=f"goal-conditioned {cls} \\(goal_dim=2\\) needs a goal"):
        planner.plan(np.zeros(STATE, np.float32))
    assert planner.plan(np.zeros(STATE + 2, np.float32)).states.shape[-1] == STATE


def test_kept_coarse_plans_are_refined_gap_by_gap_then_sampled_afresh(monkeypatch, tmp_path) -> None:
    planner = CoarseToFineDiffuser(STATE + 2, ACT, goal_dim=2, horizon=H, points=POINTS, levels=LEVELS,
                                   sampler={"steps": 2, "seed": 0}, **NET)  # fmt: skip
    assert planner.hparams["keep_coarse"] is True  # on for goal tasks
    data = rollouts(4)
    obs = data["obs"].reshape(-1, STATE).numpy()
    planner.fit_normalizers(np.concatenate([obs, obs[:, :2]], 1), data["actions"].reshape(-1, ACT))
    inner, calls = planner._level, []

    def record(level, start, end, noise):
        out = inner(level, start, end, noise)
        calls.append((level, end, out))
        return out

    monkeypatch.setattr(planner, "_level", record)
    o = np.concatenate([obs[0], [0.3, -0.2]]).astype(np.float32)
    plans, previous = [], None
    for _ in range(5):
        n = len(calls)
        previous = planner.plan(o, **planner.plan_options(previous))
        plans.append([c[0] for c in calls[n:]])
    # 2 gaps per level: level 1 moves to its second gap, then level 0 does, then all are used up
    assert plans == [[0, 1, 2], [2], [1, 2], [2], [0, 1, 2]]
    level1_first = calls[1][2]
    torch.testing.assert_close(calls[3][1], level1_first[:, 2, :STATE])  # 2nd replan ends at its point 2
    torch.testing.assert_close(calls[4][1], calls[0][2][:, 2, :STATE])  # level 0's second gap
    monkeypatch.undo()
    fresh = CoarseToFineDiffuser.load(planner.save(tmp_path / "p"), keep_coarse=False)
    assert fresh.plan_options(previous) == {}  # every replan samples every level


def test_levels_can_be_dits() -> None:
    dit = {"backbone": "dit", "backbone_kwargs": {"dim": 32, "depth": 1, "heads": 2}}
    planner = CoarseToFineDiffuser(STATE, ACT, horizon=H, points=POINTS, levels=LEVELS, value=False, **dit)
    assert all(type(d.net.backbone).__name__ == "DiT1d" for d in planner.network.denoisers)
    data = rollouts(4)
    planner.fit_normalizers(data["obs"].reshape(-1, STATE).numpy(), data["actions"].reshape(-1, ACT))
    assert planner.plan(np.zeros(STATE, np.float32)).states.shape == (1, 1, POINTS, STATE)


def test_one_checkpoint_plans_the_same_under_any_execution_settings(tmp_path) -> None:
    """Execution keys (goal hold, kept coarse plans, replanning) never change a plan: seeded alike on the same
    grid, the recipe's setting and a bare one sample the same first plan."""
    planner = CoarseToFineDiffuser(STATE + 2, ACT, goal_dim=2, horizon=H, points=POINTS, levels=LEVELS,
                                   goal_hold=0.5, sampler={"solver": "euler", "steps": 3}, **NET)  # fmt: skip
    data = rollouts(4)
    obs = data["obs"].reshape(-1, STATE).numpy()
    planner.fit_normalizers(np.concatenate([obs, obs[:, :2]], 1), data["actions"].reshape(-1, ACT))
    path = planner.save(tmp_path / "p")
    o = np.concatenate([obs[0], [1.5, -1.0]]).astype(np.float32)
    plans = []
    for keys in ({}, {"goal_hold": None, "keep_coarse": False, "replan_every": 2}):
        agent = CoarseToFineDiffuser.load(path, **keys)
        agent.reset(seed=7)
        plans.append(agent.plan(o).trajectory)
    torch.testing.assert_close(plans[0], plans[1], rtol=0, atol=0)
