"""Hydra config composition, `diffctl train` / `diffctl eval` end to end on a tiny generated maze dataset
(diffusion, consistency-distilled, offline RL and planner agents), and the CLI's error messages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from diffctl.agents import load
from diffctl.cli import main
from diffctl.datasets.generators import FETCH_DATASETS, LOCOMOTION_DATASETS, MAZE_DATASETS
from diffctl.datasets.images import IMAGE_DATASETS
from diffctl.envs.registry import TASKS
from diffctl.policies import SamplerConfig
from diffctl.train import TrainConfig
from diffctl.train.distributed import DistInfo
from diffctl.train.metrics import read_metrics
from diffctl.train.pipeline import (
    CONFIG_DIR,
    RESERVED_POLICY_KEYS,
    agent_class,
    compose_config,
    config_keys,
    group_options,
    resolve_run_dir,
    to_dict,
)

POLICY_DEFAULT_SAMPLERS = {"consistency_mlp": "consistency", "diffusion_ql": "ddpm_vp5", "edp": "ddpm_vp5",
                           "idql": "ddpm_vp5", "anchored_mlp": "anchored"}  # fmt: skip
TINY_MAZE = ["task=maze2d-umaze", "task.dataset.generate.episodes=2", "eval.episodes=0",
             "training.batch_size=16", "training.warmup_steps=1", "training.progress=false",
             "training.log_every=1"]  # fmt: skip


def test_groups_list_the_expected_options() -> None:
    tasks = group_options("task")
    image_tasks = {"images", *IMAGE_DATASETS} - {"frames"}  # frames: data generate only, no task file
    assert set(tasks) == set(TASKS) | set(LOCOMOTION_DATASETS) | image_tasks and len(tasks) == len(set(tasks))
    assert group_options("image_model") == ["dit2d", "unet2d"]
    assert group_options("world_model") == ["dwm", "frames", "mlp_ensemble"]
    assert group_options("policy") == [
        "anchored_mlp", "bc_mlp", "consistency_mlp", "diffusion_mlp", "diffusion_moe", "diffusion_ql",
        "diffusion_transformer", "diffusion_unet", "edp", "flow_mlp", "idql", "streaming_mlp", "td3bc",
    ]  # fmt: skip
    assert group_options("sampler") == [
        "anchored",
        "consistency",
        "ddim",
        "ddpm",
        "ddpm_vp5",
        "dpmpp_2m",
        "euler",
        "heun",
    ]


def _sampler_file(option: str) -> SamplerConfig:
    """The sampler a sampler/ file describes: its keys over SamplerConfig's defaults."""
    values = to_dict(OmegaConf.load(CONFIG_DIR / "sampler" / f"{option}.yaml"))
    return SamplerConfig.from_dict({k: v for k, v in values.items() if k != "defaults"})


@pytest.mark.parametrize("group", ["task", "policy", "sampler", "image_model", "world_model"])
def test_every_group_option_composes(group: str) -> None:
    for option in group_options(group):
        if group == "task" and option in ("digits", "shapes", "images"):
            continue  # image tasks: test_image_tasks_and_models_compose
        if group in ("image_model", "world_model"):
            task = "digits" if group == "image_model" else "maze2d-umaze"
            conf = to_dict(compose_config([f"task={task}", f"{group}={option}"]))
            section = conf[group]
            unknown = set(section) - set(RESERVED_POLICY_KEYS) - config_keys(agent_class(section["class"]))
            assert not unknown and section["name"] == option
            continue
        conf = to_dict(compose_config([f"{group}={option}"]))
        TrainConfig.from_dict(conf["training"])
        SamplerConfig.from_dict(conf["sampler"])
        policy = conf["policy"]
        cls = agent_class(policy["class"])
        unknown = set(policy) - set(RESERVED_POLICY_KEYS) - config_keys(cls)
        assert not unknown, f"policy={policy['name']} sets keys {unknown} that {cls.__name__} does not take"
        task = conf["task"]
        assert task["name"] in TASKS and task["n_action_steps"] <= task["horizon"] - task["n_obs_steps"] + 1
        assert conf["eval"]["episodes"] == task["eval"]["episodes"]
        if group == "sampler":
            assert SamplerConfig.from_dict(conf["sampler"]) == _sampler_file(option)
        elif group == "policy":
            assert policy["name"] == option
            sampler = _sampler_file(POLICY_DEFAULT_SAMPLERS.get(option, "dpmpp_2m"))
            assert SamplerConfig.from_dict(conf["sampler"]) == sampler
        else:
            assert task["dataset"]["name"] in (*MAZE_DATASETS, *LOCOMOTION_DATASETS, *FETCH_DATASETS, "pusht")
            assert option in (task["name"], task["dataset"]["name"])


def test_image_tasks_and_models_compose() -> None:
    from diffctl.train.pipeline import agent_section_name

    for task in ("digits", "shapes"):
        conf = to_dict(compose_config([f"task={task}", "image_model=unet2d", "experiment=images"]))
        assert agent_section_name(conf) == "image_model" and conf["task"]["kind"] == "images"
        assert conf["eval"]["episodes"] == 0 and conf["training"]["steps"] == 2000
        assert task in conf["task"]["dataset"]["path"]
    with pytest.raises(ValueError, match=r"task\.dataset\.path"):
        to_dict(compose_config(["task=images", "image_model=unet2d"]))


def test_locomotion_dataset_tasks_reuse_the_env_task() -> None:
    base = to_dict(compose_config(["task=hopper"]))["task"]
    for kind in ("medium", "medium-replay", "medium-expert", "expert"):
        conf = to_dict(compose_config([f"task=hopper-{kind}", "policy=idql"]))
        task = conf["task"]
        assert task["name"] == "hopper" and task["dataset"]["name"] == f"hopper-{kind}"
        assert task["dataset"]["path"] == f"data/hopper-{kind}.zarr"
        assert {k: v for k, v in task.items() if k != "dataset"} == {
            k: v for k, v in base.items() if k != "dataset"
        }
        assert task["dataset"]["generate"] == base["dataset"]["generate"]
    run_dir = resolve_run_dir(
        to_dict(compose_config(["task=walker2d-medium-replay", "policy=edp"])), DistInfo()
    )
    assert run_dir.name.startswith("walker2d-medium-replay-edp-")


def test_policy_default_sampler_yields_to_an_explicit_one() -> None:
    assert SamplerConfig.from_dict(to_dict(compose_config(["policy=idql"]))["sampler"]) == SamplerConfig(
        solver="ddpm", steps=5, schedule="vp"
    )
    for order in (["sampler=ddim", "policy=idql"], ["policy=idql", "sampler=ddim"]):
        assert to_dict(compose_config([*order, "sampler.steps=3"]))["sampler"]["solver"] == "ddim"
    assert to_dict(compose_config(["policy=diffusion_mlp"]))["sampler"]["solver"] == "dpmpp_2m"


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
        (["train", "task=nope"], "unknown task 'nope'; available: digits, fetch-pick-place, "),
        (["train", "policy=cnn"], "unknown policy 'cnn'; available: anchored_mlp, bc_mlp, consistency_mlp"),
        (["train", "sampler=rk45"], "unknown sampler 'rk45'; available: anchored, consistency, ddim, ddpm"),
        (["train", "training.stepz=3"], "valid keys of training: ['adam_eps'"),
        (["train", "policy.depth=3"], "valid keys of policy: ['backbone'"),
        (["train", "training.steps=abc"], "training.steps must be an integer, got 'abc'"),
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
    assert (run / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()

    saved = json.loads((run / "checkpoint" / "config.json").read_text())
    assert saved["task"] == "maze2d-umaze" and saved["dataset"]["path"] == str(data)
    assert saved["dataset"]["num_episodes"] == 3 and saved["hyperparameters"]["backbone"] == "mlp"
    moved = tmp_path / "elsewhere"  # away from the run's config.yaml: the task comes from config.json
    shutil.copytree(run / "checkpoint", moved)
    out = tmp_path / "eval.json"
    assert main(["eval", str(moved), "--episodes", "1", "--workers", "0", "--solver", "ddim",
                 "--steps", "2", "--json", str(out)]) == 0  # fmt: skip
    table = capsys.readouterr().out
    assert "success_rate" in table and "act_latency_ms_p99" in table and "ddim" in table
    report = json.loads(out.read_text())
    assert report["task"] == "maze2d-umaze" and report["solver"] == "ddim" and report["steps"] == 2
    assert 0.0 <= report["success_rate"] <= 1.0 and report["episodes"] == 1

    bad = [*common, "+policy.widht=3", "training.steps=2", f"run_dir={tmp_path / 'bad'}"]
    assert main(["train", *bad]) == 1
    assert "unknown policy keys ['widht'] for DiffusionPolicy" in capsys.readouterr().err

    student = tmp_path / "student"
    distill = [*common[:2], *common[4:], "policy=consistency_mlp", "training.steps=2"]
    assert main(["train", *distill, f"policy.teacher={run / 'checkpoint'}", f"run_dir={student}"]) == 0
    agent = load(student / "checkpoint")
    assert type(agent).__name__ == "ConsistencyPolicy" and agent.sampler.solver == "consistency"
    assert agent.hparams["backbone_kwargs"]["hidden"] == 32  # the teacher's architecture
    agent.reset()
    assert agent.act([0.0] * 6).shape == (2,)
    capsys.readouterr()
    assert main(["train", *distill, f"policy.teacher={run / 'checkpoint'}", "task.horizon=8",
                 f"run_dir={tmp_path / 'bad2'}"]) == 1  # fmt: skip
    assert "has horizon=16 but the task data gives horizon=8" in capsys.readouterr().err


def test_train_and_eval_the_bc_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    args = ["train", *TINY_MAZE, "policy=bc_mlp", "policy.hidden=32", "training.steps=3",
            f"task.dataset.path={tmp_path / 'umaze.zarr'}", f"run_dir={run}"]  # fmt: skip
    assert main(args) == 0
    agent = load(run / "checkpoint")
    assert type(agent).__name__ == "BCPolicy" and agent.config.hidden == 32 and agent.task == "maze2d-umaze"
    assert "sampler" not in json.loads((run / "checkpoint" / "config.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run / "checkpoint"), "--episodes", "1", "--workers", "0"]) == 0
    assert "normalized_score" in capsys.readouterr().out


def test_consistency_policy_needs_a_teacher(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", *TINY_MAZE, "policy=consistency_mlp", f"task.dataset.path={tmp_path / 'umaze.zarr'}",
            "training.steps=1", f"run_dir={tmp_path / 'run'}"]  # fmt: skip
    assert main(args) == 1
    assert "ConsistencyPolicy distills a trained EDM DiffusionPolicy: set policy.teacher=PATH" in (
        capsys.readouterr().err
    )
    assert main([*args, f"policy.teacher={tmp_path / 'nope'}"]) == 1
    assert f"no agent at {tmp_path / 'nope'}" in capsys.readouterr().err
    assert main([*args, "policy=diffusion_mlp", "+policy.teacher=x"]) == 1
    assert "unknown policy keys ['teacher'] for DiffusionPolicy" in capsys.readouterr().err


def test_train_an_offline_rl_agent_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    args = ["train", *TINY_MAZE, "policy=idql", "policy.hidden=32", "policy.critic_hidden=32",
            "policy.n_candidates=4", f"task.dataset.path={tmp_path / 'umaze.zarr'}", "training.steps=3",
            "eval.episodes=1", "eval.n_workers=0"]  # fmt: skip
    assert main([*args, f"run_dir={run}"]) == 0
    records = read_metrics(run)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert all(
        k in records[0] for k in ("critic_loss", "value_loss", "bc_loss")
    )  # IDQL's loss on transitions
    assert any("eval/normalized_score" in r for r in records)
    agent = load(run / "checkpoint")
    assert type(agent).__name__ == "IDQL" and agent.obs_dim == 4 and agent.goal_dim == 2
    assert agent.task == "maze2d-umaze" and agent.dataset["num_episodes"] == 2
    sampler = agent.sampler
    assert (sampler.solver, sampler.steps, sampler.schedule) == ("ddpm", 5, "vp")
    assert agent.act_settings["n_candidates"] == 4 and set(agent.normalizers) == {"obs", "action", "goal"}
    assert agent.act([0.0] * 6).shape == (2,)
    capsys.readouterr()
    assert main([*args, "sampler=ddpm", f"run_dir={tmp_path / 'bad'}"]) == 1
    assert "sampler steps=100 exceeds the actor's num_train_timesteps=5" in capsys.readouterr().err


def test_planner_group_composes_over_the_policy() -> None:
    assert group_options("planner") == [
        "decision_diffuser", "decision_diffuser_mlp", "diffuser", "diffuser_lite", "diffuser_mlp",
    ]  # fmt: skip
    assert to_dict(compose_config([])).get("planner") is None
    conf = to_dict(compose_config(["planner=diffuser", "task=maze2d-medium"]))
    task = conf["task"]
    assert conf["planner"]["class"] == "Diffuser" and task["name"] == "maze2d-medium"
    assert task["n_obs_steps"] == task["horizon"] and task["discount"] == conf["planner"]["discount"]
    assert resolve_run_dir(conf, DistInfo()).name.startswith("maze2d-medium-diffuser-")
    with pytest.raises(ValueError, match="unknown planner 'rrt'; available: decision_diffuser, decision_"):
        compose_config(["planner=rrt"])


NET_OVERRIDES = {
    "diffuser": ["task.horizon=16", "planner.backbone_kwargs.down_dims=[16,32]"],
    "decision_diffuser": ["task.horizon=16", "planner.backbone_kwargs.down_dims=[16,32]"],
    "diffuser_mlp": ["task.horizon=16", "planner.backbone_kwargs.hidden=32"],
    "diffuser_lite": [
        "task.horizon=9",
        "planner.points=3",
        "planner.levels=3",
        "planner.backbone_kwargs.hidden=32",
    ],
}
CLASSES = {
    "diffuser": "Diffuser",
    "decision_diffuser": "DecisionDiffuser",
    "diffuser_lite": "CoarseToFineDiffuser",
    "diffuser_mlp": "Diffuser",
}


@pytest.mark.parametrize("planner", sorted(NET_OVERRIDES))
def test_train_and_eval_a_planner_end_to_end(
    planner: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = tmp_path / "umaze.zarr", tmp_path / "run"
    args = [
        "train", "task=maze2d-umaze", f"planner={planner}", f"task.dataset.path={data}",
        "task.dataset.generate.episodes=2", *NET_OVERRIDES[planner], "sampler.steps=2", "eval.episodes=1",
        "eval.n_workers=0", "training.steps=3", "training.batch_size=8",
        "training.warmup_steps=1", "training.progress=false", f"run_dir={run}",
    ]  # fmt: skip
    assert main(args) == 0
    records = [r for r in read_metrics(run) if "eval/success_rate" in r]
    assert records and 0.0 <= records[-1]["eval/success_rate"] <= 1.0  # evaluate() ran during training
    agent = load(run / "checkpoint", steps=4)
    assert type(agent).__name__ == CLASSES[planner]
    assert agent.state_dim == 4 and agent.goal_dim == 2 and agent.obs_dim == 6 and agent.sampler.steps == 4
    agent.reset()
    assert agent.act([0.0] * 6).shape == (2,)
    capsys.readouterr()
    (run / "config.yaml").unlink()  # the checkpoint alone knows its task
    assert main(["eval", str(run / "checkpoint"), "--episodes", "1", "--workers", "0", "--steps", "2"]) == 0
    assert "normalized_score" in capsys.readouterr().out
    assert main([*args[:-1], f"run_dir={tmp_path / 'bad'}", "+planner.widht=3"]) == 1
    assert "unknown planner keys ['widht'] for" in capsys.readouterr().err


def test_final_eval_reads_the_last_evaluation(tmp_path: Path) -> None:
    from diffctl.commands.train import final_eval

    assert final_eval(str(tmp_path)) is None
    records = [{"step": 5, "eval/normalized_score": 1.0}, {"step": 9, "loss": 0.5},
               {"step": 10, "eval/normalized_score": 22.5, "eval/mean_return": 711.0}]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert final_eval(str(tmp_path)) == {"step": 10, "normalized_score": 22.5, "mean_return": 711.0}


def test_eval_set_overrides_are_parsed_as_yaml_scalars() -> None:
    from diffctl.commands.eval import parse_settings

    got = parse_settings(["n_candidates=16", "selection=argmax", "temperature=0.5", "clip=true"])
    assert got == {"n_candidates": 16, "selection": "argmax", "temperature": 0.5, "clip": True}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_settings(["n_candidates"])


def test_eval_of_a_checkpoint_saved_outside_a_run_asks_for_the_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from diffctl.policies import DiffusionPolicy

    pol = DiffusionPolicy(4, 2, goal_dim=2, backbone="mlp", backbone_kwargs={"hidden": 8, "depth": 1})
    pol.fit_normalizers([[0.0] * 4, [1.0] * 4], [[-1.0, -1.0], [1.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]])
    pol.save(tmp_path / "ckpt")
    monkeypatch.chdir(tmp_path)  # a one-part relative path has no grandparent to look for a run config in
    assert main(["eval", "ckpt", "--episodes", "1", "--workers", "0"]) == 1
    assert "--task is required: ckpt/config.json records no task" in capsys.readouterr().err
    assert main(["eval", "ckpt", "--task", "maze2d-umaze", "--episodes", "1", "--workers", "0"]) == 0


def test_resume_uses_the_runs_own_config_and_refuses_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run, data = tmp_path / "run", tmp_path / "umaze.zarr"
    args = ["train", *TINY_MAZE, "policy=bc_mlp", "policy.hidden=16", f"task.dataset.path={data}",
            "training.steps=4", "training.checkpoint_every=2", f"run_dir={run}"]  # fmt: skip
    assert main(args) == 0
    saved = (run / "config.yaml").read_text()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # the packaged defaults would generate data here; the run's own config does not
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "training.steps=6", "policy.hidden=16"]) == 0
    assert f"resuming {run} from step 4" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == saved and not any(cwd.iterdir())
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert load(run / "checkpoint").config.hidden == 16

    for override, message in [
        ("policy.hidden=32", f"cannot change policy.hidden from 16 to 32 when resuming {run}"),
        ("policy=diffusion_mlp", f"cannot change policy when resuming {run}: the run has 'bc_mlp'"),
        ("training.lr=0.5", "cannot change training.lr"),
        ("+policy.extra=1", "--resume takes key=value overrides of existing keys"),
    ]:
        assert main(["train", "--resume", str(run), override]) == 1
        assert message in capsys.readouterr().err
    fresh = tmp_path / "fresh"  # a run directory whose first attempt died before its first checkpoint
    fresh.mkdir()
    (fresh / "config.yaml").write_text(saved)
    assert main(["train", "--resume", str(fresh), "training.steps=1"]) == 0
    assert f"resuming {fresh}: no checkpoint yet: starting from step 0" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 1
    assert "no config.yaml there (not a diffctl train run directory)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [("sampler.solver=nope", "unknown sampler.solver 'nope'"),
     ("eval.episodes=-3", "eval.episodes must be >= 0 (0: no closed-loop evaluation), got -3"),
     ("task.horizon=long", "task.horizon must be an integer, got 'long'")],
)  # fmt: skip
def test_bad_values_are_named_before_anything_is_written(
    override: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = [o for o in TINY_MAZE if not o.startswith("eval.episodes")]
    run = tmp_path / "run"
    args = ["train", *base, "policy=bc_mlp", override, f"task.dataset.path={tmp_path / 'umaze.zarr'}",
            "training.steps=1", f"run_dir={run}"]  # fmt: skip
    assert main(args) == 1
    assert message in capsys.readouterr().err
    assert not run.exists()


def test_a_failing_plot_backend_only_skips_the_learning_curves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    run = tmp_path / "run"
    args = ["train", *TINY_MAZE, "policy=bc_mlp", "policy.hidden=8", "training.steps=2",
            f"task.dataset.path={tmp_path / 'umaze.zarr'}", f"run_dir={run}"]  # fmt: skip
    with pytest.warns(
        UserWarning, match=r"learning curves of .* skipped \(ModuleNotFoundError: import of matplotlib"
    ):
        assert main(args) == 0
    assert (run / "summary.json").is_file() and (run / "checkpoint" / "config.json").is_file()
    assert not (run / "learning_curves.png").exists()


def test_eval_names_a_config_json_the_agent_class_cannot_take(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from diffctl.policies import DiffusionPolicy

    pol = DiffusionPolicy(4, 2, goal_dim=2, backbone="mlp", backbone_kwargs={"hidden": 8, "depth": 1})
    pol.fit_normalizers([[0.0] * 4, [1.0] * 4], [[-1.0, -1.0], [1.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]])
    path = pol.save(tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    config["hyperparameters"]["widht"] = 3
    (path / "config.json").write_text(json.dumps(config))
    assert main(["eval", str(path), "--task", "maze2d-umaze", "--episodes", "1", "--workers", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{path}/config.json does not describe a valid DiffusionPolicy: unknown DiffusionPolicy keys" in (
        err
    )
    config["class"] = "NoSuchPolicy"
    (path / "config.json").write_text(json.dumps(config))
    assert main(["eval", str(path), "--task", "maze2d-umaze"]) == 1
    assert "names agent class 'NoSuchPolicy'; known classes:" in capsys.readouterr().err
