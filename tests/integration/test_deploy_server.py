"""Policy server on 127.0.0.1: replies match the local policy; bad messages get errors, server stays up."""

import os
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("websockets")

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from diffctl.deploy import ControlLoop, LoopConfig
from diffctl.deploy.client import PolicyClient, ServerError
from diffctl.deploy.server import PolicyServer
from diffctl.deploy.wire import decode, encode
from diffctl.policies import DiffusionPolicy

OBS, ACT, GOAL, H, TO = 4, 2, 2, 8, 2


def tiny_policy() -> DiffusionPolicy:
    policy = DiffusionPolicy(OBS, ACT, goal_dim=GOAL, horizon=H, n_obs_steps=TO, n_action_steps=4,
                             backbone="mlp", backbone_kwargs={"hidden": 32, "depth": 1, "embed_dim": 16},
                             sampler={"solver": "euler", "steps": 3})  # fmt: skip
    g = torch.Generator().manual_seed(0)
    policy.fit_normalizers(torch.rand(50, OBS, generator=g) * 2 - 1, torch.rand(50, ACT, generator=g) * 2 - 1,
                           torch.rand(50, GOAL, generator=g) * 2 - 1)  # fmt: skip
    return policy


@pytest.fixture(scope="module")
def server():
    with PolicyServer(tiny_policy(), port=0, max_bytes=4096) as srv:
        yield srv


def test_predict_chunk_and_health(server):
    hist = np.random.default_rng(0).uniform(-1, 1, (3, TO, OBS + GOAL)).astype(np.float32)
    with PolicyClient(server.url, timeout=20) as client:
        assert client.info["status"] == "ok" and client.info["agent"] == "DiffusionPolicy"
        assert client.n_obs_steps == TO and client.horizon == H
        server.policy.seed(5)
        chunk = client.predict_chunk(hist)
        assert chunk.shape == (3, H, ACT) and chunk.dtype == np.float32
        server.policy.seed(5)
        np.testing.assert_array_equal(chunk, server.policy.predict_chunk(hist).numpy())
        timing = client.last_timing
        assert {"decode_ms", "queue_ms", "infer_ms", "total_ms", "rtt_ms"} <= set(timing)
        assert timing["rtt_ms"] >= timing["infer_ms"] >= 0
        action = client.act(hist[0, -1])
        assert action.shape == (ACT,)
        client.reset()


def _raw_call(ws, message):
    ws.send(message)
    return decode(ws.recv(timeout=20))[0]


def test_malformed_messages_get_errors_and_server_keeps_serving(server):
    good = encode({"op": "predict_chunk", "id": 7}, {"obs_history": np.zeros((1, TO, OBS), np.float32)})
    bad = {
        "garbage bytes": b"\x00\x01\x02 not a message",
        "bad json text": "{not json",
        "json not object": "[1, 2]",
        "unknown op": '{"op": "launch_missiles"}',
        "header past end": b"DCT1" + struct.pack("<I", 10_000) + b"{}",
        "missing array": encode({"op": "predict_chunk"}),
        "wrong ndim": encode({"op": "predict_chunk"}, {"obs_history": np.zeros((TO, OBS), np.float32)}),
        "wrong features": encode({"op": "predict_chunk"}, {"obs_history": np.zeros((1, TO, 3), np.float32)}),
        "nan": encode({"op": "predict_chunk"}, {"obs_history": np.full((1, TO, OBS), np.nan, np.float32)}),
        "lying nbytes": good[:-8],
        "oversized": encode({"op": "predict_chunk"}, {"obs_history": np.zeros((200, TO, OBS), np.float32)}),
    }
    with connect(server.url, open_timeout=20) as ws, PolicyClient(server.url, timeout=20) as other:
        for label, message in bad.items():
            reply = _raw_call(ws, message)
            assert reply["ok"] is False, label
            assert reply["error"], label
            assert other.health()["status"] == "ok"
        assert "exceeds the limit" in _raw_call(ws, bad["oversized"])["error"]
        assert "unknown op" in _raw_call(ws, bad["unknown op"])["error"]
        reply = _raw_call(ws, good)
        assert reply["ok"] is True and reply["id"] == 7
    # a frame over the transport limit closes only that connection
    with connect(server.url, open_timeout=20) as ws:
        ws.send(b"\x00" * (4 * server.max_bytes + 10))
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=20)
    with PolicyClient(server.url, timeout=20) as client:
        assert client.health()["errors"] >= len(bad)
        with pytest.raises(ServerError, match="obs_history"):
            client.request("predict_chunk", {})


def test_control_loop_drives_remote_policy(server):
    with PolicyClient(server.url, timeout=20) as client:
        obs = np.zeros(OBS + GOAL, np.float32)
        applied = []
        cfg = LoopConfig(rate_hz=50.0, watchdog_s=20.0)
        result = ControlLoop(client, lambda: obs, applied.append, cfg).run(ticks=10)
    assert result.stall is None and len(applied) == len(result.ticks) > 0
    assert result.latency["count"] >= 1


def test_cli_serve_subprocess(tmp_path):
    ckpt = tiny_policy().save(tmp_path / "agent")
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "diffctl.cli", "serve", str(ckpt), "--port", "0", "--steps", "2", "--fused"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "serving" in line, proc.stderr.read() if proc.poll() is not None else line
        url = line.split(" on ")[1].split()[0]
        with PolicyClient(url, timeout=20) as client:
            assert client.info["sampler"]["steps"] == 2 and client.info["sampler"]["fused"] is True
            assert client.predict_chunk(np.zeros((1, TO, OBS), np.float32)).shape == (1, H, ACT)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    bad = [*cmd[:4], str(tmp_path / "nope"), "--port", "0"]
    missing = subprocess.run(bad, capture_output=True, text=True, env=env, timeout=60)
    assert missing.returncode == 1 and "not a directory" in missing.stderr


def test_serve_on_a_busy_port_is_one_clear_error(tmp_path, capsys) -> None:
    import socket

    from diffctl.cli import main
    from diffctl.policies import DiffusionPolicy

    pol = DiffusionPolicy(4, 2, backbone="mlp", backbone_kwargs={"hidden": 8, "depth": 1})
    pol.fit_normalizers(np.array([[0.0] * 4, [1.0] * 4]), np.array([[-1.0, -1.0], [1.0, 1.0]]))
    path = pol.save(tmp_path / "agent")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(path), "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"cannot serve on 127.0.0.1:{port}: " in err


def test_nan_request_ids_get_an_error_reply(server):
    with connect(server.url, open_timeout=20) as ws:
        for rid in ("NaN", "Infinity", "-Infinity"):
            message = '{"op": "health", "id": ' + rid + "}"
            reply = _raw_call(ws, message)
            assert reply["ok"] is False and reply["id"] is None and "request id must be" in reply["error"]
        assert _raw_call(ws, encode({"op": "health", "id": 3}))["ok"] is True  # the connection stays open


def test_sessions_share_the_weights_and_keep_their_own_history(server):
    from diffctl.policies.runner import ChunkRunner

    actor = server._session_actor()
    assert isinstance(actor, ChunkRunner) and actor.model is server.policy  # no copy of the network
    obs = np.zeros(OBS + GOAL, np.float32)
    with PolicyClient(server.url, timeout=20) as a, PolicyClient(server.url, timeout=20) as b:
        for _ in range(3):
            a.act(obs)
        b.act(obs + 0.5)
        assert server.connections >= 2


def test_connections_beyond_the_cap_are_refused_with_1013():
    with PolicyServer(tiny_policy(), port=0, max_connections=1) as srv:
        with PolicyClient(srv.url, timeout=20) as first:
            with connect(srv.url, open_timeout=20) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=20)
                assert closed.value.rcvd.code == 1013
            assert first.health()["status"] == "ok"
        deadline = time.monotonic() + 10
        while srv.connections and time.monotonic() < deadline:  # the server notices the close
            time.sleep(0.01)
        with PolicyClient(srv.url, timeout=20) as again:  # the slot is free once the first client left
            assert again.health()["status"] == "ok"


def test_a_token_server_refuses_requests_without_it_and_warns_on_open_addresses():
    with PolicyServer(tiny_policy(), port=0, token="s3cret") as srv:
        with connect(srv.url, open_timeout=20) as ws:
            for header in ({"op": "health"}, {"op": "health", "token": "guess"}):
                reply = _raw_call(ws, encode(header))
                assert reply["ok"] is False and "unauthorized" in reply["error"]
        with PolicyClient(srv.url, timeout=20, token="s3cret") as client:
            assert client.health()["status"] == "ok"
    with pytest.warns(UserWarning, match="serving on 0.0.0.0 without a token"):
        PolicyServer(tiny_policy(), host="0.0.0.0", port=0)
    with pytest.raises(ValueError, match="token must be a non-empty string"):
        PolicyServer(tiny_policy(), token="")


def test_requests_of_a_client_that_left_are_not_computed():
    """A client pipelines 20 slow requests and disconnects: the server computes at most the one in flight."""
    policy = tiny_policy()
    calls = []
    slow = policy.predict_chunk

    def counted(hist, **kwargs):
        calls.append(time.monotonic())
        time.sleep(0.1)
        return slow(hist, **kwargs)

    policy.predict_chunk = counted
    hist = np.zeros((1, TO, OBS + GOAL), np.float32)
    with PolicyServer(policy, port=0) as srv:
        ws = connect(srv.url, open_timeout=20)
        for i in range(20):
            ws.send(encode({"op": "predict_chunk", "id": i}, {"obs_history": hist}))
        time.sleep(0.05)
        ws.close()
        deadline = time.monotonic() + 10
        while srv.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        assert len(calls) <= 2, f"{len(calls)} abandoned requests were computed"
        with PolicyClient(srv.url, timeout=20) as client:  # the next client is served at once
            t0 = time.monotonic()
            client.predict_chunk(hist)
            assert time.monotonic() - t0 < 1.0
