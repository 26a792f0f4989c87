"""`diffctl train finetune=...` (residual PPO and DPPO, with resume) and `diffctl eval --steer` end to end
on a tiny maze policy, world model and dataset."""

import json
from pathlib import Path

import pytest

from diffctl.agents import load
from diffctl.cli import main
from diffctl.improve.d3po import D3POConfig
from diffctl.improve.dppo import DPPOConfig
from diffctl.improve.residual import ResidualPolicy, ResidualPPOConfig
from diffctl.train.metrics import read_metrics
from diffctl.train.pipeline import compose_config, group_options, to_dict


def test_finetune_options_compose_to_their_configs() -> None:
    assert group_options("finetune") == ["d3po", "dppo", "residual_ppo"]
    for name, cls in (("residual_ppo", ResidualPPOConfig), ("dppo", DPPOConfig), ("d3po", D3POConfig)):
        section = to_dict(compose_config([f"finetune={name}", "seed=3"]))["finetune"]
        config = cls.from_dict({k: v for k, v in section.items() if k != "name"})
        assert section["name"] == name and config.seed == 3
    for recipe in ("resip_fetch_push", "dppo_fetch_push"):
        conf = to_dict(compose_config([f"experiment={recipe}"]))
        assert conf["task"]["name"] == "fetch-push" and conf["finetune"]["base"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("improve")
    data = root / "umaze.zarr"
    common = [
        "task=maze2d-umaze", f"task.dataset.path={data}", "task.dataset.generate.episodes=3",
        "eval.episodes=0", "training.batch_size=16", "training.warmup_steps=1", "training.progress=false",
        "training.steps=4",
    ]  # fmt: skip
    policy, world = root / "policy", root / "world"
    assert main(["train", *common, "policy=diffusion_mlp", "policy.backbone_kwargs.hidden=32",
                 "sampler=euler", "sampler.steps=3", f"run_dir={policy}"]) == 0  # fmt: skip
    assert main(["train", *common, "world_model=mlp_ensemble", f"run_dir={world}"]) == 0
    return {"root": root, "data": data, "policy": policy / "checkpoint", "world": world / "checkpoint"}


def finetune_args(runs: dict[str, Path], method: str, run_dir: Path, steps: int) -> list[str]:
    return [
        "train", "task=maze2d-umaze", f"task.dataset.path={runs['data']}", f"finetune={method}",
        f"finetune.base={runs['policy']}", "finetune.num_envs=2", f"finetune.env_steps={steps}",
        "finetune.eval_episodes=1", "finetune.hidden=16", "training.progress=false", f"run_dir={run_dir}",
    ]  # fmt: skip


def test_residual_ppo_trains_resumes_and_evaluates(runs: dict[str, Path], capsys) -> None:
    run = runs["root"] / "resip"
    assert main(finetune_args(runs, "residual_ppo", run, 2)) == 0  # one iteration: 2 episodes
    first = read_metrics(run)
    assert first[0]["step"] == 0 and "eval/success_rate" in first[0]
    assert main(["train", "--resume", str(run), "finetune.env_steps=1000"]) == 0
    records = read_metrics(run)
    assert len([r for r in records if "policy_loss" in r]) == 2 and records[-1]["step"] > first[-1]["step"]
    agent = load(run / "checkpoint")
    assert isinstance(agent, ResidualPolicy) and agent.task == "maze2d-umaze"
    assert (run / "learning_curves.png").is_file()
    capsys.readouterr()
    assert main(["eval", str(run / "checkpoint"), "--episodes", "1", "--workers", "0"]) == 0
    assert "success_rate" in capsys.readouterr().out
    assert main(["train", "--resume", str(run), "finetune.lr=0.1"]) == 1
    assert "cannot change finetune.lr" in capsys.readouterr().err


def test_dppo_with_the_behaviour_cloning_anchor(runs: dict[str, Path]) -> None:
    run = runs["root"] / "dppo"
    args = finetune_args(runs, "dppo", run, 2)
    assert main([*args, "finetune.bc_coef=0.1", "finetune.bc_batch=8", "finetune.denoising_steps=3",
                 "finetune.ft_steps=2"]) == 0  # fmt: skip
    record = [r for r in read_metrics(run) if "policy_loss" in r][-1]
    assert record["bc_loss"] > 0 and record["step"] > 0
    tuned = load(run / "checkpoint")
    assert type(tuned).__name__ == "DiffusionPolicy" and tuned.sampler.solver == "ddpm"


def test_bad_finetune_base_is_one_clear_error(runs: dict[str, Path], capsys) -> None:
    args = finetune_args(runs, "residual_ppo", runs["root"] / "bad", 2)
    args[4] = f"finetune.base={runs['root'] / 'missing'}"
    assert main(args) == 1
    assert "missing" in capsys.readouterr().err
    args[4] = f"finetune.base={runs['world']}"
    assert main(args) == 1
    assert "residual RL needs a chunk policy" in capsys.readouterr().err


def test_eval_steers_the_policy_with_a_world_model(runs: dict[str, Path], capsys) -> None:
    out = runs["root"] / "steer.json"
    argv = ["eval", str(runs["policy"]), "--episodes", "1", "--workers", "0", "--steer", "fk",
            "--verifier", str(runs["world"]), "--verifier-reward", "progress", "--steer-set", "n=4",
            "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["steering"]["method"] == "fk" and report["steering"]["n"] == 4
    assert report["nfe_per_decision"] == 4 * 3 and report["verifier_calls_per_decision"] == 4 * 3
    capsys.readouterr()
    assert main(["eval", str(runs["policy"]), "--episodes", "1", "--steer", "fk"]) == 1
    assert "--steer and --verifier go together" in capsys.readouterr().err
