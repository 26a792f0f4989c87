"""The offline RL policy configs compose and every key is a constructor argument of their class."""

from __future__ import annotations

import pytest

from diffctl.train import pipeline


@pytest.mark.parametrize("name", ["diffusion_ql", "idql", "edp"])
def test_policy_config_builds_agent(name: str) -> None:
    conf = pipeline.to_dict(pipeline.compose_config([f"policy={name}", "sampler=ddpm", "sampler.steps=5"]))
    section = {k: v for k, v in conf["policy"].items() if k not in pipeline.RESERVED_POLICY_KEYS}
    agent = pipeline.agent_class(conf["policy"]["class"])(
        4, 2, goal_dim=2, sampler=conf["sampler"], **section
    )
    assert agent.sampler.solver == "ddpm" and agent.sampler.steps == 5
    assert agent.state_dim == 6
