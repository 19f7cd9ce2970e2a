"""A Kubernetes API stand-in for tests: really runs each pod's container (see server.py)."""

from .server import TOKEN, StandIn

__all__ = ["StandIn", "TOKEN"]
