"""The termination rules on observations agree with gymnasium's own terminated flag on random rollouts."""

import numpy as np
import pytest
import torch

from diffctl.envs.termination import termination_fn


@pytest.mark.parametrize("task", ["hopper", "walker2d", "halfcheetah"])
def test_rule_matches_the_environment(task: str) -> None:
    from diffctl.envs.registry import make_env

    env, rule = make_env(task), termination_fn(task)
    rng = np.random.default_rng(0)
    flags, predicted = [], []
    for episode in range(6):
        obs, _ = env.reset(seed=episode)
        for _ in range(200):
            obs, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, env.action_space.shape))
            flags.append(terminated)
            predicted.append(bool(rule(torch.as_tensor(obs))))
            if terminated or truncated:
                break
    env.close()
    assert predicted == flags
    assert any(flags) == (task != "halfcheetah")  # random actions make hopper and walker fall


def test_unknown_tasks_have_no_rule() -> None:
    assert termination_fn("maze2d-umaze") is None
    assert termination_fn("hopper-medium-replay") is not None
