"""A Kubernetes API stand-in for tests: really runs each pod's container (see server.py)."""

from .apiserver import TOKEN
from .server import StandIn

__all__ = ["StandIn", "TOKEN"]
