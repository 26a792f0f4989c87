"""FrameWorldModel: context windows from a store, the U-Net's extra inputs, a model that learns to move a dot
better than copying the last frame, checked inputs and a save/load round trip."""

import numpy as np
import pytest
import torch

from diffctl.datasets import EpisodeStore
from diffctl.nets.unet2d import UNet2d
from diffctl.world_models.frames import FrameWindows, FrameWorldModel, resize_frames, to_uint8, to_unit

SIZE = 16
TINY = {"base": 8, "mults": [1, 2], "blocks": 1, "attn_res": []}


def dot_frames(xs: np.ndarray) -> np.ndarray:
    """16 px frames with a 2x2 white dot at column ``x`` (row 7)."""
    frames = np.zeros((len(xs), SIZE, SIZE, 3), np.uint8)
    for i, x in enumerate(xs):
        frames[i, 7:9, x : x + 2] = 255
    return frames


def dot_store(episodes: int = 24, steps: int = 10, seed: int = 0) -> EpisodeStore:
    """A dot that moves 2 px right (action +1) or left (action -1) per step, bouncing off the edges; the
    reward is the dot's column / 16."""
    rng = np.random.default_rng(seed)
    xs, acts = [], []
    for _ in range(episodes):
        x = int(rng.integers(2, 12))
        for _ in range(steps):
            a = float(rng.choice([-1.0, 1.0]))
            if not 2 <= x + 2 * a <= 12:
                a = -a
            xs.append(x)
            acts.append(a)
            x = int(x + 2 * a)
    xs_arr = np.array(xs)
    data = {
        "image": dot_frames(xs_arr),
        "actions": np.array(acts, np.float32)[:, None],
        "rewards": (xs_arr / 16).astype(np.float32),
    }
    return EpisodeStore.from_arrays(data, np.arange(steps, episodes * steps + 1, steps))


def test_unet_takes_extra_input_channels_and_a_conditioning_vector():
    net = UNet2d(3, SIZE, in_channels=9, extra_dim=5, **TINY)
    out = net(torch.randn(2, 9, SIZE, SIZE), torch.zeros(2), extra=torch.randn(2, 5))
    assert out.shape == (2, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="extra="):
        net(torch.randn(2, 9, SIZE, SIZE), torch.zeros(2))


def test_frames_round_trip_and_resize_by_area():
    frames = torch.randint(0, 256, (3, 8, 8, 3), dtype=torch.uint8)
    assert torch.equal(to_uint8(to_unit(frames)), frames)
    half = resize_frames(frames, 4)
    expected = frames.float().reshape(3, 4, 2, 4, 2, 3).mean(dim=(2, 4)).round().to(torch.uint8)
    assert torch.equal(half, expected)


def test_windows_repeat_the_first_frame_before_an_episode_and_skip_its_last_step():
    store = dot_store(episodes=3, steps=5)
    data = FrameWindows(store, frame_size=SIZE)
    data.context = 3
    data.hold_out(0.34)  # the last of 3 episodes
    assert data.validation_episodes == [2] and len(data) == 2 * 4  # steps 0..3 of episodes 0 and 1
    batch = data.get_batch(np.arange(len(data)))
    frames = torch.as_tensor(store.array("image"))
    actions = torch.as_tensor(store.array("actions"))
    # example 5: episode 1, step 1 (global 6): context = frames 5, 5, 6; actions 0, a5, a6
    assert torch.equal(batch["context"][5], frames[[5, 5, 6]])
    assert torch.equal(
        batch["past_actions"][5, :, 0], torch.stack([torch.tensor(0.0), actions[5, 0], actions[6, 0]])
    )
    assert torch.equal(batch["next"][5], frames[7])
    assert batch["rewards"][5] == store.array("rewards")[6]


@pytest.fixture(scope="module")
def trained() -> tuple[FrameWorldModel, FrameWindows]:
    store = dot_store()
    model = FrameWorldModel(action_dim=1, frame_size=SIZE, context=2, unet_kwargs=TINY, held_out=0.2)
    data = FrameWindows(store, frame_size=SIZE)
    model.fit(data)
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.network.parameters(), lr=2e-3)
    rng = np.random.default_rng(0)
    for _ in range(200):
        loss, _ = model.loss(data.get_batch(rng.integers(0, len(data), 32)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, data


def test_the_model_moves_the_dot_better_than_copying_the_last_frame(trained):
    model, data = trained
    steps = np.concatenate([np.arange(e * 10, e * 10 + 9) for e in data.validation_episodes])
    batch = data.window(steps, model.context)
    gen = torch.Generator().manual_seed(0)
    actions, past = batch["past_actions"][:, -1:], batch["past_actions"][:, :-1]
    out = model.rollout(batch["context"], actions, past_actions=past, generator=gen)
    truth = to_unit(batch["next"])
    model_err = (to_unit(out["observations"][:, 0]) - truth).pow(2).mean()
    copy_err = (to_unit(batch["context"][:, -1]) - truth).pow(2).mean()
    assert model_err < 0.5 * copy_err, (float(model_err), float(copy_err))
    reward_err = (out["rewards"][:, 0] - batch["rewards"]).abs().mean()
    assert reward_err < (batch["rewards"] - batch["rewards"].mean()).abs().mean()


def test_rollout_checks_its_inputs_and_round_trips_through_save(trained, tmp_path):
    model, data = trained
    frames = data.frames[:2]
    actions = torch.ones(2, 3, 1)
    out = model.rollout(frames, actions, generator=torch.Generator().manual_seed(1))
    assert out["observations"].shape == (2, 3, SIZE, SIZE, 3) and out["observations"].dtype == torch.uint8
    assert out["rewards"].shape == (2, 3)
    loaded = FrameWorldModel.load(model.save(tmp_path / "wm"))
    again = loaded.rollout(frames, actions, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again["observations"], out["observations"])
    with pytest.raises(ValueError, match="frames must be uint8"):
        model.rollout(frames.float(), actions)
    with pytest.raises(ValueError, match=r"actions must have shape \(2, T >= 1, 1\)"):
        model.rollout(frames, torch.ones(2, 3, 2))
    with pytest.raises(ValueError, match="closed-loop"):
        model.rollout(frames, policy=object(), horizon=3)
