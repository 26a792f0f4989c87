"""Shared agent plumbing: the pickled sampling generator and config.json checks of every ``load``."""

import json
import pickle
import re

import numpy as np
import pytest
import torch

from diffctl.policies import DiffusionPolicy
from diffctl.policies.base import SeededSampler, read_agent_config
from diffctl.policies.realtime import RealTimePolicy


class Sampler(SeededSampler):
    def __init__(self, seed: int | None) -> None:
        self.seed(seed)
        self.other = [1, 2]


def test_generator_survives_pickling_mid_stream() -> None:
    agent = Sampler(7)
    torch.randn(3, generator=agent._generator)
    clone = pickle.loads(pickle.dumps(agent))
    assert clone.other == [1, 2]
    assert torch.equal(torch.randn(5, generator=agent._generator), torch.randn(5, generator=clone._generator))
    assert pickle.loads(pickle.dumps(Sampler(None)))._generator is None


def test_state_without_generator_round_trips() -> None:
    agent = Sampler(1)
    del agent._generator
    clone = pickle.loads(pickle.dumps(agent))
    assert not hasattr(clone, "_generator") and clone.other == [1, 2]


def tiny_policy() -> DiffusionPolicy:
    pol = DiffusionPolicy(
        3, 2, horizon=4, n_obs_steps=1, n_action_steps=2, backbone="mlp",
        backbone_kwargs={"hidden": 16, "depth": 1, "embed_dim": 8}, sampler={"steps": 2},
    )  # fmt: skip
    pol.fit_normalizers(np.array([[-1.0] * 3, [1.0] * 3]), np.array([[-1.0] * 2, [1.0] * 2]))
    return pol


def test_realtime_wrapper_pickles_with_its_generator() -> None:
    wrapped = RealTimePolicy(tiny_policy(), seam="naive", seed=3)
    clone = pickle.loads(pickle.dumps(wrapped))
    obs = np.zeros(3, dtype=np.float32)
    np.testing.assert_array_equal(wrapped.act(obs), clone.act(obs))


def test_read_agent_config_names_class_version_and_missing_key(tmp_path) -> None:
    path = tiny_policy().save(tmp_path / "agent")
    config, state = read_agent_config(path, "DiffusionPolicy", 1)
    assert config["class"] == "DiffusionPolicy" and state
    with pytest.raises(ValueError, match="has class 'DiffusionPolicy'; expected 'Other'"):
        read_agent_config(path, "Other", 1)
    with pytest.raises(ValueError, match="has version 1; supported: 2"):
        read_agent_config(path, "DiffusionPolicy", 2)
    cfg = json.loads((path / "config.json").read_text())
    del cfg["sampler"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="missing key 'sampler'"):
        DiffusionPolicy.load(path)


def test_eval_mode_flips_and_restores_flags() -> None:
    from diffctl.policies.base import eval_mode, param_device

    calls = []

    class Custom(torch.nn.Linear):
        def train(self, mode: bool = True) -> "Custom":
            calls.append(mode)
            return super().train(mode)

    plain = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Dropout(0.5)))
    plain[1].eval()
    with eval_mode(plain):
        assert not any(m.training for m in plain.modules())
    assert plain.training and plain[0].training and not plain[1].training and not plain[1][0].training
    custom = torch.nn.Sequential(Custom(2, 2))
    with eval_mode(custom):
        assert not custom[0].training
    assert custom[0].training and calls == [False, True]  # overridden train() is honoured
    assert param_device(plain) == torch.device("cpu") and param_device(torch.nn.ReLU()).type == "cpu"


def test_a_checkpoint_with_non_finite_weights_is_refused_at_load(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    import diffctl as dc

    pol = DiffusionPolicy(3, 2, backbone="mlp", backbone_kwargs={"hidden": 8, "depth": 1})
    pol.fit_normalizers([[0.0] * 3, [1.0] * 3], [[-1.0, -1.0], [1.0, 1.0]])
    path = pol.save(tmp_path / "agent")
    weights = load_file(str(path / "model.safetensors"))
    name = sorted(k for k, v in weights.items() if v.is_floating_point())[0]
    weights[name] = weights[name].clone().fill_(float("nan"))
    save_file(weights, str(path / "model.safetensors"))
    message = f"model.safetensors holds non-finite weights (NaN or inf) in ['{name}']"
    with pytest.raises(ValueError, match=re.escape(message)):
        dc.load(path)
