"""evaluate(): the scripted maze expert is the oracle for the harness."""

import numpy as np
import pytest

from diffctl.envs.evaluate import episode_seed, evaluate
from diffctl.envs.experts import MazeExpertAgent

KEYS = (
    "success_rate",
    "mean_return",
    "normalized_score",
    "act_latency_ms_p50",
    "act_latency_ms_p99",
    "act_latency_ms_mean",
    "returns",
    "successes",
    "episodes",
    "task",
)


class StandStill:
    """An agent that never moves: it must fail, which shows success is not hard-wired."""

    def reset(self):
        self.calls = 0

    def act(self, obs):
        self.calls += 1
        return np.zeros(2, dtype=np.float32)


def test_expert_succeeds_in_process_with_plot_and_video(tmp_path):
    result = evaluate(
        MazeExpertAgent("maze2d-umaze", noise=0.3),
        "maze2d-umaze",
        episodes=3,
        seed=0,
        n_workers=0,
        plot_path=tmp_path / "traj.png",
        video_path=tmp_path / "roll.gif",
    )
    for key in KEYS:
        assert key in result
    assert result["success_rate"] == 1.0
    assert result["mean_return"] > 100 and result["normalized_score"] > 50
    assert len(result["returns"]) == 3 and result["lengths"] == [300, 300, 300]
    assert 0 < result["act_latency_ms_p50"] <= result["act_latency_ms_p99"]
    assert (tmp_path / "traj.png").stat().st_size > 1000
    assert (tmp_path / "roll.gif").stat().st_size > 1000


def test_worker_count_does_not_change_results():
    agent = MazeExpertAgent("maze2d-umaze", noise=0.5)
    serial = evaluate(agent, "maze2d-umaze", episodes=3, seed=4, n_workers=0)
    parallel = evaluate(agent, "maze2d-umaze", episodes=3, seed=4, n_workers=2)
    assert parallel["n_workers"] == 2
    assert serial["returns"] == parallel["returns"]
    assert parallel["success_rate"] == 1.0


def test_standing_still_fails():
    result = evaluate(StandStill(), "maze2d-umaze", episodes=2, seed=0, n_workers=0)
    assert result["success_rate"] == 0.0 and result["mean_return"] == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="reset"):
        evaluate(object(), "maze2d-umaze", episodes=1)
    with pytest.raises(ValueError, match="unknown task"):
        evaluate(StandStill(), "maze3d", episodes=1)
    with pytest.raises(ValueError, match="episodes"):
        evaluate(StandStill(), "maze2d-umaze", episodes=0)
    with pytest.raises(ValueError, match=r"\.mp4"):
        evaluate(StandStill(), "maze2d-umaze", episodes=1, video_path="x.avi")


def test_bad_action_is_reported():
    class Broken(StandStill):
        def act(self, obs):
            return np.array([np.nan, 0.0])

    with pytest.raises(ValueError, match="finite"):
        evaluate(Broken(), "maze2d-umaze", episodes=1, n_workers=0)


def test_episode_seed_depends_on_seed_and_index():
    assert episode_seed(0, 1) == episode_seed(0, 1)
    assert len({episode_seed(0, i) for i in range(50)} | {episode_seed(1, 0)}) == 51
