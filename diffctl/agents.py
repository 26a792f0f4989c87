"""``diffctl.load`` and the agent registry (kept here for the public import path; see ``diffctl.core``)."""

from diffctl.core.registry import AGENT_CLASSES, agent_class, load, register_agent

__all__ = ["AGENT_CLASSES", "agent_class", "load", "register_agent"]
