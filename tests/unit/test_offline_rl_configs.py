"""The offline RL policy configs compose with their 5-step VP sampler by default, every key is a constructor
argument of their class, and the class's ``make_dataset`` hook gives the pipeline single-step transitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffctl.datasets import EpisodeStore
from diffctl.policies.offline_rl import TransitionDataset
from diffctl.train import pipeline


@pytest.mark.parametrize("name", ["diffusion_ql", "idql", "edp"])
def test_policy_config_builds_agent(name: str) -> None:
    conf = pipeline.to_dict(pipeline.compose_config([f"policy={name}"]))
    section = {k: v for k, v in conf["policy"].items() if k not in pipeline.RESERVED_POLICY_KEYS}
    agent = pipeline.agent_class(conf["policy"]["class"])(
        4, 2, goal_dim=2, sampler=conf["sampler"], **section
    )
    assert (agent.sampler.solver, agent.sampler.steps, agent.sampler.schedule) == ("ddpm", 5, "vp")
    assert agent.state_dim == 6


def test_pipeline_builds_transitions_and_fits_the_agent() -> None:
    rng = np.random.default_rng(0)
    n = 12
    store = EpisodeStore.memory()
    store.add_episodes(
        {
            "observations": rng.normal(size=(n, 3)).astype(np.float32),
            "actions": rng.uniform(-0.5, 0.5, size=(n, 2)).astype(np.float32),
            "rewards": rng.normal(size=n).astype(np.float32),
            "terminals": np.zeros(n, dtype=bool),
        },
        [5, n],
    )
    conf = pipeline.to_dict(
        pipeline.compose_config(
            ["policy=idql", "task=hopper-medium", "policy.hidden=16", "policy.critic_hidden=16"]
        )
    )
    dataset = pipeline.make_dataset(pipeline.agent_class("IDQL"), store, conf["task"])
    assert isinstance(dataset, TransitionDataset) and len(dataset) == n - 2  # episode ends are cut by time
    agent = pipeline.build_agent(conf, dataset, store)
    assert (agent.obs_dim, agent.action_dim, agent.goal_dim) == (3, 2, 0)
    actions = torch.as_tensor(store.array("actions"))
    scaled = agent.normalizers["action"].normalize(actions)  # limits: the data's range maps onto [-1, 1]
    torch.testing.assert_close(scaled.min(0).values, -torch.ones(2))
    torch.testing.assert_close(scaled.max(0).values, torch.ones(2))
    loss, info = agent.loss(dataset.get_batch(np.arange(4)))
    assert torch.isfinite(loss.detach()) and "value_loss" in info
