"""Camera observations: crops, spatial-softmax keypoints, the image encoder, image windows from a store, and a
DiffusionPolicy that learns an action only its camera can tell it."""

import pickle

import numpy as np
import pytest
import torch

from diffctl.core.observations import as_image_observation
from diffctl.datasets import EpisodeStore
from diffctl.datasets.sequence import SequenceDataset
from diffctl.nets.vision import CameraEncoder, ImageObsEncoder, SpatialSoftmax, crop_frames
from diffctl.policies import DiffusionPolicy

SIZE, OBS, ACT, H, TO = 24, 3, 2, 8, 2


def test_random_crops_are_windows_of_their_frame_and_eval_takes_the_center():
    frames = torch.arange(6 * 2 * 10 * 12, dtype=torch.float32).reshape(6, 2, 10, 12)
    torch.manual_seed(0)
    crops = crop_frames(frames, 7, train=True)
    offsets = set()
    for frame, crop in zip(frames, crops, strict=True):
        top, left = divmod(int(crop[0, 0, 0] - frame[0, 0, 0]), 12)
        assert torch.equal(crop, frame[:, top : top + 7, left : left + 7])
        offsets.add((top, left))
    assert len(offsets) > 1  # independent per frame
    center = crop_frames(frames, 7, train=False)
    assert torch.equal(center, frames[:, :, 1:8, 2:9])
    with pytest.raises(ValueError, match="larger than"):
        crop_frames(frames, 11, train=False)


def test_spatial_softmax_puts_a_keypoint_on_a_peaked_map():
    pool = SpatialSoftmax(1, 1)
    with torch.no_grad():
        pool.proj.weight.fill_(1.0)
        pool.proj.bias.zero_()
    feats = torch.zeros(1, 1, 5, 9)
    feats[0, 0, 3, 6] = 100.0  # row 3 of 5, column 6 of 9
    xy = pool(feats)[0]
    assert xy.tolist() == pytest.approx([-1 + 2 * 6 / 8, -1 + 2 * 3 / 4], abs=1e-5)


def test_camera_encoder_crops_randomly_in_training_and_centrally_in_eval():
    enc = CameraEncoder((SIZE, SIZE, 3), crop=20, width=8, keypoints=4, features=5, stages=2)
    frames = torch.randint(0, 256, (2, SIZE, SIZE, 3), dtype=torch.uint8)
    enc.eval()
    with torch.no_grad():
        assert torch.equal(enc(frames), enc(frames))
        enc.train()
        torch.manual_seed(1)
        a = enc(frames)
        torch.manual_seed(2)
        b = enc(frames)
    assert a.shape == (2, 5) and not torch.allclose(a, b)


def test_image_obs_encoder_shapes_and_errors():
    enc = ImageObsEncoder(OBS, TO, {"front": [SIZE, SIZE, 3], "wrist": [12, 12, 3]}, crop=10, width=8,
                          keypoints=4, features=6)  # fmt: skip
    obs = torch.zeros(5, TO, OBS)
    images = {"front": torch.zeros(5, TO, SIZE, SIZE, 3, dtype=torch.uint8),
              "wrist": torch.zeros(5, TO, 12, 12, 3, dtype=torch.uint8)}  # fmt: skip
    assert enc(obs, images).shape == (5, enc.out_dim) and enc.out_dim == TO * (OBS + 2 * 6)
    with pytest.raises(ValueError, match="missing camera 'wrist'"):
        enc(obs, {"front": images["front"]})
    with pytest.raises(ValueError, match="camera 'front' frames must have shape"):
        enc(obs, {**images, "front": torch.zeros(5, TO, 8, 8, 3, dtype=torch.uint8)})


def test_image_observation_errors_name_the_problem():
    shapes = {"image": [SIZE, SIZE, 3]}
    good = {"observations": np.zeros(OBS), "image": np.zeros((SIZE, SIZE, 3), np.uint8)}
    out = as_image_observation(good, (OBS,), shapes)
    assert out["observations"].dtype == np.float32 and out["image"].shape == (SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="observation dict"):
        as_image_observation(np.zeros(OBS), (OBS,), shapes)
    with pytest.raises(ValueError, match="no frame for camera 'image'"):
        as_image_observation({"observations": np.zeros(OBS)}, (OBS,), shapes)
    with pytest.raises(ValueError, match=r"camera 'image' as float32 \(24, 24, 3\); expected uint8"):
        as_image_observation({**good, "image": np.zeros((SIZE, SIZE, 3), np.float32)}, (OBS,), shapes)
    with pytest.raises(ValueError, match=r"camera 'image' as uint8 \(32, 32, 3\)"):
        as_image_observation({**good, "image": np.zeros((32, 32, 3), np.uint8)}, (OBS,), shapes)


def square_frames(side: np.ndarray) -> np.ndarray:
    """24 px frames with a white square on the left (side -1) or the right (side +1)."""
    frames = np.zeros((len(side), SIZE, SIZE, 3), np.uint8)
    frames[side < 0, 8:16, 2:10] = 255
    frames[side > 0, 8:16, 14:22] = 255
    return frames


def square_store(episodes: int = 16, steps: int = 12) -> EpisodeStore:
    """Episodes whose action is +-0.6 by the side of a square seen only in the camera frame."""
    rng = np.random.default_rng(0)
    side = np.repeat(rng.choice([-1.0, 1.0], episodes), steps)
    n = episodes * steps
    data = {
        "observations": rng.uniform(-1, 1, (n, OBS)).astype(np.float32),
        "image": square_frames(side),
        "actions": np.stack([0.6 * side, np.zeros(n)], -1).astype(np.float32),
    }
    return EpisodeStore.from_arrays(data, np.arange(steps, n + 1, steps))


def test_the_store_chunks_frames_one_per_chunk_and_windows_gather_them():
    store = square_store(4, 12)
    handle = store._arrays["image"]
    assert handle.chunks[0] == 1 and handle.shards is not None
    assert store._arrays["actions"].shards is None
    ds = SequenceDataset(store, H, TO, 4, image_keys=["image"])
    assert ds.image_shapes == {"image": [SIZE, SIZE, 3]}
    batch = ds.get_batch(np.array([0, 5, 30]))
    frames = store.array("image")
    for row, index in enumerate([0, 5, 30]):
        episode = int(ds.episode_of([index])[0])
        start = episode * 12 + int(ds._rel_start[index])
        rows = np.clip(np.arange(start, start + TO), episode * 12, episode * 12 + 11)
        assert np.array_equal(batch["images"]["image"][row].numpy(), frames[rows])
    assert batch["images"]["image"].dtype == torch.uint8


def image_policy() -> tuple[DiffusionPolicy, SequenceDataset]:
    store = square_store()
    ds = SequenceDataset(store, H, TO, 4, image_keys=["image"])
    policy = DiffusionPolicy(
        OBS, ACT, horizon=H, n_obs_steps=TO, n_action_steps=4, backbone="mlp",
        backbone_kwargs={"hidden": 64, "depth": 2, "embed_dim": 32}, image_shapes=ds.image_shapes,
        image_encoder_kwargs={"crop": 20, "width": 8, "keypoints": 8, "features": 16, "stages": 2},
        sampler={"solver": "euler", "steps": 8},
    )  # fmt: skip
    policy.fit_normalizers(ds.array("obs"), ds.array("actions"))
    return policy, ds


@pytest.fixture(scope="module")
def trained_image_policy() -> DiffusionPolicy:
    policy, ds = image_policy()
    torch.manual_seed(0)
    opt = torch.optim.Adam(policy.network.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(150):
        loss, _ = policy.loss(ds.get_batch(rng.integers(0, len(ds), 32)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy


def test_an_image_policy_learns_what_only_its_camera_shows(trained_image_policy, tmp_path):
    policy = trained_image_policy
    for side in (-1.0, 1.0):
        obs = {"observations": np.zeros(OBS, np.float32), "image": square_frames(np.array([side]))[0]}
        policy.reset(seed=0)
        actions = np.stack([policy.act(obs) for _ in range(4)])
        assert np.all(np.sign(actions[:, 0]) == side), actions
        assert np.abs(actions[:, 0] - 0.6 * side).max() < 0.25
    obs = {"observations": np.zeros(OBS, np.float32), "image": square_frames(np.array([1.0]))[0]}
    history = {k: np.stack([v, v])[None] for k, v in obs.items()}
    noise = torch.randn(1, H, ACT, generator=torch.Generator().manual_seed(3))
    chunk = policy.predict_chunk(history, noise=noise)
    loaded = DiffusionPolicy.load(policy.save(tmp_path / "agent"))
    assert loaded.config.image_shapes == {"image": [SIZE, SIZE, 3]}
    assert torch.equal(loaded.predict_chunk(history, noise=noise), chunk)
    assert torch.equal(pickle.loads(pickle.dumps(policy)).predict_chunk(history, noise=noise), chunk)


def test_an_image_policy_refuses_bad_observations():
    policy, _ = image_policy()
    frame = np.zeros((SIZE, SIZE, 3), np.uint8)
    with pytest.raises(ValueError, match="observation dict"):
        policy.act(np.zeros(OBS, np.float32))
    with pytest.raises(ValueError, match=r"camera 'image' as float64"):
        policy.act({"observations": np.zeros(OBS), "image": frame.astype(np.float64)})
    with pytest.raises(ValueError, match="obs_history must be a dict"):
        policy.predict_chunk(np.zeros((1, TO, OBS), np.float32))


@pytest.mark.parametrize("kind", ["policy", "rti"])
def test_the_fused_path_with_cameras_gives_the_eager_actions(trained_image_policy, kind):
    from diffctl.policies.realtime import RTIPolicy

    obs = [{"observations": np.full(OBS, 0.1 * i, np.float32), "image": square_frames(np.array([s]))[0]}
           for i, s in enumerate([1.0, 1.0, -1.0, -1.0, -1.0, 1.0, 1.0, -1.0, -1.0])]  # fmt: skip
    runs = []
    for fused in (False, True):
        base = pickle.loads(pickle.dumps(trained_image_policy))
        base.sampler = base.sampler.replace(fused=fused, solver="dpmpp_2m", steps=5)
        agent = base if kind == "policy" else RTIPolicy(base, warm_sigma=1.0)
        agent.reset(seed=4)
        runs.append(np.stack([agent.act(o) for o in obs]))
    np.testing.assert_allclose(runs[1], runs[0], atol=1e-4)


def variants() -> dict:
    """Every chunk policy built on DiffusionPolicy, with this file's cameras, by name."""
    from diffctl.policies.consistency import ConsistencyPolicy
    from diffctl.policies.flow import FlowPolicy
    from diffctl.policies.realtime import RTCPolicy, RTIPolicy
    from diffctl.policies.streaming import StreamingDiffusionPolicy

    def build(cls, **kw):
        policy, ds = image_policy()
        opts = {k: getattr(policy.config, k) for k in ("horizon", "n_obs_steps", "n_action_steps",
                                                       "image_shapes", "image_encoder_kwargs")}  # fmt: skip
        out = cls(OBS, ACT, **opts, **kw)
        out.fit_normalizers(ds.array("obs"), ds.array("actions"))
        return out, ds

    return {
        "unet": lambda: build(DiffusionPolicy, backbone="unet", backbone_kwargs={"down_dims": [16, 32]}),
        "dit": lambda: build(DiffusionPolicy, backbone="dit"),
        "flow": lambda: build(FlowPolicy, backbone="mlp"),
        "streaming": lambda: build(StreamingDiffusionPolicy),
        "consistency": lambda: (ConsistencyPolicy.from_teacher(image_policy()[0]), image_policy()[1]),
        "rti": lambda: (RTIPolicy(image_policy()[0]), None),
        "rtc": lambda: (RTCPolicy(image_policy()[0]), None),
    }


@pytest.mark.parametrize("name", list(variants()))
def test_every_chunk_policy_trains_and_acts_on_camera_observations(name):
    policy, ds = variants()[name]()
    if ds is not None:
        loss, _ = policy.loss(ds.get_batch(np.arange(8)))
        loss.backward()
        assert torch.isfinite(loss)
    obs = {"observations": np.zeros(OBS, np.float32), "image": square_frames(np.array([1.0]))[0]}
    actions = np.stack([policy.act(obs) for _ in range(6)])
    assert actions.shape == (6, ACT) and np.isfinite(actions).all()
    history = {k: np.stack([v] * TO)[None] for k, v in obs.items()}
    chunk = policy.predict_chunk(history)
    assert chunk.shape == (1, H, ACT) and torch.isfinite(chunk).all()


def test_export_refuses_a_policy_with_cameras(tmp_path):
    from diffctl.deploy.export import export_denoiser

    with pytest.raises(ValueError, match="sees cameras"):
        export_denoiser(image_policy()[0], tmp_path / "d.pt", "torchscript")


def test_the_fused_streaming_tick_with_cameras_gives_the_eager_actions():
    policy, _ = variants()["streaming"]()
    obs = [{"observations": np.full(OBS, 0.1 * i, np.float32), "image": square_frames(np.array([s]))[0]}
           for i, s in enumerate([1.0, -1.0, -1.0, 1.0, 1.0, -1.0])]  # fmt: skip
    runs = []
    for fused in (False, True):
        agent = pickle.loads(pickle.dumps(policy))
        agent.sampler = agent.sampler.replace(fused=fused)
        agent.reset(seed=2)
        runs.append(np.stack([agent.act(o) for o in obs]))
    np.testing.assert_allclose(runs[1], runs[0], atol=1e-4)
