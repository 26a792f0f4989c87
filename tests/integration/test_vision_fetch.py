"""Fetch robot-arm tasks: deterministic camera frames, scripted experts that succeed, a dataset generator that
resumes after an interruption with the same data, and `diffctl train` of an image policy end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diffctl.agents import load
from diffctl.datasets import EpisodeStore
from diffctl.datasets.generators import fetch as fetch_gen
from diffctl.envs.fetch import expert_for
from diffctl.envs.registry import get_task, make_env
from diffctl.train.pipeline import compose_config, run


def frames_after(env, seed: int, actions: np.ndarray) -> list[np.ndarray]:
    obs, _ = env.reset(seed=seed)
    frames = [obs["image"]]
    for a in actions:
        obs, *_ = env.step(a)
        frames.append(obs["image"])
    return frames


def test_camera_frames_are_deterministic_for_a_seed():
    actions = np.random.default_rng(0).uniform(-1, 1, (4, 4)).astype(np.float32)
    first, second = make_env("fetch-push-image"), make_env("fetch-push-image")
    try:
        obs, _ = first.reset(seed=3)
        assert obs["observations"].shape == (13,) and obs["observations"].dtype == np.float32
        assert obs["image"].shape == (84, 84, 3) and obs["image"].dtype == np.uint8
        a, b = frames_after(first, 3, actions), frames_after(second, 3, actions)
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        assert not np.array_equal(a[0], a[-1])  # the arm moved
        assert not np.array_equal(frames_after(first, 4, actions[:0])[0], a[0])  # another block position
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("task", ["fetch-reach", "fetch-push", "fetch-pick-place"])
def test_the_noiseless_scripted_experts_succeed(task):
    spec = get_task(task)
    env = make_env(task)
    try:
        wins = [
            fetch_gen.expert_episode(env, expert_for(spec), seed, 0.0)["infos/success"][-1]
            for seed in range(5)
        ]
    finally:
        env.close()
    assert sum(wins) >= 4, wins


def test_generation_resumes_after_an_interruption_with_the_same_data(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_gen, "BLOCK", 2)
    options = {"episodes": 5, "seed": 7, "eval_episodes": 2, "progress": False}
    straight = fetch_gen.generate_fetch("fetch-reach-image", tmp_path / "straight.zarr", **options)

    real, calls = fetch_gen.expert_episode, []

    def dies_on_the_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    out = tmp_path / "resumed.zarr"
    monkeypatch.setattr(fetch_gen, "expert_episode", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        fetch_gen.generate_fetch("fetch-reach-image", out, **options)
    assert not out.exists() and EpisodeStore.open(out.with_name(out.name + ".partial")).num_episodes == 2
    monkeypatch.setattr(fetch_gen, "expert_episode", real)
    resumed = fetch_gen.generate_fetch("fetch-reach-image", out, **options)
    assert not out.with_name(out.name + ".partial").exists()
    assert resumed.num_episodes == 5 and sorted(resumed.keys) == sorted(straight.keys)
    for key in straight.keys:
        assert np.array_equal(resumed.array(key), straight.array(key)), key
    card = resumed.attrs
    assert card["dataset"] == "fetch-reach-image" and card["camera"]["size"] == 84
    assert card["behaviour_policy"]["noiseless_expert"]["success_rate"] == 1.0


def test_an_image_policy_trains_and_acts_from_the_cli_pipeline(tmp_path):
    data = tmp_path / "reach.zarr"
    fetch_gen.generate_fetch("fetch-reach-image", data, episodes=3, eval_episodes=1, progress=False)
    cfg = compose_config([
        "task=fetch-reach-image", "policy=diffusion_unet", f"task.dataset.path={data}",
        f"run_dir={tmp_path / 'run'}", "training.steps=3", "training.batch_size=4", "training.progress=false",
        "eval.episodes=1", "policy.image_encoder_kwargs.width=8", "policy.image_encoder_kwargs.features=8",
        "policy.backbone_kwargs.down_dims=[16,32]", "sampler.steps=2",
    ])  # fmt: skip
    summary = run(cfg)
    assert summary["step"] == 3 and summary["best_score"] is not None
    agent = load(Path(cfg.run_dir) / "checkpoint")
    assert agent.config.image_shapes == {"image": [84, 84, 3]} and agent.task == "fetch-reach-image"
    env = make_env("fetch-reach-image")
    try:
        obs, _ = env.reset(seed=0)
        action = agent.act(obs)
    finally:
        env.close()
    assert action.shape == (4,) and np.all(np.abs(action) <= 1.0)
    with pytest.raises(ValueError, match="sees cameras"):
        agent.act(obs["observations"])


def test_a_frame_world_model_trains_from_the_pipeline_and_diffctl_eval_scores_it(tmp_path, capsys):
    from diffctl.cli import main
    from diffctl.world_models.frames import FrameWorldModel

    data = tmp_path / "reach.zarr"
    fetch_gen.generate_fetch("fetch-reach-image", data, episodes=3, eval_episodes=1, progress=False)
    cfg = compose_config([
        "experiment=frame_world_model", "task=fetch-reach-image", f"task.dataset.path={data}",
        f"run_dir={tmp_path / 'run'}", "training.steps=2", "training.batch_size=4", "training.progress=false",
        "world_model.frame_size=16", "world_model.held_out=0.34",
        "world_model.unet_kwargs={base: 8, mults: [1, 2], blocks: 1, attn_res: []}",
    ])  # fmt: skip
    run(cfg)
    ckpt = Path(cfg.run_dir) / "checkpoint"
    model = load(ckpt)
    assert isinstance(model, FrameWorldModel) and model.sampler.steps == 3 and model.action_dim == 4
    video = tmp_path / "imagined.gif"
    assert (
        main(
            ["eval", str(ckpt), "--episodes", "2", "--video", str(video), "--json", str(tmp_path / "r.json")]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "copy RMSE" in out and video.exists()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["starts"] == 2 and set(report["errors"]) == {"1", "4", "16"}


@pytest.mark.parametrize("task", ["reach", "push", "pick_place"])
def test_the_fetch_recipes_compose(task):
    image = compose_config([f"experiment=fetch_{task}_image"])
    state = compose_config([f"experiment=fetch_{task}_state"])
    assert image.task.name == f"fetch-{task.replace('_', '-')}-image" and list(image.task.image_keys) == [
        "image"
    ]
    assert state.task.name == f"fetch-{task.replace('_', '-')}" and "image_keys" not in state.task
    assert image.policy.image_encoder_kwargs.width == 16 and image.policy.backbone == state.policy.backbone


@pytest.mark.parametrize("agent", ["policy=bc_mlp", "policy=edp"])
def test_agents_without_a_camera_encoder_refuse_an_image_task(tmp_path, agent):
    data = tmp_path / "reach.zarr"
    fetch_gen.generate_fetch("fetch-reach-image", data, episodes=2, eval_episodes=1, progress=False)
    cfg = compose_config(["task=fetch-reach-image", agent, f"task.dataset.path={data}",
                          f"run_dir={tmp_path / 'r'}", "training.steps=1", "training.progress=false",
                          "eval.episodes=0"])  # fmt: skip
    with pytest.raises(ValueError, match="does not take camera observations"):
        run(cfg)
