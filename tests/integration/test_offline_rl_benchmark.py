"""The offline RL benchmark's agent options (parsing, file tags, table labels), the EDP speed-up pairing and
rescoring kept agents with new act variants."""

from __future__ import annotations

import json

import pytest

import diffctl.bench.offline_rl as bench
from diffctl.bench.offline_rl import (
    edp_speedups,
    kept_name,
    label,
    options_tag,
    parse_options,
    rescore,
    seed_difference,
    target_check,
    target_overview,
)
from diffctl.policies.offline_rl import IDQL


def test_options_parse_per_agent_and_name_the_run() -> None:
    options = parse_options(["idql.awr_beta=3", "idql.expectile=0.9", "edp.eta=0.5", "edp.critic_depth=2"])
    assert options == {"idql": {"awr_beta": 3, "expectile": 0.9}, "edp": {"eta": 0.5, "critic_depth": 2}}
    assert isinstance(options["edp"]["critic_depth"], int) and isinstance(options["edp"]["eta"], float)
    assert options_tag(options["idql"]) == "-awr_beta3-expectile0.9"
    row = {"agent": "idql", "lr": 1e-3, "options": options["idql"], "variant": "deterministic"}
    assert label(row) == "idql (lr 0.001, awr_beta 3, expectile 0.9), deterministic act"
    assert label({"agent": "idql", "lr": 1e-3}) == "idql (lr 0.001)"
    assert label({"agent": "d3rlpy_iql", "lr": 3e-4}) == "d3rlpy_iql"


def test_word_options_stay_strings() -> None:
    options = parse_options(["idql.critic_activation=mish", "idql.critic_inputs=normalized"])
    assert options == {"idql": {"critic_activation": "mish", "critic_inputs": "normalized"}}
    assert options_tag(options["idql"]) == "-critic_activationmish-critic_inputsnormalized"
    row = {"agent": "idql", "lr": 1e-3, "options": options["idql"]}
    assert label(row) == "idql (lr 0.001, critic_activation mish, critic_inputs normalized)"


BAD_OPTIONS = ["awr_beta=3", "d3rlpy_iql.x=1", "idql.=1", "idql.awr_beta", "idql.awr_beta=x-1", "idql.a=b c"]


@pytest.mark.parametrize("item", BAD_OPTIONS)
def test_bad_option_is_named(item: str) -> None:
    with pytest.raises(ValueError, match="--option"):
        parse_options([item])


def test_edp_speedup_pairs_runs_with_the_same_critics_backup_and_eta() -> None:
    mish = {"critic_activation": "mish", "critic_inputs": "normalized", "backup": "policy", "eta": 1}
    relu = {"critic_activation": "relu", "critic_inputs": "raw"}

    def row(method: str, options: dict[str, str], speed: float) -> dict:
        agent = label({"agent": method, "lr": 1e-3, "options": options})
        return {"dataset": "hopper-medium", "steps": 100, "lr": 1e-3, "method": method, "agent": agent,
                "options": options, "variant": None, "train_steps_per_s": speed}  # fmt: skip

    summary = [row("diffusion_ql", {}, 10.0), row("edp", mish, 15.0), row("edp", {}, 18.0)]
    mish_key = "lr 0.001, backup policy, critic_activation mish, critic_inputs normalized, eta 1"
    key = f"hopper-medium 100 steps ({mish_key})"
    assert edp_speedups(summary) == {key: 1.5}
    summary.append(row("diffusion_ql", relu, 12.0))
    assert edp_speedups(summary) == {key: 1.5}, "EDP's default expectile backup has no DiffusionQL twin"
    summary.append(row("edp", {"backup": "policy"}, 20.0))
    assert edp_speedups(summary) == {key: 1.5}, "EDP's default eta=10 has no DiffusionQL twin"
    summary.append(row("edp", {"backup": "policy", "eta": 1}, 24.0))
    policy_key = "hopper-medium 100 steps (lr 0.001, backup policy, eta 1)"
    assert edp_speedups(summary) == {key: 1.5, policy_key: 2.0}


def test_seed_difference_is_over_seed_means() -> None:
    assert seed_difference([1.0, 3.0], [2.0, 2.0, 2.0]) == (0.0, 1.0)
    diff, se = seed_difference([4.0], [1.0, 2.0])
    assert diff == pytest.approx(2.5) and se is None


def summary_row(dataset: str, method: str, seed_means: list[float], agent: str | None = None) -> dict:
    return {"dataset": dataset, "steps": 100, "method": method, "agent": agent or method,
            "seed_means": seed_means, "normalized_score_mean": sum(seed_means) / len(seed_means)}  # fmt: skip


def test_target_tables_compare_with_iqls_best_lr_and_list_misses() -> None:
    summary = [
        summary_row("hopper-medium", "d3rlpy_iql", [10.0, 12.0]),
        summary_row("hopper-medium", "d3rlpy_iql", [30.0, 32.0], agent="d3rlpy_iql (lr 0.001)"),
        summary_row("maze2d-umaze", "d3rlpy_iql", [50.0]),
        summary_row("hopper-medium", "edp", [31.0, 31.0]),
        summary_row("maze2d-umaze", "edp", [40.0, 44.0]),
        summary_row("hopper-medium", "idql", [33.0, 34.0]),
    ]
    lines = target_check(summary)
    assert lines[0] == "| hopper-medium | 100 | edp | 31.0 | 31.0 | +0.0 ± 1.0 | met |"
    assert lines[1] == "| maze2d-umaze | 100 | edp | 42.0 | 50.0 | -8.0 | MISSED |"
    assert len(lines) == 3
    # idql was not run on maze2d-umaze, so it cannot meet the target everywhere and has no overview row
    assert target_overview(summary) == ["| 100 | edp | 1 of 2 | maze2d-umaze |"]


def test_rescore_scores_kept_agents_with_the_variants_their_runs_lack(tmp_path, monkeypatch) -> None:
    runs, kept = tmp_path / "runs", tmp_path / "agents"
    runs.mkdir()
    options = {"awr_beta": 1}
    IDQL(3, 2, hidden=16, depth=1, critic_hidden=16, critic_depth=1, **options).save(
        kept / kept_name("hopper-medium", "idql", 1e-3, 100, options, 4)
    )
    old = {"deterministic": {"normalized_score": 7.0}}
    run = {"agent": "idql", "dataset": "hopper-medium", "lr": 1e-3, "steps": 100, "seed": 4, "episodes": 3,
           "options": options, "variants": old}  # fmt: skip
    (runs / "a.json").write_text(json.dumps(run))
    (runs / "b.json").write_text(json.dumps({**run, "seed": 5}))  # its agent was not kept
    calls = []

    def fake_evaluate(agent, dataset: str, episodes: int, seed: int) -> dict:
        calls.append((dict(agent.act_settings), agent.sampler.solver, dataset, episodes, seed))
        return {"normalized_score": 1.0}

    monkeypatch.setattr(bench, "evaluate", fake_evaluate)
    assert rescore(runs, kept) == [runs / "a.json"]
    new = [v for v in bench.VARIANTS if v not in old]
    assert new and len(calls) == len(new)
    for (act, solver, dataset, episodes, seed), variant in zip(calls, new, strict=True):
        overrides = bench.VARIANTS[variant]
        assert solver == overrides["solver"]
        assert all(act[k] == v for k, v in overrides.items() if k != "solver")
        assert (dataset, episodes, seed) == ("hopper-medium", 3, 4)
    variants = json.loads((runs / "a.json").read_text())["variants"]
    assert variants == {**old, **{v: {"normalized_score": 1.0} for v in new}}
    assert json.loads((runs / "b.json").read_text())["variants"] == old
    assert rescore(runs, kept) == []


def test_missing_dataset_is_named_with_its_command_and_not_recorded(tmp_path, monkeypatch, capsys) -> None:
    out, data = tmp_path / "results", tmp_path / "data"
    argv = ["offline_rl.py", "--datasets", "hopper-medium", "--agents", "edp", "--data-dir", str(data),
            "--out", str(out), "--d3rlpy-python", "/nonexistent/python"]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert "hopper-medium" in str(exit_info.value.code)
    err = capsys.readouterr().err
    assert f"{data / 'hopper-medium.zarr'} does not exist" in err
    assert f"diffctl data generate hopper-medium --out {data / 'hopper-medium.zarr'}" in err
    assert json.loads((out / "offline_rl.json").read_text())["meta"]["commands"] == []


def peer_run(seed: int, **extra: str) -> dict:
    return {"agent": "d3rlpy_iql", "dataset": "maze2d-umaze", "seed": seed, "steps": 100, "lr": 1e-3,
            "options": {}, "normalized_score": 50.0, "normalized_scores": [50.0], "success_rate": 1.0,
            "train_steps_per_s": 40.0, "act_latency_ms_p50": 0.1, "act_latency_ms_p99": 0.2,
            "curve": [{"step": 100, "normalized_score": 50.0, "episodes": 1}], **extra}  # fmt: skip


def test_summary_names_the_d3rlpy_version_its_runs_record(tmp_path) -> None:
    runs = tmp_path / "offline_rl"
    runs.mkdir()
    (runs / "old.json").write_text(json.dumps(peer_run(0)))
    bench.write_summary(tmp_path, None)
    assert json.loads((tmp_path / "offline_rl.json").read_text())["meta"]["d3rlpy_versions"] == []
    assert "d3rlpy 2" not in (tmp_path / "offline_rl.md").read_text()
    (runs / "new.json").write_text(json.dumps(peer_run(1, d3rlpy_version="2.8.1")))
    bench.write_summary(tmp_path, None)
    assert json.loads((tmp_path / "offline_rl.json").read_text())["meta"]["d3rlpy_versions"] == ["2.8.1"]
    assert "d3rlpy 2.8.1 in the runs that record it" in (tmp_path / "offline_rl.md").read_text()


def test_curves_grid_keeps_each_agent_colour_and_hides_empty_panels(tmp_path, monkeypatch) -> None:
    import matplotlib.pyplot as plt

    def run(dataset: str, agent: str, steps: int) -> dict:
        curve = [{"step": s, "normalized_score": float(s)} for s in (steps // 2, steps)]
        return {"dataset": dataset, "agent": agent, "lr": 1e-3, "steps": steps, "curve": curve,
                "behaviour_score": 1.0}  # fmt: skip

    rows = [
        run("hopper-medium", "edp", 100),
        run("hopper-medium", "idql", 100),
        run("maze2d-umaze", "idql", 200),
    ]
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    bench.plot_curves(rows, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = figures[0].axes
    assert [ax.get_visible() for ax in axes] == [True, False, False, True]
    colour = {ax.get_title(): {line.get_label(): line.get_color() for line in ax.lines} for ax in axes}
    assert (
        colour["hopper-medium, 100 steps"]["idql (lr 0.001)"]
        == colour["maze2d-umaze, 200 steps"]["idql (lr 0.001)"]
    )
    assert (
        colour["hopper-medium, 100 steps"]["edp (lr 0.001)"]
        != colour["hopper-medium, 100 steps"]["idql (lr 0.001)"]
    )
    assert len(figures[0].legends[0].get_texts()) == 3
