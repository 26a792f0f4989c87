"""Checking one raw environment observation before an agent acts on it, with errors that say what is wrong:
a flat state vector, or for agents with cameras a dict of that vector (``observations``) and uint8 frames."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

FLOAT32_MAX = float(np.finfo(np.float32).max)


def as_observation(obs: Any, widths: Collection[int]) -> np.ndarray:
    """``obs`` as a finite float32 vector of one of the ``widths``, else a ValueError naming the problem: a
    dict, a string, non-numeric or complex values, a wrong shape, NaN or inf, or values beyond float32."""
    arr = obs if isinstance(obs, np.ndarray) else _to_array(obs)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"act() needs real numbers, got an array of dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] not in widths:
        raise ValueError(f"act() got an observation of shape {arr.shape}; expected one of {_shapes(widths)}")
    if arr.dtype == np.float32:
        out = arr
    else:
        with np.errstate(over="ignore"):  # values beyond float32 become inf here and are named below
            out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        bad = np.flatnonzero(~np.isfinite(out)).tolist()
        if np.isfinite(arr).all():
            raise ValueError(
                f"act() got observation values beyond float32 (|x| > {FLOAT32_MAX:.3g}) at {bad}"
            )
        raise ValueError(f"act() got a non-finite observation (NaN or inf) at {bad}: {arr.tolist()}")
    return out


def as_image_observation(
    obs: Any, widths: Collection[int], image_shapes: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """``obs`` (a dict) with its ``observations`` vector checked by ``as_observation`` and each camera's
    frame checked to be uint8 of its ``(H, W, C)``; a ValueError naming the key otherwise."""
    if not isinstance(obs, Mapping):
        raise ValueError(
            f"act() got {type(obs).__name__}; this agent sees cameras {sorted(image_shapes)} and takes the "
            "environment's observation dict ('observations' plus one frame per camera)"
        )
    if "observations" not in obs:
        raise ValueError(
            f"act() got an observation dict without 'observations'; keys {sorted(map(str, obs))}"
        )
    out = {"observations": as_observation(obs["observations"], widths)}
    for key, shape in image_shapes.items():
        if key not in obs:
            raise ValueError(f"act() got no frame for camera {key!r}; keys {sorted(map(str, obs))}")
        frame = np.asarray(obs[key])
        expected = tuple(int(v) for v in shape)
        if frame.dtype != np.uint8 or frame.shape != expected:
            raise ValueError(
                f"act() got camera {key!r} as {frame.dtype} {frame.shape}; expected uint8 {expected} "
                "(H, W, C) as the agent was trained on"
            )
        out[key] = frame
    return out


def _to_array(obs: Any) -> np.ndarray:
    if isinstance(obs, Mapping):
        raise ValueError(
            f"act() got a dict observation (keys {sorted(map(str, obs))}); this agent takes one flat vector"
        )
    if isinstance(obs, (str, bytes)):
        raise ValueError(f"act() got a string observation {obs[:40]!r}; expected a vector of numbers")
    try:
        arr = np.asarray(obs)
    except ValueError as err:  # ragged nested sequences
        raise ValueError(f"act() got an observation that is not a vector of numbers: {err}") from None
    if arr.dtype == object:
        raise ValueError("act() got an observation of mixed or nested objects; expected a vector of numbers")
    return arr


def _shapes(widths: Collection[int]) -> list[tuple[int]]:
    return [(w,) for w in sorted(set(widths))]
