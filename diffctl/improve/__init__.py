"""Making a trained policy better without more data: inference-time steering by a verifier."""

from diffctl.improve.steering import SteeredPolicy, SteeringConfig
from diffctl.improve.verifiers import FunctionVerifier, QVerifier, Verifier, WorldModelVerifier

__all__ = [
    "FunctionVerifier",
    "QVerifier",
    "SteeredPolicy",
    "SteeringConfig",
    "Verifier",
    "WorldModelVerifier",
]
