"""DiffusionPolicy: learns a tiny dataset, round-trips through save/load and pickle, acts with a queue."""

import json
import pickle

import numpy as np
import pytest
import torch

import diffctl as dc
from diffctl.policies import DiffusionPolicy, SamplerConfig

OBS, ACT, GOAL, H, TO, TA = 4, 2, 2, 8, 2, 4


def tiny_data(n: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """Windows whose action chunk is a deterministic function of the last observation and the goal."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand(n, TO, OBS, generator=g) * 2 - 1
    goal = torch.rand(n, GOAL, generator=g) * 2 - 1
    ramp = torch.linspace(0, 1, H).reshape(1, H, 1)
    actions = (0.6 * obs[:, -1:, :ACT] * (1 - ramp) + 0.6 * goal.unsqueeze(1) * ramp).clamp(-1, 1)
    return {"obs": obs, "goal": goal, "actions": actions, "action_mask": torch.ones(n, H, dtype=torch.bool)}


def make_policy(**kwargs) -> DiffusionPolicy:
    opts = {"goal_dim": GOAL, "horizon": H, "n_obs_steps": TO, "n_action_steps": TA, "backbone": "mlp",
            "backbone_kwargs": {"hidden": 128, "depth": 2, "embed_dim": 32}}  # fmt: skip
    opts.update(kwargs)
    policy = DiffusionPolicy(OBS, ACT, **opts)
    data = tiny_data(64, seed=1)
    lo = torch.full((1, OBS), -1.0)
    policy.fit_normalizers(torch.cat([data["obs"].reshape(-1, OBS), lo, -lo]), torch.cat(
        [data["actions"].reshape(-1, ACT), -torch.ones(1, ACT), torch.ones(1, ACT)]
    ), torch.cat([data["goal"], -torch.ones(1, GOAL), torch.ones(1, GOAL)]))  # fmt: skip
    return policy


def train(policy: DiffusionPolicy, batch: dict, steps: int, lr: float = 3e-3) -> list[float]:
    torch.manual_seed(0)
    opt = torch.optim.Adam(policy.network.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss, info = policy.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(info["loss"])
    return losses


@pytest.fixture(scope="module")
def trained() -> tuple[DiffusionPolicy, dict]:
    policy = make_policy(goal_dropout=0.2)
    batch = tiny_data()
    policy.losses = train(policy, batch, 700)
    return policy, batch


def test_overfits_tiny_dataset(trained):
    policy, batch = trained
    first, last = np.mean(policy.losses[:20]), np.mean(policy.losses[-50:])
    assert last < first / 5, (first, last)
    hist = torch.cat([batch["obs"], batch["goal"].unsqueeze(1).expand(-1, TO, -1)], dim=-1)
    for solver, steps in (("dpmpp_2m", 10), ("ddpm", 100)):
        policy.sampler = SamplerConfig(solver=solver, steps=steps)
        policy.seed(0)
        chunk = policy.predict_chunk(hist)
        assert chunk.shape == (len(hist), H, ACT)
        err = (chunk - batch["actions"]).abs().mean().item()
        assert err < 0.08, (solver, err)
    policy.sampler = SamplerConfig()


def test_vp_recipe_overfits():
    policy = make_policy(parameterization="vp", sampler={"solver": "ddpm", "steps": 100})
    batch = tiny_data()
    losses = train(policy, batch, 1000)
    assert np.mean(losses[-50:]) < np.mean(losses[:20]) / 5
    hist = torch.cat([batch["obs"], batch["goal"].unsqueeze(1).expand(-1, TO, -1)], dim=-1)
    for solver, steps in (("ddpm", 100), ("ddim", 10)):
        policy.sampler = SamplerConfig(solver=solver, steps=steps)
        policy.seed(0)
        err = (policy.predict_chunk(hist) - batch["actions"]).abs().mean().item()
        assert err < (0.12 if solver == "ddpm" else 0.2), (solver, err)


def test_goal_guidance_changes_the_chunk(trained):
    policy, batch = trained
    hist = torch.cat([batch["obs"], batch["goal"].unsqueeze(1).expand(-1, TO, -1)], dim=-1)
    noise = torch.randn(len(hist), H, ACT, generator=torch.Generator().manual_seed(3))
    out = {}
    for w in (0.0, 1.0, 2.0):
        policy.sampler = SamplerConfig(solver="euler", steps=8, guidance_scale=w)
        out[w] = policy.predict_chunk(hist, noise=noise)
    policy.sampler = SamplerConfig(solver="euler", steps=8)
    free = policy.predict_chunk(hist[..., :OBS], noise=noise)  # no goal in the observation = goal-free
    torch.testing.assert_close(free, out[0.0])
    goal_err = {w: (c[:, -1] - batch["goal"]).abs().mean().item() for w, c in out.items()}
    assert goal_err[1.0] < goal_err[0.0]
    assert not torch.allclose(out[2.0], out[1.0])


def test_prefix_is_inpainted(trained):
    policy, batch = trained
    hist = torch.cat([batch["obs"], batch["goal"].unsqueeze(1).expand(-1, TO, -1)], dim=-1)[:3]
    prefix = torch.tensor([[[0.5, -0.5], [0.25, 0.0]]]).expand(3, -1, -1)
    chunk = policy.predict_chunk(hist, prefix=prefix)
    torch.testing.assert_close(chunk[:, :2], prefix, atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", [(3, 2), (2, 2, 2), (3, None, 2), (3, 2, 3)])
def test_prefix_of_the_wrong_shape_is_refused(trained, shape):
    policy, batch = trained
    hist = torch.cat([batch["obs"], batch["goal"].unsqueeze(1).expand(-1, TO, -1)], dim=-1)[:3]
    shape = tuple(policy.horizon + 1 if d is None else d for d in shape)
    with pytest.raises(ValueError, match=rf"prefix must have shape \(3, P <= {policy.horizon}, 2\)"):
        policy.predict_chunk(hist, prefix=torch.zeros(shape))


def test_act_queue_executes_from_to_minus_one(monkeypatch):
    policy = make_policy()
    calls = []

    def fake_chunk(hist, **kwargs):
        calls.append(np.asarray(hist).copy())
        base = 10.0 * len(calls)
        return torch.arange(H, dtype=torch.float32).reshape(1, H, 1).expand(1, H, ACT) + base

    monkeypatch.setattr(policy, "predict_chunk", fake_chunk)
    policy.reset()
    obs = [np.full(OBS + GOAL, float(i), dtype=np.float32) for i in range(2 * TA)]
    actions = [policy.act(o) for o in obs]
    assert len(calls) == 2
    np.testing.assert_array_equal(calls[0][0, :, 0], [0.0, 0.0])  # history padded with the first obs
    np.testing.assert_array_equal(calls[1][0, :, 0], [TA - 1, TA])
    assert [a[0] for a in actions[:TA]] == [10.0 + TO - 1 + k for k in range(TA)]
    assert [a[0] for a in actions[TA:]] == [20.0 + TO - 1 + k for k in range(TA)]


def test_loss_ignores_padded_actions(trained, monkeypatch):
    policy, batch = trained
    # a denoiser that ignores its input makes the per-step error depend on that step's target only
    monkeypatch.setattr(policy, "denoiser", lambda: lambda x, sigma, cond: torch.zeros_like(x))
    mask = batch["action_mask"].clone()
    mask[:, -3:] = False
    other = {**batch, "action_mask": mask, "actions": batch["actions"].clone()}
    other["actions"][:, -3:] = 0.9
    losses = []
    for b in ({**batch, "action_mask": mask}, other, batch):
        torch.manual_seed(5)
        losses.append(policy.loss(b)[0])
    torch.testing.assert_close(losses[0], losses[1])
    assert not torch.allclose(losses[0], losses[2])
    with pytest.raises(ValueError, match="actions"):
        policy.loss({"obs": batch["obs"]})


def test_save_load_roundtrip_same_actions(trained, tmp_path):
    policy, _ = trained
    policy.sampler = SamplerConfig(solver="dpmpp_2m", steps=6)
    path = policy.save(tmp_path / "agent")
    config = json.loads((path / "config.json").read_text())
    assert config["class"] == "DiffusionPolicy" and config["version"] == 1
    assert set(config["normalizers"]) == {"obs", "action", "goal"}
    assert config["hyperparameters"]["horizon"] == H and config["sampler"]["steps"] == 6
    loaded = dc.load(path)
    rng = np.random.default_rng(0)
    obs = [rng.uniform(-1, 1, OBS + GOAL).astype(np.float32) for _ in range(3 * TA)]
    runs = []
    for agent in (policy, loaded, pickle.loads(pickle.dumps(policy))):
        agent.reset(seed=7)
        runs.append(np.stack([agent.act(o) for o in obs]))
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], runs[2])
    fast = dc.load(path, solver="euler", steps=3, guidance_scale=1.5)
    assert (fast.sampler.solver, fast.sampler.steps, fast.sampler.guidance_scale) == ("euler", 3, 1.5)
    policy.save(path)  # overwriting an existing agent directory is atomic and leaves no temp dirs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent"]
    policy.sampler = SamplerConfig()


def test_load_errors(trained, tmp_path):
    policy, _ = trained
    path = policy.save(tmp_path / "agent")
    with pytest.raises(ValueError, match="sampler keys"):
        dc.load(path, solver="euler", stepz=3)
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        dc.load(tmp_path / "missing")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "version": 99}))
    with pytest.raises(ValueError, match="version"):
        dc.load(path)
    (path / "config.json").write_text(json.dumps({**config, "class": "Nope"}))
    with pytest.raises(ValueError, match="Nope"):
        dc.load(path)


def test_act_rejects_bad_observations(trained):
    policy, _ = trained
    policy.reset()
    with pytest.raises(ValueError, match="shape"):
        policy.act(np.zeros(5, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        policy.act(np.array([0.0, np.nan, 0.0, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="obs_history"):
        policy.predict_chunk(np.zeros((1, TO + 1, OBS)))


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="n_action_steps"):
        DiffusionPolicy(OBS, ACT, horizon=8, n_obs_steps=2, n_action_steps=8)
    with pytest.raises(ValueError, match="parameterization"):
        DiffusionPolicy(OBS, ACT, parameterization="ve")
    with pytest.raises(ValueError, match="fit_normalizers"):
        DiffusionPolicy(OBS, ACT, backbone="mlp").act(np.zeros(OBS))
    with pytest.raises(ValueError, match="steps"):
        SamplerConfig(steps=0)


def test_warm_start_runs(trained):
    policy, _ = trained
    policy.sampler = SamplerConfig(solver="euler", steps=10, warm_start=0.5)
    policy.reset(seed=0)
    acts = np.stack([policy.act(np.zeros(OBS + GOAL, dtype=np.float32)) for _ in range(3 * TA)])
    assert acts.shape == (3 * TA, ACT) and np.isfinite(acts).all()
    policy.sampler = SamplerConfig()


@pytest.mark.parametrize(
    ("backbone", "kwargs"),
    [("unet", {"down_dims": [16, 32], "embed_dim": 16}), ("dit", {"dim": 32, "depth": 1, "heads": 2})],
)
def test_other_backbones_train_and_sample(backbone, kwargs, tmp_path):
    policy = make_policy(backbone=backbone, backbone_kwargs=kwargs, sampler={"solver": "heun", "steps": 3})
    losses = train(policy, tiny_data(), 40)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    loaded = dc.load(policy.save(tmp_path / backbone))
    hist = np.zeros((2, TO, OBS + GOAL), dtype=np.float32)
    noise = torch.randn(2, H, ACT)
    torch.testing.assert_close(
        policy.predict_chunk(hist, noise=noise), loaded.predict_chunk(hist, noise=noise)
    )
