"""The offline RL benchmark's agent options: parsing, file tags, table labels and the EDP speed-up pairing."""

from __future__ import annotations

import pytest

from benchmarks.offline_rl import edp_speedups, label, options_tag, parse_options


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


def test_edp_speedup_pairs_runs_with_the_same_critics() -> None:
    mish = {"critic_activation": "mish", "critic_inputs": "normalized"}
    relu = {"critic_activation": "relu", "critic_inputs": "raw"}

    def row(method: str, options: dict[str, str], speed: float) -> dict:
        agent = label({"agent": method, "lr": 1e-3, "options": options})
        return {"dataset": "hopper-medium", "steps": 100, "lr": 1e-3, "method": method, "agent": agent,
                "options": options, "variant": None, "train_steps_per_s": speed}  # fmt: skip

    summary = [row("diffusion_ql", {}, 10.0), row("edp", mish, 15.0), row("edp", {}, 18.0)]
    key = "hopper-medium 100 steps (lr 0.001, critic_activation mish, critic_inputs normalized)"
    assert edp_speedups(summary) == {key: 1.5}
    summary.append(row("diffusion_ql", relu, 12.0))
    assert edp_speedups(summary) == {key: 1.5, "hopper-medium 100 steps (lr 0.001)": 1.5}
