"""Typed configs: strict building from mappings, type coercion with named errors, docs, views, pickling."""

from __future__ import annotations

import dataclasses
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import pytest

from diffctl.core.config import Config, coerce
from diffctl.core.registry import AGENT_CLASSES, agent_class
from diffctl.core.sampler import SamplerConfig
from diffctl.policies import DiffusionPolicy


@dataclass
class Toy(Config):
    section: ClassVar[str] = "toy"

    size: int
    """How big."""
    rate: float = 0.5
    """How fast."""
    mode: Literal["a", "b"] = "a"
    limit: float | None = None
    pair: tuple[float, float] = (0.9, 0.99)
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.size < 1:
            raise ValueError(f"toy.size must be positive, got {self.size}")


def test_from_dict_coerces_and_refuses_unknown_or_missing_keys() -> None:
    cfg = Toy.from_dict({"size": 3.0, "rate": 1, "pair": [0.5, 0.6], "limit": None})
    assert (cfg.size, cfg.rate, cfg.pair, cfg.limit) == (3, 1.0, (0.5, 0.6), None)
    assert type(cfg.size) is int and type(cfg.rate) is float
    with pytest.raises(ValueError, match=r"unknown toy keys \['sise'\]; valid keys: \['extra', 'limit'"):
        Toy.from_dict({"sise": 3})
    with pytest.raises(ValueError, match=r"toy is missing required keys \['size'\]"):
        Toy.from_dict({"rate": 0.1})


@pytest.mark.parametrize(
    "key, value, message",
    [("size", 2.5, "toy.size must be an integer, got 2.5"), ("size", True, "toy.size must be an integer"),
     ("size", "3", "toy.size must be an integer, got '3'"),
     ("rate", float("nan"), "toy.rate must be a finite number, got nan"),
     ("mode", "c", "toy.mode must be one of ('a', 'b'), got 'c'"), ("pair", [1.0], "toy.pair must be"),
     ("extra", [1], "toy.extra must be"), ("size", 0, "toy.size must be positive, got 0")],
)  # fmt: skip
def test_bad_values_name_the_key_and_the_expected_type(key: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Toy.from_dict({"size": 1, key: value})


def test_replace_validates_and_to_dict_round_trips() -> None:
    cfg = Toy(size=2)
    assert Toy.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["pair"] == [0.9, 0.99]
    assert cfg.replace(rate=2).rate == 2.0 and cfg.rate == 0.5
    with pytest.raises(ValueError, match=r"toy\.mode"):
        cfg.replace(mode="z")


def test_defaults_and_field_docs_come_from_the_class() -> None:
    assert Toy.defaults() == {"rate": 0.5, "mode": "a", "limit": None, "pair": (0.9, 0.99), "extra": {}}
    docs = Toy.field_docs()
    assert docs["size"] == "How big." and docs["rate"] == "How fast." and docs["mode"] == ""
    assert "size: an integer (required)  # How big." in Toy.describe()


def test_numpy_scalars_are_numbers_and_numpy_bools_are_not() -> None:
    cfg = Toy.from_dict({"size": np.int64(3), "rate": np.float32(0.25)})
    assert (cfg.size, cfg.rate) == (3, 0.25) and type(cfg.size) is int and type(cfg.rate) is float
    for value in (np.bool_(True), float("inf")):
        with pytest.raises(ValueError, match=r"toy\.size must be an integer"):
            Toy.from_dict({"size": value})


def test_coerce_unions_prefer_the_first_matching_type() -> None:
    assert coerce(int | None, None, "x") is None
    assert coerce(float | None, 2, "x") == 2.0
    with pytest.raises(ValueError, match=re.escape("x must be a finite number | None, got 'a'")):
        coerce(float | None, "a", "x")


def test_sampler_config_validates_solver_names() -> None:
    assert SamplerConfig.from_dict({"solver": "heun", "steps": 4}).steps == 4
    with pytest.raises(ValueError, match=r"unknown sampler.solver 'nope'; expected one of \["):
        SamplerConfig(solver="nope")


def test_every_registered_agent_has_a_typed_config_documenting_each_field() -> None:
    for name in AGENT_CLASSES:
        cls = agent_class(name)
        config_class = cls.config_class
        assert dataclasses.is_dataclass(config_class) and issubclass(config_class, Config), name
        undocumented = [k for k, doc in config_class.field_docs().items() if not doc]
        assert not undocumented, f"{name}: fields without a docstring: {undocumented}"


def test_agent_hparams_is_a_read_only_view_that_follows_config_and_pickles() -> None:
    pol = DiffusionPolicy(3, 2, backbone="mlp", backbone_kwargs={"hidden": 16, "depth": 1})
    with pytest.raises(TypeError):
        pol.hparams["goal_dropout"] = 0.5  # type: ignore[index]
    pol.config = pol.config.replace(goal_dropout=0.3)
    assert pol.hparams["goal_dropout"] == 0.3
    copy = pickle.loads(pickle.dumps(pol))
    assert copy.config == pol.config and copy.hparams["goal_dropout"] == 0.3
    assert DiffusionPolicy.from_config(pol.config).config == pol.config
