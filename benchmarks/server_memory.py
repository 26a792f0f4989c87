"""Resident memory of ``diffctl serve`` with many ``act`` sessions: before, with N sessions open, after.

python benchmarks/server_memory.py runs/quickstart/train/checkpoint --sessions 200
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def rss_mb() -> float:
    """This process's resident set size in MB (Linux ``/proc``)."""
    with open("/proc/self/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--sessions", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)

    import diffctl as dc
    from diffctl.deploy.client import PolicyClient
    from diffctl.deploy.server import PolicyServer

    agent = dc.load(args.checkpoint)
    width = agent.obs_dim + getattr(agent, "goal_dim", 0)
    with PolicyServer(agent, port=0, max_connections=args.sessions + 1) as server:
        before = rss_mb()
        clients = [PolicyClient(server.url, timeout=30) for _ in range(args.sessions)]
        for client in clients:
            client.act(np.zeros(width, np.float32))
        during = rss_mb()
        for client in clients:
            client.close()
        time.sleep(1.0)
        after = rss_mb()
    sessions = f"{during:.0f} MB with {args.sessions} sessions"
    print(f"RSS {before:.0f} MB, {sessions}, {after:.0f} MB after they closed")


if __name__ == "__main__":
    main()
