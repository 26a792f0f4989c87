"""Agents saved by diffctl before the typed configs (format version 1, written by commit 36e9a40) still
load and act exactly as they did then: the same actions, three steps in a row, from the same seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import diffctl as dc

SAVED = Path(__file__).resolve().parents[1] / "fixtures" / "v1_agents"
OBS_WIDTH = {"DiffusionPolicy": 6, "Diffuser": 6, "DecisionDiffuser": 6, "CoarseToFineDiffuser": 6}


@pytest.mark.parametrize(
    "name",
    ["DiffusionPolicy", "StreamingDiffusionPolicy", "FlowPolicy", "EDP", "Diffuser", "DecisionDiffuser",
     "CoarseToFineDiffuser"],
)  # fmt: skip
def test_version_1_agents_load_and_act_as_before(name: str) -> None:
    expected = np.load(SAVED / "actions.npz")[name]
    agent = dc.load(SAVED / name, seed=3)
    assert type(agent).__name__ == name and agent.task is None  # saved outside a run: no task recorded
    agent.reset(seed=3)
    obs = np.linspace(-0.5, 0.5, OBS_WIDTH.get(name, 4)).astype(np.float32)
    actions = np.stack([agent.act(obs) for _ in range(len(expected))])
    np.testing.assert_allclose(actions, expected, atol=1e-5)
