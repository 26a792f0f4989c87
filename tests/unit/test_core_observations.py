"""act() refuses bad observations with errors that name the problem, and a refused observation never
enters the history (the next valid call acts as if it had not happened)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffctl.core.observations import as_observation
from diffctl.policies import DiffusionPolicy
from diffctl.policies.offline_rl import IDQL


@pytest.mark.parametrize(
    "obs, message",
    [({"state": [0.0] * 4}, "a dict observation (keys ['state'])"),
     ("0 0 0 0", "a string observation '0 0 0 0'"),
     ([1.0, "x", 2.0, 3.0], "needs real numbers, got an array of dtype <U"),
     (np.ones(4, dtype=complex), "needs real numbers, got an array of dtype complex128"),
     (np.array([1, None, 2, 3], dtype=object), "needs real numbers, got an array of dtype object"),
     ([[1.0, 2.0], [3.0]], "not a vector of numbers"),
     (np.ones((2, 4)), "shape (2, 4); expected one of [(4,), (6,)]"),
     ([0.0, np.nan, 0.0, np.inf], "non-finite observation (NaN or inf) at [1, 3]"),
     ([0.0, 1e39, 0.0, 0.0], "values beyond float32 (|x| > 3.4e+38) at [1]")],
)  # fmt: skip
def test_bad_observations_are_named(obs, message: str) -> None:
    with pytest.raises(ValueError, match=None) as err:
        as_observation(obs, (4, 6))
    assert message in str(err.value)


def test_float32_observations_pass_through_unchanged() -> None:
    obs = np.arange(4, dtype=np.float32)
    assert as_observation(obs, (4,)) is obs
    assert as_observation([1, 2, 3, 4], (4,)).dtype == np.float32


def fitted_policy() -> DiffusionPolicy:
    pol = DiffusionPolicy(4, 2, horizon=8, n_action_steps=4, backbone="mlp",
                          backbone_kwargs={"hidden": 16, "depth": 1}, sampler={"steps": 2})  # fmt: skip
    pol.fit_normalizers(np.array([[0.0] * 4, [1.0] * 4]), np.array([[-1.0, -1.0], [1.0, 1.0]]))
    return pol


def test_a_refused_observation_never_enters_the_history() -> None:
    pol, twin = fitted_policy(), fitted_policy()
    pol.reset(seed=0)
    twin.reset(seed=0)
    with pytest.raises(ValueError, match="non-finite observation"):
        pol.act([np.nan] * 4)
    obs = np.full(4, 0.5, np.float32)
    np.testing.assert_array_equal(pol.act(obs), twin.act(obs))  # as if the bad call had not happened
    pol.reset(seed=0)
    with pytest.raises(ValueError, match="produced non-finite actions from this observation"):
        pol.act(np.full(4, 3e38, np.float32))  # finite, but the network overflows on it
    assert len(pol.runner.history) == 0  # refused after sampling: taken back out of the history
    assert np.isfinite(pol.act(obs)).all()
    assert len(pol.runner.history) == 2 and all(np.array_equal(h, obs) for h in pol.runner.history)


def test_offline_agents_name_bad_observations_too() -> None:
    agent = IDQL(3, 1, hidden=8, critic_hidden=8, n_candidates=2)
    agent.fit_normalizers(np.array([[0.0] * 3, [1.0] * 3]), np.array([[-1.0], [1.0]]))
    with pytest.raises(ValueError, match="a dict observation"):
        agent.act({"x": 1})
    assert agent.act(torch.zeros(3).numpy()).shape == (1,)
