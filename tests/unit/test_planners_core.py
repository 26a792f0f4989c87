"""Planners without training: inpainting, returns-to-go, inverse dynamics, replanning in act(), bad input."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from diffctl.planners import CoarseToFineDiffuser, DecisionDiffuser, Diffuser, InverseDynamics, window_returns
from diffctl.planners.base import Plan

STATE, ACT, GOAL, H = 4, 2, 2, 8
SMALL_NET = {"backbone": "mlp", "backbone_kwargs": {"hidden": 64, "depth": 1, "embed_dim": 16}}


def fitted(planner, returns: bool = False):
    """Fit normalizers on uniform data over [-2, 2] states, [-1, 1] actions, returns in [0, 10]."""
    rng = np.random.default_rng(0)
    obs = rng.uniform(-2, 2, size=(256, STATE + planner.goal_dim))
    actions = rng.uniform(-1, 1, size=(256, ACT))
    goal = obs[:, STATE:] if planner.goal_dim else None
    planner.fit_normalizers(obs, actions, goal, returns=rng.uniform(0, 10, 256) if returns else None)
    return planner


def test_window_returns_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(5, 6, generator=g)
    mask = torch.ones(5, 6, dtype=torch.bool)
    mask[1, 4:] = False  # window runs past the episode end
    mask[2, :2] = False  # window starts before the episode
    rewards = rewards * mask
    returns = torch.rand(5, generator=g) * 3
    gamma = 0.9
    got = window_returns(rewards, returns, mask, gamma)
    for b in range(5):
        idx = mask[b].nonzero().flatten().tolist()
        f, j = idx[0], idx[-1]
        want = sum(gamma ** (k - f) * float(rewards[b, k]) for k in range(f, j)) + gamma ** (j - f) * float(
            returns[b]
        )
        assert float(got[b]) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="at least one valid step"):
        window_returns(rewards, returns, torch.zeros_like(mask), gamma)


@pytest.mark.parametrize("solver", ["euler", "heun", "ddpm", "dpmpp_2m"])
def test_diffuser_inpaints_current_state_and_goal(solver: str) -> None:
    planner = fitted(Diffuser(STATE + GOAL, ACT, goal_dim=GOAL, horizon=H, n_plans=3, **SMALL_NET,
                              sampler={"solver": solver, "steps": 4, "seed": 0}))  # fmt: skip
    obs = np.array([[0.3, -1.2, 0.5, 0.1, 1.5, 1.7], [-1.0, 0.4, 0.0, -0.2, -1.5, 0.2]], dtype=np.float32)
    plan = planner.plan(obs)
    assert isinstance(plan, Plan) and plan.values is None
    assert plan.states.shape == (2, 3, H, STATE) and plan.actions.shape == (2, 3, H, ACT)
    want0 = torch.from_numpy(obs[:, None, :STATE]).expand(2, 3, STATE)
    torch.testing.assert_close(plan.states[:, :, 0], want0, atol=1e-5, rtol=0)
    want_goal = torch.from_numpy(obs[:, None, STATE:]).expand(2, 3, GOAL)
    torch.testing.assert_close(plan.states[:, :, -1, :GOAL], want_goal, atol=1e-5, rtol=0)
    assert not torch.allclose(plan.states[:, :, 1], plan.states[:, :, 0], atol=1e-3)
    explicit = planner.plan(obs[0, :STATE], goal=[0.0, -0.5])
    torch.testing.assert_close(
        explicit.states[0, :, -1, :GOAL], torch.tensor([[0.0, -0.5]] * 3), atol=1e-5, rtol=0
    )


def test_decision_diffuser_inpaints_current_state() -> None:
    planner = fitted(DecisionDiffuser(STATE, ACT, horizon=H, condition="none", **SMALL_NET,
                                      sampler={"steps": 3, "seed": 1}))  # fmt: skip
    obs = np.array([0.7, -0.3, 0.2, 1.1], dtype=np.float32)
    plan = planner.plan(obs)
    assert plan.states.shape == (1, 1, H, STATE) and plan.actions.shape == (1, 1, H - 1, ACT)
    torch.testing.assert_close(plan.states[0, 0, 0], torch.from_numpy(obs), atol=1e-5, rtol=0)
    assert float(plan.actions.abs().max()) <= 1.0 + 1e-6


def test_inverse_dynamics_recovers_linear_dynamics() -> None:
    torch.manual_seed(0)
    a_mat = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.8, 0.2], [0.1, 0.0, 0.95]])
    b_mat = torch.tensor([[0.5, 0.0], [0.1, 0.4], [-0.2, 0.3]])
    model = InverseDynamics(3, 2, hidden=64, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(600):
        s = torch.rand(256, 3) * 2 - 1
        a = torch.rand(256, 2) * 1.6 - 0.8
        loss = ((model(s, s @ a_mat.T + a @ b_mat.T) - a) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    s = torch.rand(512, 3) * 2 - 1
    a = torch.rand(512, 2) * 1.6 - 0.8
    with torch.no_grad():
        err = (model(s, s @ a_mat.T + a @ b_mat.T) - a).abs().mean()
    assert float(err) < 0.03  # actions span [-0.8, 0.8]: mean error under 2% of the range


def test_inverse_dynamics_loss_masks_padded_pairs() -> None:
    model = InverseDynamics(2, 1, hidden=8, depth=1)
    states, actions = torch.zeros(1, 4, 2), torch.zeros(1, 4, 1)
    actions[0, 2] = 100.0  # a pair that touches the padded last step must not count
    mask = torch.tensor([[True, True, True, False]])
    with torch.no_grad():
        pred = model(states[:, :-1], states[:, 1:])
    want = (pred[0, :2] ** 2).mean()
    torch.testing.assert_close(model.loss(states, actions, mask).detach(), want)


def test_act_replans_every_k_steps_and_on_deviation(tmp_path) -> None:
    planner = fitted(Diffuser(STATE, ACT, horizon=H, value=False, replan_every=3, **SMALL_NET,
                              sampler={"steps": 2, "seed": 0}))  # fmt: skip
    obs = np.array([0.1, 0.2, 0.0, 0.0], dtype=np.float32)
    planner.reset()
    for _ in range(7):
        action = planner.act(obs)
        assert action.shape == (ACT,) and action.dtype == np.float32 and np.all(np.abs(action) <= 1)
    assert planner.replans == 3  # steps 0, 3, 6
    saved = planner.save(tmp_path / "p")
    planner = Diffuser.load(saved, replan_every=0)
    planner.reset()
    for _ in range(H):
        planner.act(obs)
    assert planner.replans == 2  # the plan is used up after H - 1 steps
    planner = Diffuser.load(saved, replan_every=0, replan_threshold=0.05)
    planner.reset()
    planner.act(obs)
    planner.act(obs + np.array([1.5, -1.5, 0, 0], dtype=np.float32))  # far off the plan's next state
    assert planner.replans == 2


def test_diffuser_plan_actions_and_pd_tracking() -> None:
    planner = fitted(Diffuser(STATE + GOAL, ACT, goal_dim=GOAL, horizon=H, **SMALL_NET,
                              sampler={"steps": 2, "seed": 0}))  # fmt: skip
    assert planner.tracking_mode() == "pd"
    obs = np.array([0.1, 0.2, 0.0, 0.0, 1.0, 1.0], dtype=np.float32)
    planner.reset()
    action = planner.act(obs)
    nxt = planner.runner.plan.states[0, 0, 1].numpy()
    want = np.clip((nxt[:2] - obs[:2]) + (nxt[2:4] - obs[2:4]), -1, 1)
    np.testing.assert_allclose(action, want, atol=1e-5)
    plain = fitted(Diffuser(STATE, ACT, horizon=H, value=False, **SMALL_NET, sampler={"steps": 2, "seed": 0}))
    assert plain.tracking_mode() == "plan"
    plain.reset()
    first = plain.act(obs[:STATE])
    np.testing.assert_allclose(first, plain.runner.plan.actions[0, 0, 0].numpy(), atol=1e-6)


@pytest.mark.parametrize("cls", [Diffuser, DecisionDiffuser])
def test_goal_hold_steers_to_the_goal_at_rest_without_planning(cls, tmp_path) -> None:
    planner = fitted(cls(STATE + GOAL, ACT, goal_dim=GOAL, horizon=H, goal_hold=0.5, kp=2.0, kd=0.5,
                         **SMALL_NET, sampler={"steps": 2, "seed": 0}))  # fmt: skip
    planner.reset()
    near = np.array([0.8, 0.9, 0.3, -0.4, 1.0, 1.0], dtype=np.float32)  # 0.22 from the goal
    action = planner.act(near)
    np.testing.assert_allclose(action, [2.0 * 0.2 - 0.5 * 0.3, 2.0 * 0.1 + 0.5 * 0.4], atol=1e-6)
    assert planner.replans == 0
    planner.act(np.array([-1.0, -1.0, 0.0, 0.0, 1.0, 1.0], dtype=np.float32))  # far: plans
    assert planner.replans == 1
    planner.act(near)  # back in the hold region: the plan is dropped ...
    planner.act(np.array([-0.9, -1.0, 0.0, 0.0, 1.0, 1.0], dtype=np.float32))
    assert planner.replans == 2  # ... so leaving it plans afresh
    off = cls.load(planner.save(tmp_path / "p"), goal_hold=None)
    off.reset()
    off.act(near)
    assert off.replans == 1
    with pytest.raises(ValueError, match="goal_hold must be None or > 0 on a goal task"):
        cls(STATE, ACT, horizon=H, goal_hold=0.5, **SMALL_NET)
    with pytest.raises(ValueError, match="goal_hold must be None or > 0"):
        cls(STATE + GOAL, ACT, goal_dim=GOAL, horizon=H, goal_hold=0.0, **SMALL_NET)


def test_bad_inputs_raise_clear_errors() -> None:
    planner = fitted(Diffuser(STATE + GOAL, ACT, goal_dim=GOAL, horizon=H, **SMALL_NET, sampler={"steps": 2}))
    with pytest.raises(ValueError, match="observation has shape"):
        planner.plan(np.zeros(5))
    with pytest.raises(ValueError, match="NaN or inf"):
        planner.plan(np.array([0, 0, np.nan, 0, 0, 0]))
    with pytest.raises(ValueError, match="goal_dim=2"):
        planner.plan(np.zeros(4), goal=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"shape \(2, 6\); expected one of \[\(4,\), \(6,\)\]"):
        planner.act(np.zeros((2, 6)))
    with pytest.raises(ValueError, match="n_obs_steps = horizon"):
        planner.loss({"obs": torch.zeros(3, 2, 6), "actions": torch.zeros(3, H, ACT)})
    with pytest.raises(ValueError, match="missing key 'actions'"):
        planner.loss({"obs": torch.zeros(3, H, 6)})
    with pytest.raises(ValueError, match="no 'state' normalizer"):
        Diffuser(STATE, ACT, horizon=H, value=False, **SMALL_NET).plan(np.zeros(4))
    with pytest.raises(ValueError, match="needs returns="):
        fitted(Diffuser(STATE, ACT, horizon=H, **SMALL_NET))  # value model on, no returns given
    valued = fitted(Diffuser(STATE, ACT, horizon=H, **SMALL_NET), returns=True)
    with pytest.raises(ValueError, match="no 'rewards'"):
        valued.loss({"obs": torch.zeros(2, H, 4), "actions": torch.zeros(2, H, ACT)})
    with pytest.raises(ValueError, match="tracking must be one of"):
        Diffuser(STATE, ACT, horizon=H, tracking="magic")
    with pytest.raises(ValueError, match="no inverse dynamics"):
        Diffuser(STATE, ACT, horizon=H, tracking="inverse_dynamics")
    with pytest.raises(ValueError, match="horizon must be >= 2"):
        Diffuser(STATE, ACT, horizon=1)
    with pytest.raises(ValueError, match="goal_dims"):
        Diffuser(STATE + GOAL, ACT, goal_dim=GOAL, horizon=H, goal_dims=[0, 7])
    with pytest.raises(ValueError, match="condition 'goal' needs goal_dim"):
        DecisionDiffuser(STATE, ACT, horizon=H, condition="goal")
    with pytest.raises(ValueError, match=r"sampler\.steps"):
        Diffuser(STATE, ACT, horizon=H, sampler={"steps": 0})
    with pytest.raises(ValueError, match="noise must have shape"):
        planner.plan(np.zeros(6), noise=torch.zeros(1, H, 3))


def test_load_rejects_bad_directories_and_overrides(tmp_path) -> None:
    planner = fitted(Diffuser(STATE, ACT, horizon=H, value=False, **SMALL_NET))
    path = planner.save(tmp_path / "p")
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        Diffuser.load(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"expected 'DecisionDiffuser'"):
        DecisionDiffuser.load(path)
    with pytest.raises(ValueError, match=r"unknown sampler keys.*inference keys"):
        Diffuser.load(path, bogus=1)
    (path / "config.json").write_text(
        (path / "config.json").read_text().replace('"version": 1', '"version": 9')
    )
    with pytest.raises(ValueError, match="version 9"):
        Diffuser.load(path)


@pytest.mark.parametrize(
    "name", ["diffuser", "diffuser_mlp", "decision_diffuser", "decision_diffuser_mlp", "diffuser_lite"]
)
def test_planner_configs_build_their_planner(name: str) -> None:
    from diffctl.train.pipeline import RESERVED_POLICY_KEYS, compose_config

    conf = OmegaConf.to_container(compose_config([f"planner={name}"]))  # interpolations left unresolved
    section = dict(conf["planner"])
    classes = {
        "Diffuser": Diffuser,
        "DecisionDiffuser": DecisionDiffuser,
        "CoarseToFineDiffuser": CoarseToFineDiffuser,
    }
    cls = classes[section.pop("class")]
    for key in RESERVED_POLICY_KEYS:
        section.pop(key, None)
    section["seed"] = 0
    planner = cls(STATE + GOAL, ACT, goal_dim=GOAL, horizon=conf["task"]["horizon"], **section,
                  sampler=conf.get("sampler"))  # fmt: skip
    assert planner.horizon == conf["task"]["horizon"] and conf["task"]["n_obs_steps"] == "${task.horizon}"


@pytest.mark.parametrize("cls", [Diffuser, DecisionDiffuser])
def test_warm_start_renoises_the_shifted_plan_and_runs_only_the_grid_tail(cls) -> None:
    from diffctl.planners.base import shift_trajectory

    kwargs = {"value": False} if cls is Diffuser else {"condition": "none"}
    planner = fitted(cls(STATE, ACT, horizon=H, replan_every=2, **kwargs, **SMALL_NET,
                         sampler={"solver": "euler", "steps": 10, "warm_start": 0.3, "seed": 0}))  # fmt: skip
    calls: list[float] = []
    planner.network.denoiser.register_forward_pre_hook(lambda m, args: calls.append(float(args[1][0])))
    obs = np.array([0.1, 0.2, 0.0, 0.0], dtype=np.float32)
    cold = planner.plan(obs)
    assert len(calls) == 10 and cold.trajectory is not None
    grid = planner.sigmas()
    calls.clear()
    init = shift_trajectory(cold.trajectory[:, 0], 1)
    torch.testing.assert_close(init[:, :-1], cold.trajectory[:, 0, 1:])
    torch.testing.assert_close(init[:, -1], cold.trajectory[:, 0, -1])
    warm = planner.plan(obs, init=init)
    tail = [float(s) for s in grid[:-1] if s < 0.3]
    assert calls == pytest.approx([0.3, *tail]) and len(calls) < 10
    # at a small sigma the warm plan stays near the trajectory it started from (first state is inpainted)
    free = warm.trajectory[0, 0, 1:-1] - init[0, 1:-1]
    assert float(free.abs().mean()) < 0.5
    with pytest.raises(ValueError, match="init must be normalized trajectories"):
        planner.plan(obs, init=init[:, :3])

    planner.reset()
    seen: list[torch.Tensor | None] = []
    plan = planner.plan
    planner.plan = lambda o, init=None: seen.append(init) or plan(o, init=init)  # type: ignore[method-assign]
    for _ in range(5):
        planner.act(obs)
    assert len(seen) == 3 and seen[0] is None and all(s is not None for s in seen[1:])


@pytest.mark.parametrize(
    ("recipe", "task"), [("planner_diffuser_hopper", "hopper"), ("planner_diffuser_walker", "walker2d")]
)
def test_locomotion_recipes_compose_a_value_guided_diffuser(recipe: str, task: str) -> None:
    """The locomotion recipes: Diffuser's horizon 32 and replanning every step, 16 plans ranked by a value
    model that also guides sampling; the MLP backbone replaces the U-Net's options instead of merging."""
    from diffctl.train.pipeline import compose_config

    conf = OmegaConf.to_container(compose_config([f"experiment={recipe}"]), resolve=True)
    planner, task_conf = conf["planner"], conf["task"]
    assert task_conf["name"] == task and task_conf["horizon"] == task_conf["n_obs_steps"] == 32
    assert planner["class"] == "Diffuser" and planner["backbone"] == "mlp"
    assert set(planner["backbone_kwargs"]) == {"hidden", "depth", "embed_dim"}
    assert (planner["replan_every"], planner["n_plans"], planner["value_scale"]) == (1, 16, 0.1)
    built = Diffuser(11, 3, horizon=32, backbone="mlp", backbone_kwargs=planner["backbone_kwargs"])
    assert built.uses_returns and built.network.value is not None


def test_rank_with_a_verifier_orders_plans_by_its_scores() -> None:
    """``rank_with``: the plans come back sorted by the verifier's score of (obs, raw actions), with those
    scores as values, whatever the value model says; the verifier sees the observation with its goal."""
    planner = fitted(
        Diffuser(STATE + GOAL, ACT, goal_dim=GOAL, horizon=H, n_plans=6, value=True, **SMALL_NET,
                 sampler={"steps": 2, "seed": 0}),
        returns=True,
    )  # fmt: skip
    obs = np.array([0.1, 0.2, 0.0, 0.0, 1.0, 1.0], dtype=np.float32)
    seen = []

    def verifier(o: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        seen.append(o.clone())
        return -actions[:, 0, 0]  # the plan whose first action pushes least along x wins

    planner.seed(0)
    by_value = planner.plan(obs)
    planner.rank_with(verifier).seed(0)
    plan = planner.plan(obs)
    firsts = plan.actions[0, :, 0, 0]
    assert torch.all(firsts[:-1] <= firsts[1:])  # best first
    torch.testing.assert_close(plan.values[0], -firsts)
    torch.testing.assert_close(seen[0], torch.as_tensor(obs).expand(6, -1))
    # the same six samples, only reordered
    torch.testing.assert_close(plan.actions[0].sort(0).values, by_value.actions[0].sort(0).values)
    planner.rank_with(None).seed(0)
    torch.testing.assert_close(planner.plan(obs).values, by_value.values)
    with pytest.raises(ValueError, match=r"verifier returned scores of shape \(3,\)"):
        planner.rank_with(lambda o, a: torch.zeros(3)).plan(obs)
    with pytest.raises(ValueError, match="callable"):
        planner.rank_with(42)
