"""diffctl train task=maze2d-umaze world_model=dwm|mlp_ensemble through the pipeline, then rollout."""

import json

import pytest
import torch

from diffctl.agents import load
from diffctl.cli import main
from diffctl.datasets import EpisodeStore
from diffctl.world_models import WorldModel

TINY = {
    "dwm": ["world_model.segment=4", "world_model.backbone_kwargs={hidden: 32, depth: 1, embed_dim: 16}"],
    "mlp_ensemble": [
        "world_model.hidden=16",
        "world_model.depth=1",
        "world_model.members=3",
        "world_model.elites=2",
    ],
}


@pytest.mark.parametrize("name", ["dwm", "mlp_ensemble"])
def test_train_a_world_model_then_roll_out(tmp_path, name):
    run_dir = tmp_path / "run"
    args = ["train", "task=maze2d-umaze", f"world_model={name}", "experiment=world_model", *TINY[name],
            "task.dataset.generate.episodes=6", f"task.dataset.path={tmp_path}/maze.zarr", "training.steps=5",
            "training.batch_size=16", "training.warmup_steps=1", "training.progress=false",
            f"run_dir={run_dir}"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == 5 and summary["best_score"] is None  # no closed-loop evaluation
    model = load(run_dir / "checkpoint")
    assert isinstance(model, WorldModel) and model.task == "maze2d-umaze" and model.state_dim == 6  # + goal
    out = model.rollout(torch.zeros(2, 6), torch.zeros(2, 9, 2), generator=torch.Generator().manual_seed(0))
    assert out["observations"].shape == (2, 9, 6) and torch.isfinite(out["observations"]).all()


def test_td3bc_expands_values_through_a_trained_world_model(tmp_path):
    """diffctl train policy=td3bc with policy.world_model: the expansion runs inside the train pipeline."""
    data = [f"task.dataset.path={tmp_path}/maze.zarr", "task.dataset.generate.episodes=6",
            "training.batch_size=16", "training.warmup_steps=1", "training.progress=false"]  # fmt: skip
    wm_dir, agent_dir = tmp_path / "wm", tmp_path / "agent"
    assert main(["train", "task=maze2d-umaze", "world_model=mlp_ensemble", "experiment=world_model",
                 *TINY["mlp_ensemble"], *data, "training.steps=5", f"run_dir={wm_dir}"]) == 0  # fmt: skip
    args = ["train", "task=maze2d-umaze", "policy=td3bc", "policy.hidden=16", "policy.critic_hidden=16",
            f"policy.world_model={wm_dir}/checkpoint", "policy.expansion_horizon=3", *data,
            "training.steps=4", "eval.episodes=0", f"run_dir={agent_dir}"]  # fmt: skip
    assert main(args) == 0
    agent = load(agent_dir / "checkpoint")
    assert agent.config.expansion_horizon == 3 and int(agent.network.updates) == 4
    assert agent.act(torch.zeros(6).numpy()).shape == (2,)

    out = tmp_path / "synthetic.zarr"  # the agent steers the world model: synthetic data for the next agent
    args = ["data", "synthesize", f"{tmp_path}/maze.zarr", f"--world-model={wm_dir}/checkpoint",
            f"--policy={agent_dir}/checkpoint", f"--out={out}", "--episodes=5", "--horizon=4"]  # fmt: skip
    assert main(args) == 0
    store = EpisodeStore.open(out)
    assert store.attrs["policy"] == f"{agent_dir}/checkpoint" and store.num_episodes == 6 + 5
    assert store.array("infos/goal").shape[1] == 2
