"""Deployment: a fixed-rate control loop over asynchronous chunk inference, a simulated robot, a policy
server and client, and network export."""

from diffctl.deploy.latency import LatencyTracker
from diffctl.deploy.loop import ChunkInference, ControlLoop, LoopConfig, LoopResult
from diffctl.deploy.scheduling import ActionSchedule, TimedChunk, shape_action

__all__ = [
    "ActionSchedule",
    "ChunkInference",
    "ControlLoop",
    "LatencyTracker",
    "LoopConfig",
    "LoopResult",
    "TimedChunk",
    "shape_action",
]
