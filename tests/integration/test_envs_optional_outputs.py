"""evaluate(): a missing or failing video / plot backend costs the output, never the results (issue 27).

Each case runs two short in-process maze episodes of the scripted expert and checks that evaluate returns
the same numbers as without the optional output, emits exactly one warning naming what was skipped and why,
and reports the skipped output as None.
"""

import sys
import warnings

import pytest

import diffctl.envs.video
import diffctl.envs.wrappers
from diffctl.envs.evaluate import evaluate
from diffctl.envs.experts import MazeExpertAgent

TASK = "maze2d-umaze"


def _evaluate(**outputs):
    return evaluate(MazeExpertAgent(TASK), TASK, episodes=2, seed=0, n_workers=0, **outputs)


@pytest.fixture(scope="module")
def baseline():
    return _evaluate()


def _one_warning(caught, *needles):
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "\n" not in messages[0]
    for needle in needles:
        assert needle in messages[0], messages[0]
    assert caught[0].filename == __file__  # points at the caller of evaluate
    return messages[0]


def _same_results(result, baseline):
    for key in ("success_rate", "mean_return", "normalized_score", "returns", "successes", "lengths"):
        assert result[key] == baseline[key], key
    assert result["success_rate"] == 1.0
    assert result["act_latency_ms_p50"] > 0


def _no_file_left(directory):
    assert [p.name for p in directory.iterdir()] == []


@pytest.mark.parametrize(
    ("suffix", "missing"),
    [(".gif", ("imageio", "imageio.v2")), (".mp4", ("imageio_ffmpeg",))],
)
def test_missing_video_backend_keeps_results(tmp_path, monkeypatch, baseline, suffix, missing):
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)
    video = tmp_path / f"roll{suffix}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _evaluate(video_path=video)
    package = missing[0].replace("_", "-")
    message = _one_warning(caught, "video", str(video), "skipped", "ImportError", package)
    assert "pip install diffctl[sim]" in message
    _same_results(result, baseline)
    assert result["video_path"] is None
    _no_file_left(tmp_path)


def test_failing_video_writer_keeps_results(tmp_path, monkeypatch, baseline):
    def broken_writer(path, frames, fps=30):
        assert len(frames) > 100  # episode 0 was recorded
        raise RuntimeError("could not open the\nencoder")

    monkeypatch.setattr(diffctl.envs.video, "write_video", broken_writer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _evaluate(video_path=tmp_path / "roll.mp4")
    _one_warning(caught, "video", "roll.mp4", "RuntimeError: could not open the encoder")
    _same_results(result, baseline)
    assert result["video_path"] is None


def test_failing_renderer_keeps_results(tmp_path, monkeypatch, baseline):
    def no_display(self):
        raise RuntimeError("no OpenGL context")

    monkeypatch.setattr(diffctl.envs.wrappers.MazeTask, "render", no_display)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _evaluate(video_path=tmp_path / "roll.gif")
    _one_warning(caught, "video", "roll.gif", "rendering failed", "no OpenGL context")
    _same_results(result, baseline)
    assert result["video_path"] is None
    _no_file_left(tmp_path)


def test_missing_matplotlib_keeps_results(tmp_path, monkeypatch, baseline):
    for name in ("matplotlib", "matplotlib.pyplot", "matplotlib.patches"):
        monkeypatch.setitem(sys.modules, name, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _evaluate(plot_path=tmp_path / "traj.png")
    _one_warning(caught, "plot", "traj.png", "skipped", "matplotlib")
    _same_results(result, baseline)
    assert result["plot_path"] is None
    _no_file_left(tmp_path)


def test_one_warning_per_skipped_output_and_the_rest_is_written(tmp_path, monkeypatch, baseline):
    monkeypatch.setitem(sys.modules, "imageio", None)
    monkeypatch.setitem(sys.modules, "imageio.v2", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _evaluate(video_path=tmp_path / "roll.gif", plot_path=tmp_path / "traj.png")
    _one_warning(caught, "video", "roll.gif")
    _same_results(result, baseline)
    assert result["video_path"] is None
    assert result["plot_path"] == str(tmp_path / "traj.png")
    assert (tmp_path / "traj.png").stat().st_size > 1000


def test_bad_video_suffix_is_still_an_error_before_any_episode():
    with pytest.raises(ValueError, match=r"\.mp4"):
        _evaluate(video_path="roll.avi")
