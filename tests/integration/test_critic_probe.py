"""diffctl.bench.critic_probe: AWR on a frozen critic moves a Gaussian actor from the behaviour mean to the
critic's best action; without a value net it refuses with a named error."""

from __future__ import annotations

import numpy as np
import pytest

from diffctl.bench.critic_probe import fit_probe
from diffctl.policies.offline_rl import IDQL, DiffusionQL, TransitionDataset
from diffctl.train import TrainConfig, Trainer


def test_probe_follows_the_critic_from_behaviour_mean_to_best_action(tmp_path, bandit) -> None:
    ds = TransitionDataset(bandit())
    agent = IDQL(1, 1, hidden=64, depth=2, critic_hidden=64, critic_depth=2, tau=0.05)
    agent.fit(ds)
    cfg = TrainConfig(steps=400, batch_size=128, lr=1e-3, warmup_steps=0, ema=False, progress=False,
                      tensorboard=False, checkpoint_every=0, log_every=100, device="cpu")  # fmt: skip
    Trainer(agent, ds, cfg, tmp_path / "idql").fit()
    bc, _ = fit_probe(agent, ds, beta=0.0, steps=400)
    awr, stats = fit_probe(agent, ds, beta=5.0, steps=400)
    for s in (-1.0, 1.0):
        obs = np.array([s], np.float32)
        assert abs(float(bc.act(obs)[0])) < 0.2, s
        assert float(awr.act(obs)[0]) * s > 0.35, (s, awr.act(obs))
    assert stats["advantage_std"] > 0.1 and 0.0 <= stats["weight_clipped_frac"] < 1.0


def test_probe_needs_a_value_net_and_a_sane_beta(bandit) -> None:
    ds = TransitionDataset(bandit(16))
    dql = DiffusionQL(1, 1, hidden=16, depth=1, critic_hidden=16, critic_depth=1)
    dql.fit(ds)
    with pytest.raises(ValueError, match="no value net"):
        fit_probe(dql, ds, beta=3.0, steps=1)
    idql = IDQL(1, 1, hidden=16, depth=1, critic_hidden=16, critic_depth=1)
    idql.fit(ds)
    with pytest.raises(ValueError, match="beta"):
        fit_probe(idql, ds, beta=-1.0, steps=1)
