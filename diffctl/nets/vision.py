"""Image observation encoders in plain torch (Diffusion Policy's recipe): a ResNet-18 layout with GroupNorm
instead of BatchNorm, spatial-softmax keypoints instead of global pooling, random crops in training and the
center crop at act time; one encoder per camera, concatenated with the low-dimensional state per step.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 16 channels per group (Diffusion Policy's replacement for BatchNorm)."""
    return nn.GroupNorm(max(1, channels // 16), channels)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions with a (strided 1x1) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = _norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = _norm(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _norm(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(y)) + self.shortcut(x))


class ResNetGN(nn.Module):
    """ResNet-18 trunk (7x7 stem, max-pool, 4 stages of 2 blocks at widths w, 2w, 4w, 8w) with GroupNorm;
    returns the last feature map. ``width=64`` is ResNet-18 itself."""

    def __init__(self, in_channels: int = 3, width: int = 64, blocks: Sequence[int] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), _norm(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        layers, c_in = [], width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            for j in range(n):
                layers.append(BasicBlock(c_in, c_out, 2 if i > 0 and j == 0 else 1))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.out_channels = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))


class SpatialSoftmax(nn.Module):
    """Keypoints of a feature map: a 1x1 convolution to ``keypoints`` maps, a softmax over each map's
    positions and the expected (x, y) in [-1, 1] -> ``(B, 2 * keypoints)``."""

    def __init__(self, channels: int, keypoints: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, keypoints, 1)
        self.keypoints = keypoints

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        maps = self.proj(feats)
        b, k, h, w = maps.shape
        attn = torch.softmax(maps.reshape(b, k, h * w), dim=-1)
        ys = torch.linspace(-1.0, 1.0, h, device=feats.device, dtype=feats.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=feats.device, dtype=feats.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        coords = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1)  # (h*w, 2)
        return (attn @ coords).reshape(b, 2 * k)


def crop_frames(frames: torch.Tensor, size: int, train: bool) -> torch.Tensor:
    """``(N, C, H, W) -> (N, C, size, size)``: an independent random crop per frame in training (torch's
    global generator, which the trainer seeds), the center crop otherwise."""
    n, _, h, w = frames.shape
    if size > min(h, w):
        raise ValueError(f"crop {size} is larger than the {h}x{w} frames")
    if size == h and size == w:
        return frames
    if not train:
        top, left = (h - size) // 2, (w - size) // 2
        return frames[:, :, top : top + size, left : left + size]
    tops = torch.randint(0, h - size + 1, (n,)).tolist()
    lefts = torch.randint(0, w - size + 1, (n,)).tolist()
    return torch.stack(
        [f[:, t : t + size, s : s + size] for f, t, s in zip(frames, tops, lefts, strict=True)]
    )


class CameraEncoder(nn.Module):
    """One camera: uint8 ``(N, H, W, C)`` frames -> ``(N, features)`` (scale to [-1, 1], crop, ResNetGN,
    spatial softmax, linear)."""

    def __init__(
        self, shape: Sequence[int], crop: int, width: int, keypoints: int, features: int, stages: int = 4
    ) -> None:
        super().__init__()
        h, w, c = (int(v) for v in shape)
        self.shape, self.crop = (h, w, c), int(crop)
        if not 0 < self.crop <= min(h, w):
            raise ValueError(f"image crop must be in (0, {min(h, w)}] for {h}x{w} frames, got {crop}")
        self.trunk = ResNetGN(c, width, (2,) * stages)
        self.pool = SpatialSoftmax(self.trunk.out_channels, keypoints)
        self.head = nn.Linear(2 * keypoints, features)
        self.out_dim = features

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        x = crop_frames(x, self.crop, self.training)
        return self.head(self.pool(self.trunk(x)))


class ImageObsEncoder(nn.Module):
    """Low-dim state plus cameras, per step of the history: ``obs (B, To, Do)`` and ``images {key: (B, To,
    H, W, C) uint8}`` -> ``(B, To * (Do + cameras * features))``.

    ``crop``: side of the crop (a float <= 1: that fraction of the frame); ``width``: channels of the first
    ResNet stage (64 is ResNet-18); ``stages``: ResNet stages, each halving the map after the first (4 leaves
    3x3 keypoint maps from 76 px crops; small frames need fewer); ``keypoints`` of the spatial softmax;
    ``features`` per camera and step."""

    def __init__(
        self,
        obs_dim: int,
        n_obs_steps: int,
        image_shapes: Mapping[str, Sequence[int]],
        crop: float = 0.9,
        width: int = 32,
        keypoints: int = 32,
        features: int = 64,
        stages: int = 4,
    ) -> None:
        super().__init__()
        if not image_shapes:
            raise ValueError("ImageObsEncoder needs at least one camera in image_shapes")
        self.obs_dim, self.n_obs_steps = obs_dim, n_obs_steps
        self.keys = sorted(image_shapes)
        cams = {}
        for key in self.keys:
            shape = [int(v) for v in image_shapes[key]]
            if len(shape) != 3:
                raise ValueError(f"image_shapes[{key!r}] must be (H, W, C), got {shape}")
            side = round(crop * min(shape[:2])) if isinstance(crop, float) and crop <= 1.0 else int(crop)
            cams[key.replace("/", "__")] = CameraEncoder(shape, side, width, keypoints, features, stages)
        self.cameras = nn.ModuleDict(cams)
        self.out_dim = n_obs_steps * (obs_dim + len(self.keys) * features)

    def forward(self, obs: torch.Tensor, images: Mapping[str, torch.Tensor]) -> torch.Tensor:
        b, to = obs.shape[:2]
        if obs.shape[1:] != (self.n_obs_steps, self.obs_dim):
            expected = (self.n_obs_steps, self.obs_dim)
            raise ValueError(f"observation history must have shape (B, *{expected}), got {tuple(obs.shape)}")
        parts = [obs]
        for key in self.keys:
            if key not in images:
                raise ValueError(f"missing camera {key!r}; got {sorted(images)}")
            frames = images[key]
            cam = self.cameras[key.replace("/", "__")]
            if frames.shape != (b, to, *cam.shape):
                raise ValueError(
                    f"camera {key!r} frames must have shape (B, To, *{cam.shape}) = "
                    f"{(b, to, *cam.shape)}, got {tuple(frames.shape)}"
                )
            parts.append(cam(frames.reshape(b * to, *cam.shape)).reshape(b, to, -1))
        return torch.cat(parts, dim=-1).flatten(1)


def image_encoder_defaults() -> dict[str, float | int]:
    """``ImageObsEncoder``'s options and their defaults (the policy configs' ``image_encoder_kwargs``)."""
    params = inspect.signature(ImageObsEncoder.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
