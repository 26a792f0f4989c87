"""Hydra config composition, `diffctl train` / `diffctl eval` end to end on a tiny generated maze dataset,
and the CLI's error messages."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from diffctl.agents import load
from diffctl.cli import main
from diffctl.envs.registry import TASKS
from diffctl.policies import DiffusionPolicy, SamplerConfig
from diffctl.train import TrainConfig
from diffctl.train.distributed import DistInfo
from diffctl.train.metrics import read_metrics
from diffctl.train.pipeline import (
    RESERVED_POLICY_KEYS,
    compose_config,
    group_options,
    resolve_run_dir,
    to_dict,
)


def test_groups_list_the_expected_options() -> None:
    assert group_options("task") == sorted(TASKS)
    assert group_options("policy") == ["diffusion_mlp", "diffusion_transformer", "diffusion_unet"]
    assert group_options("sampler") == ["ddim", "ddpm", "dpmpp_2m", "euler", "heun"]


@pytest.mark.parametrize("group", ["task", "policy", "sampler"])
def test_every_group_option_composes(group: str) -> None:
    accepted = set(inspect.signature(DiffusionPolicy).parameters)
    for option in group_options(group):
        conf = to_dict(compose_config([f"{group}={option}"]))
        TrainConfig.from_dict(conf["training"])
        sampler = SamplerConfig.from_dict(conf["sampler"])
        assert set(conf["policy"]) - set(RESERVED_POLICY_KEYS) <= accepted
        task = conf["task"]
        assert task["name"] in TASKS and task["n_action_steps"] <= task["horizon"] - task["n_obs_steps"] + 1
        assert conf["eval"]["episodes"] == task["eval"]["episodes"]
        if group == "sampler":
            assert sampler.solver == option
        else:
            assert conf[group]["name"] == option


def test_overrides_reach_the_config_and_default_run_dir() -> None:
    conf = to_dict(
        compose_config(["policy=diffusion_transformer", "training.steps=7", "policy.backbone_kwargs.depth=2"])
    )
    assert conf["training"]["steps"] == 7 and conf["policy"]["backbone_kwargs"]["depth"] == 2
    assert conf["training"]["seed"] == conf["seed"]
    run_dir = resolve_run_dir(conf, DistInfo())
    assert run_dir.parent == Path("runs") and run_dir.name.startswith("maze2d-umaze-diffusion_transformer-")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "task=nope"], "unknown task 'nope'; available: halfcheetah, hopper, maze2d-large"),
        (["train", "policy=cnn"], "unknown policy 'cnn'; available: diffusion_mlp"),
        (["train", "sampler=rk45"], "unknown sampler 'rk45'; available: ddim, ddpm"),
        (["train", "training.stepz=3"], "valid keys of training: ['adam_eps'"),
        (["train", "policy.depth=3"], "valid keys of policy: ['backbone'"),
        (["train", "training.steps=abc"], "training.steps must be of type int, got 'abc'"),
        (["train", "training.lr=-1"], "training.lr must be positive"),
        (["train", "--oops"], "expected hydra overrides of the form key=value, got ['--oops']"),
        (
            ["eval", "does/not/exist", "--task", "maze2d-umaze"],
            "checkpoint does/not/exist is not a directory",
        ),
    ],
)
def test_cli_errors_are_clear(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"diffctl {argv[0]}: error:" in err and message in err


def test_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--print-config", "sampler=heun", "training.steps=3"]) == 0
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed.sampler.solver == "heun" and printed.training.steps == 3 and printed.eval.episodes == 50


def test_train_resume_and_eval_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, run = tmp_path / "umaze.zarr", tmp_path / "run"
    common = [
        "task=maze2d-umaze", "policy=diffusion_mlp", "policy.backbone_kwargs.hidden=32", "sampler=euler",
        f"task.dataset.path={data}", "task.dataset.generate.episodes=3", "eval.episodes=0",
        "training.batch_size=16", "training.warmup_steps=2", "training.checkpoint_every=4",
        "training.progress=false", "training.log_every=1",
    ]  # fmt: skip
    assert main(["train", *common, "training.steps=8", f"run_dir={run}"]) == 0
    assert data.is_dir()  # generated because the configured path did not exist
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.training.steps == 8 and saved.task.dataset.path == str(data) and saved.training.seed == 0
    agent = load(run / "checkpoint", solver="euler", steps=3)
    assert agent.sampler.steps == 3 and agent.goal_dim == 2 and agent.obs_dim == 4

    assert main(["train", *common, "training.steps=12", "--resume", str(run)]) == 0
    steps = [r["step"] for r in read_metrics(run) if "loss" in r]
    assert steps == list(range(1, 13))
    assert json.loads((run / "summary.json").read_text())["step"] == 12
    capsys.readouterr()

    out = tmp_path / "eval.json"
    assert main(["eval", str(run / "checkpoint"), "--episodes", "1", "--workers", "0", "--solver", "ddim",
                 "--steps", "2", "--json", str(out)]) == 0  # fmt: skip
    table = capsys.readouterr().out
    assert "success_rate" in table and "act_latency_ms_p99" in table and "ddim" in table
    report = json.loads(out.read_text())
    assert report["task"] == "maze2d-umaze" and report["solver"] == "ddim" and report["steps"] == 2
    assert 0.0 <= report["success_rate"] <= 1.0 and report["episodes"] == 1

    bad = [*common, "+policy.widht=3", "training.steps=2", f"run_dir={tmp_path / 'bad'}"]
    assert main(["train", *bad]) == 1
    assert "unknown policy keys ['widht'] for DiffusionPolicy" in capsys.readouterr().err


def test_planner_group_composes_over_the_policy() -> None:
    assert group_options("planner") == ["decision_diffuser", "diffuser"]
    assert to_dict(compose_config([])).get("planner") is None
    conf = to_dict(compose_config(["planner=diffuser", "task=maze2d-medium"]))
    task = conf["task"]
    assert conf["planner"]["class"] == "Diffuser" and task["name"] == "maze2d-medium"
    assert task["n_obs_steps"] == task["horizon"] and task["discount"] == conf["planner"]["discount"]
    assert resolve_run_dir(conf, DistInfo()).name.startswith("maze2d-medium-diffuser-")
    with pytest.raises(ValueError, match="unknown planner 'rrt'; available: decision_diffuser, diffuser"):
        compose_config(["planner=rrt"])


@pytest.mark.parametrize("planner", ["diffuser", "decision_diffuser"])
def test_train_and_eval_a_planner_end_to_end(
    planner: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = tmp_path / "umaze.zarr", tmp_path / "run"
    args = [
        "train", "task=maze2d-umaze", f"planner={planner}", f"task.dataset.path={data}",
        "task.dataset.generate.episodes=2", "task.horizon=16", "planner.backbone_kwargs.down_dims=[16,32]",
        "sampler.steps=2", "eval.episodes=1", "eval.n_workers=0", "training.steps=3", "training.batch_size=8",
        "training.warmup_steps=1", "training.progress=false", f"run_dir={run}",
    ]  # fmt: skip
    assert main(args) == 0
    records = [r for r in read_metrics(run) if "eval/success_rate" in r]
    assert records and 0.0 <= records[-1]["eval/success_rate"] <= 1.0  # evaluate() ran during training
    agent = load(run / "checkpoint", steps=4)
    assert type(agent).__name__ == {"diffuser": "Diffuser", "decision_diffuser": "DecisionDiffuser"}[planner]
    assert agent.state_dim == 4 and agent.goal_dim == 2 and agent.obs_dim == 6 and agent.sampler.steps == 4
    agent.reset()
    assert agent.act([0.0] * 6).shape == (2,)
    capsys.readouterr()
    assert main(["eval", str(run / "checkpoint"), "--episodes", "1", "--workers", "0", "--steps", "2"]) == 0
    assert "normalized_score" in capsys.readouterr().out
    assert main([*args[:-1], f"run_dir={tmp_path / 'bad'}", "+planner.widht=3"]) == 1
    assert "unknown planner keys ['widht'] for" in capsys.readouterr().err
