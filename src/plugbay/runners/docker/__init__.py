"""Plugins in Docker containers: DockerRunner, the session sweep, the socket folder's mount point.

Imports: plugbay.errors, core.protocol, core.transport and plugbay.runners (base, session).
"""

from plugbay.runners.docker.engine import CONTAINER_SOCKET_DIR
from plugbay.runners.docker.sweep import sweep, sweep_images, sweep_networks
from plugbay.runners.docker.options import TRANSPORTS
from plugbay.runners.docker.runner import DockerRunner

__all__ = ["CONTAINER_SOCKET_DIR", "TRANSPORTS", "DockerRunner", "sweep", "sweep_images", "sweep_networks"]
