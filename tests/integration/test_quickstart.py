"""``diffctl quickstart``: a tiny smoke run in the default suite; the real budget (targets) is marked slow."""

import json

import pytest

from diffctl.cli import main


def _check_outputs(out, result):
    assert {e["sampler"] for e in result["evaluations"]} == {"ddpm", "dpmpp_2m"}
    for e in result["evaluations"]:
        assert 0.0 <= e["success_rate"] <= 1.0
        assert e["act_latency_ms_p99"] >= e["act_latency_ms_p50"] >= 0.0
        assert (out / f"trajectories_{e['sampler']}.png").stat().st_size > 0
    assert (out / "rollout.mp4").stat().st_size > 0
    assert (out / "train" / "checkpoint" / "config.json").is_file()
    assert (out / "train" / "checkpoint" / "model.safetensors").is_file()


def test_quickstart_smoke(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--fast", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "results.json").read_text())
    _check_outputs(out, result)
    assert "checkpoint:" in printed and "dpmpp_2m" in printed
    assert result["budget"]["train_steps"] == 30


@pytest.mark.slow
def test_quickstart_full_reaches_targets(tmp_path):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    _check_outputs(out, result)
    for e in result["evaluations"]:
        assert e["success_rate"] >= 0.9, e
