"""Simulated robot: PointMaze stepped in real time, delayed observations, injected inference latency."""

import time

import numpy as np
import pytest

from diffctl.deploy import LoopConfig
from diffctl.deploy.harness import InjectedLatency, SimulatedRobot, run_episode
from diffctl.envs.experts import MazeExpertAgent


def test_expert_through_the_loop_with_latency():
    result = run_episode(
        MazeExpertAgent("maze2d-umaze"), obs_latency_s=0.02, inference_latency_s=0.015, max_seconds=0.6
    )
    assert result["stall"] is None
    assert result["ticks"] + result["missed_ticks"] == 60
    assert result["sim_steps"] > 0
    assert result["obs_age_ms_p50"] >= 20.0
    assert result["latency"]["p50_ms"] >= 15.0
    # 15 ms of inference at a 10 ms period: the newest action always arrives after its tick, so it holds
    assert result["held"] > result["ticks"] // 2


def test_robot_applies_commands_and_rejects_bad_ones():
    robot = SimulatedRobot("maze2d-umaze", seed=1, rate_hz=200.0)
    with robot:
        first = robot.get_obs()
        robot.apply(np.array([1.0, 0.0]))
        with pytest.raises(ValueError, match="finite"):
            robot.apply(np.array([np.nan, 0.0]))
        cfg = LoopConfig(rate_hz=50.0)
        assert cfg.dt == pytest.approx(0.02)
        time.sleep(0.2)
        later = robot.get_obs()
    assert robot.steps > 0
    assert later[0] > first[0]  # pushed along +x by the held command
    with pytest.raises(ValueError, match="obs_latency_s"):
        SimulatedRobot("maze2d-umaze", obs_latency_s=-1)


def test_injected_latency_forwards_attributes():
    agent = InjectedLatency(MazeExpertAgent("maze2d-umaze"), 0.0)
    assert agent.task == "maze2d-umaze" and not hasattr(agent, "predict_chunk")
    assert agent.act(np.array([1, 1, 0, 0, 1, 1], np.float32)).shape == (2,)
