"""AnchoredDiffusionPolicy: k-means anchors recover the modes of the data, the head picks the right one, two
Euler steps from the noised anchor give the mode's chunk, and the bridge loss sees the sampler's states."""

import numpy as np
import pytest
import torch

import diffctl as dc
from diffctl.kernels.losses import anchored_loss
from diffctl.policies.anchored import AnchoredDiffusionPolicy

H = 4


class TwoModes:
    """Windows whose chunk is +0.6 everywhere when the observation is +1, and -0.6 when it is -1."""

    def __init__(self, n: int = 256) -> None:
        sign = np.where(np.arange(n) % 2 == 0, 1.0, -1.0).astype(np.float32)
        self.obs = np.repeat(sign[:, None, None], 1, axis=1)
        self.actions = np.repeat(0.6 * sign[:, None, None], H, axis=1)

    def __len__(self) -> int:
        return len(self.obs)

    def array(self, key: str) -> np.ndarray:
        return {"obs": self.obs.reshape(-1, 1), "actions": self.actions.reshape(-1, 1)}[key]

    def get_batch(self, idx):
        idx = np.asarray(idx)
        return {"obs": torch.as_tensor(self.obs[idx]), "actions": torch.as_tensor(self.actions[idx])}


def make_policy() -> AnchoredDiffusionPolicy:
    policy = AnchoredDiffusionPolicy(1, 1, horizon=H, n_obs_steps=1, n_action_steps=2, backbone="mlp",
                                     backbone_kwargs={"hidden": 64, "depth": 2, "embed_dim": 16},
                                     num_anchors=2, anchor_windows=64)  # fmt: skip
    return policy


def test_anchors_are_the_modes_and_two_steps_reach_them(tmp_path):
    data = TwoModes()
    policy = make_policy()
    policy.fit(data)
    anchors = sorted(float(a.mean()) for a in policy.network.anchors)
    assert anchors == pytest.approx([-1.0, 1.0], abs=1e-5)  # +-0.6 normalized by the data's limits
    opt = torch.optim.Adam(policy.network.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    for _ in range(300):
        loss, info = policy.loss(data.get_batch(torch.randint(len(data), (64,), generator=gen).numpy()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert info["anchor_ce"] < 0.05
    calls = []
    hook = policy.network.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    hist = torch.tensor([[[1.0]], [[-1.0]]])
    chunks = policy.predict_chunk(hist)
    hook.remove()
    assert calls == [2, 2]  # 2 Euler steps, batch 2: 2 NFE per chunk
    torch.testing.assert_close(chunks[0], torch.full((H, 1), 0.6), atol=0.1, rtol=0)
    torch.testing.assert_close(chunks[1], torch.full((H, 1), -0.6), atol=0.1, rtol=0)
    policy.save(tmp_path / "agent")
    again = dc.load(tmp_path / "agent")
    torch.testing.assert_close(again.network.anchors, policy.network.anchors)
    policy.seed(3)
    again.seed(3)
    torch.testing.assert_close(again.predict_chunk(hist), policy.predict_chunk(hist))


def test_bridge_loss_starts_at_the_noised_anchor():
    seen = {}

    def denoiser(x, sigma, cond):
        seen["x"], seen["sigma"] = x, sigma
        return torch.zeros_like(x)

    x0, anchor = torch.zeros(4096, 3), torch.full((4096, 3), 2.0)
    anchored_loss(
        denoiser, x0, anchor, sigma_min=0.999, sigma_max=1.0, generator=torch.Generator().manual_seed(0)
    )
    assert float(seen["sigma"].min()) >= 0.999
    assert float(seen["x"].mean()) == pytest.approx(2.0, abs=0.05)
    assert float(seen["x"].std()) == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        anchored_loss(denoiser, x0, anchor, sigma_min=1.0, sigma_max=0.5)


def test_steering_and_chain_fine_tuning_refuse_an_anchored_policy():
    from diffctl.improve import FunctionVerifier, SteeredPolicy
    from diffctl.improve.dppo import require_chain_policy

    policy = make_policy()
    policy.fit(TwoModes())
    verifier = FunctionVerifier(lambda obs, actions: actions.sum(dim=(1, 2)))
    SteeredPolicy(policy, verifier, method="best_of_n", n=2)  # ranks its own samples: fine
    with pytest.raises(ValueError, match="use best_of_n"):
        SteeredPolicy(policy, verifier, method="fk", n=2)
    with pytest.raises(ValueError, match="samples from noise"):
        require_chain_policy(policy)
