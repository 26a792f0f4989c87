"""``PolicyClient``: a blocking websocket client of ``PolicyServer`` that looks like a policy.

It exposes ``predict_chunk`` / ``act`` / ``reset`` and the server policy's ``n_obs_steps`` etc., so a
``ControlLoop`` can drive a remote policy unchanged. ``last_timing`` holds the server's timing of the last
call plus the client's round trip (``rtt_ms``).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from typing import Any

import numpy as np

from diffctl.deploy.wire import decode, encode


class ServerError(RuntimeError):
    """The server answered a request with an error reply."""


class PolicyClient:
    def __init__(
        self, url: str, timeout: float = 30.0, max_bytes: int = 64 << 20, token: str | None = None
    ) -> None:
        """Connect to ``url``; ``token`` is the server's shared token when it requires one."""
        from websockets.sync.client import connect

        self.url, self.timeout, self.token = url, timeout, token
        self._stack = contextlib.ExitStack()
        self._ws = self._stack.enter_context(connect(url, open_timeout=timeout, max_size=max_bytes))
        self._ids = itertools.count()
        self.last_timing: dict[str, float] = {}
        self.info = self.health()
        for key in ("n_obs_steps", "n_action_steps", "horizon", "obs_dim", "action_dim", "goal_dim"):
            if key in self.info:
                setattr(self, key, int(self.info[key]))

    def request(self, op: str, arrays: dict[str, np.ndarray] | None = None) -> tuple[dict, dict]:
        """Send one request and wait for its reply; ``ServerError`` on an error reply."""
        rid = next(self._ids)
        t0 = time.perf_counter()
        header = {"op": op, "id": rid} if self.token is None else {"op": op, "id": rid, "token": self.token}
        self._ws.send(encode(header, arrays))
        header, out = decode(self._ws.recv(timeout=self.timeout))
        rtt = (time.perf_counter() - t0) * 1e3
        if not header.get("ok"):
            raise ServerError(header.get("error", "unknown server error"))
        if header.get("id") != rid:
            raise ServerError(f"reply id {header.get('id')!r} does not match request id {rid}")
        self.last_timing = {**header.get("timing", {}), "rtt_ms": rtt}
        return header, out

    def health(self) -> dict[str, Any]:
        header, _ = self.request("health")
        return {k: v for k, v in header.items() if k not in ("ok", "id", "op", "arrays", "timing")}

    def predict_chunk(self, obs_history: Any, prefix: Any = None) -> np.ndarray:
        arrays = {"obs_history": np.asarray(obs_history, dtype=np.float32)}
        if prefix is not None:
            arrays["prefix"] = np.asarray(prefix, dtype=np.float32)
        return self.request("predict_chunk", arrays)[1]["actions"]

    def act(self, obs: Any) -> np.ndarray:
        return self.request("act", {"obs": np.asarray(obs, dtype=np.float32)})[1]["action"]

    def reset(self) -> None:
        self.request("reset")

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
