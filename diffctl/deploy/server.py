"""A websocket policy server: ``predict_chunk`` / ``act`` / ``reset`` / ``health`` over the wire format.

Every request gets a reply, ``{"ok": true, ...}`` with ``timing`` (decode, queue, inference and total
milliseconds on the server) or ``{"ok": false, "error": ...}``; a bad message never closes the server or
affects other clients. Messages over ``max_bytes`` get an error reply; frames larger than the transport
limit (``4 * max_bytes``) close only that connection (websocket code 1009). Inference runs in worker threads,
serialized on the one network. ``act`` and ``reset`` keep per-connection act-time state: a runner of the
policy's own kind (observation history, action queue) sharing the one set of weights, or, for agents without
a runner, a copy of the policy; it is dropped when the connection closes. At most ``max_connections`` clients
are served at once (more are closed with code 1013, try again later), and requests a client left behind when
it disconnected are not computed: each connection reads its messages into its own queue as they arrive (up to
``PENDING_LIMIT``), so a close frame is seen while earlier requests still wait, and its worker stops there.
With a ``token`` every request must carry it (header key ``token``); serving a non-loopback address without
one warns.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import threading
import time
import warnings
from typing import Any

import numpy as np

from diffctl.deploy.wire import decode, encode

OPS = ("health", "predict_chunk", "act", "reset")
PENDING_LIMIT = 256
"""Requests one connection may have waiting; beyond it the server stops reading that connection."""


class PolicyServer:
    """Serve ``policy`` on ``ws://host:port`` (``port=0`` picks a free port; see ``self.port``)."""

    def __init__(
        self,
        policy: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_bytes: int = 4 << 20,
        max_batch: int = 256,
        max_connections: int = 64,
        token: str | None = None,
        name: str | None = None,
    ) -> None:
        if max_bytes < 1024:
            raise ValueError(f"max_bytes must be >= 1024, got {max_bytes}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self.policy, self.host, self.port = policy, host, port
        self.max_bytes, self.max_batch, self.max_connections = max_bytes, max_batch, max_connections
        self.connections = 0
        if token is not None and not token:
            raise ValueError("token must be a non-empty string (or None for no authentication)")
        self.token = token
        if token is None and not _loopback(host):
            warnings.warn(
                f"serving on {host} without a token: anyone who can reach this address can drive the policy "
                "(pass token= / --token)",
                stacklevel=2,
            )
        self.name = name or type(policy).__name__
        self.requests = 0
        self.errors = 0
        self._infer_lock = threading.Lock()
        self._started = time.monotonic()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future | None = None
        self._error: BaseException | None = None

    # ----- lifecycle ------------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Block serving until ``stop()`` (from another thread) or Ctrl-C."""
        asyncio.run(self._main())

    def start(self, timeout: float = 10.0) -> PolicyServer:
        """Serve from a background thread; returns once the socket is bound."""
        self._thread = threading.Thread(target=self._run_thread, name="diffctl-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"policy server did not start within {timeout} s")
        if self._error is not None:
            raise self._error
        return self

    def _run_thread(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:
            self._error = err
            self._ready.set()

    def wait(self) -> None:
        """Block until the background server thread ends (Ctrl-C still interrupts)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))
        if self._thread is not None:
            self._thread.join(timeout=10.0)

    def __enter__(self) -> PolicyServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def _main(self) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        async with serve(self._handle, self.host, self.port, max_size=4 * self.max_bytes) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop

    # ----- requests -------------------------------------------------------------------------------------
    async def _handle(self, connection: Any) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.protocol import State

        if self.connections >= self.max_connections:
            await connection.close(1013, f"server busy: {self.max_connections} connections already open")
            return
        self.connections += 1
        session: dict[str, Any] = {}
        pending: asyncio.Queue[bytes | str | None] = asyncio.Queue(maxsize=PENDING_LIMIT)

        async def read() -> None:
            # websockets stops reading a connection while 16 messages wait (flow control), so without this
            # reader a close frame behind queued requests would only be seen after computing all of them
            try:
                async for message in connection:
                    await pending.put(message)
            except ConnectionClosed:
                pass
            finally:
                if not pending.full():  # a full queue ends at its next message: the state check below
                    pending.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (message := await pending.get()) is not None:
                if connection.state is not State.OPEN:
                    break  # the client left: its queued requests are not computed
                reply = await self._reply(message, session)
                await connection.send(reply)
        except ConnectionClosed:
            pass
        finally:
            reader.cancel()
            self.connections -= 1
            session.clear()

    async def _reply(self, message: bytes | str, session: dict[str, Any]) -> bytes:
        t0 = time.perf_counter()
        self.requests += 1
        request_id = None
        try:
            if len(message) > self.max_bytes:
                raise ValueError(f"message of {len(message)} bytes exceeds the limit of {self.max_bytes}")
            header, arrays = decode(message)
            request_id = header.get("id")
            if self.token is not None and not hmac.compare_digest(str(header.get("token", "")), self.token):
                raise PermissionError("unauthorized: this server needs its shared token in every request")
            if request_id is not None and _jsonable_id(request_id) is None:
                request_id = None
                raise ValueError("request id must be a string, an integer, a finite number or null")
            op = header.get("op")
            if op not in OPS:
                raise ValueError(f"unknown op {op!r}; valid ops: {OPS}")
            t_decoded = time.perf_counter()
            fields, out, t_queue, t_infer = await asyncio.to_thread(
                self._run_op, op, arrays, session, t_decoded
            )
            timing = {
                "decode_ms": (t_decoded - t0) * 1e3, "queue_ms": t_queue * 1e3, "infer_ms": t_infer * 1e3,
                "total_ms": (time.perf_counter() - t0) * 1e3,
            }  # fmt: skip
            return encode({"ok": True, "id": request_id, "op": op, "timing": timing, **fields}, out)
        except Exception as err:
            self.errors += 1
            error = f"{type(err).__name__}: {err}"
            return encode({"ok": False, "id": _jsonable_id(request_id), "error": error})

    def _run_op(
        self, op: str, arrays: dict[str, np.ndarray], session: dict[str, Any], t_decoded: float
    ) -> tuple[dict[str, Any], dict[str, np.ndarray], float, float]:
        if op == "health":
            return self._health(), {}, 0.0, 0.0
        if op == "reset":
            session.pop("policy", None)
            return {}, {}, 0.0, 0.0
        with self._infer_lock:
            t_start = time.perf_counter()
            if op == "predict_chunk":
                out = {"actions": self._predict_chunk(arrays)}
            else:
                out = {"action": self._act(arrays, session)}
            t_end = time.perf_counter()
        return {}, out, t_start - t_decoded, t_end - t_start

    def _predict_chunk(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        hist = _required(arrays, "obs_history", ndim=3)
        if hist.shape[0] > self.max_batch:
            raise ValueError(f"batch of {hist.shape[0]} exceeds the server's max_batch {self.max_batch}")
        prefix = arrays.get("prefix")
        kwargs = {} if prefix is None else {"prefix": _finite("prefix", prefix.astype(np.float32))}
        chunk = self.policy.predict_chunk(hist, **kwargs)
        return _numpy(chunk)

    def _act(self, arrays: dict[str, np.ndarray], session: dict[str, Any]) -> np.ndarray:
        obs = _required(arrays, "obs", ndim=1)
        if "policy" not in session:
            session["policy"] = self._session_actor()
        return _numpy(session["policy"].act(obs))

    def _session_actor(self) -> Any:
        """A fresh act-time state for one connection: a new runner of the policy's kind on the shared
        weights, or (agents without a runner) a reset copy of the policy."""
        runner = getattr(self.policy, "runner", None)
        if runner is not None:
            return type(runner)(self.policy)
        actor = copy.deepcopy(self.policy)
        if hasattr(actor, "reset"):
            actor.reset()
        return actor

    def _health(self) -> dict[str, Any]:
        keys = ("n_obs_steps", "n_action_steps", "horizon", "obs_dim", "action_dim", "goal_dim")
        info = {k: getattr(self.policy, k) for k in keys if isinstance(getattr(self.policy, k, None), int)}
        sampler = getattr(self.policy, "sampler", None)
        if sampler is not None and hasattr(sampler, "to_dict"):
            info["sampler"] = sampler.to_dict()
        return {
            "status": "ok", "agent": self.name, "uptime_s": time.monotonic() - self._started,
            "requests": self.requests, "errors": self.errors, "max_bytes": self.max_bytes, **info,
        }  # fmt: skip


def _required(arrays: dict[str, np.ndarray], name: str, ndim: int) -> np.ndarray:
    if name not in arrays:
        raise ValueError(f"request is missing array {name!r}; got {sorted(arrays)}")
    arr = arrays[name]
    if arr.ndim != ndim:
        raise ValueError(f"array {name!r} must have {ndim} dimensions, got shape {arr.shape}")
    return _finite(name, arr.astype(np.float32))


def _finite(name: str, arr: np.ndarray) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise ValueError(f"array {name!r} contains NaN or inf")
    return arr


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def _loopback(host: str) -> bool:
    """Whether ``host`` names a loopback interface only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _jsonable_id(value: Any) -> Any:
    """A request id that can go back in a JSON reply (finite numbers only), else None."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value if isinstance(value, (str, int, float, type(None))) else None
