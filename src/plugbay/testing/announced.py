"""PluginContainer's check, at start(), of the address the plugin's handshake announced.

The handshake line is the container's word: an address the host would refuse to dial (a socket path
outside the mounted socket folder such as ``/etc/passwd``, a TCP address where the unix transport has no
published port) failed only at the first dispense()/get_client(), and again at each one after, with the
container left running. start() now refuses it with the same typed error, through the same check the
reattaching Client's DockerRunner makes (plugbay.runners.docker.addresses.container_to_host). A socket
in the folder that is not there yet is left to that first get_client(), as before: it may be made later.
"""

from __future__ import annotations

from plugbay.core.host.reattach import ReattachConfig
from plugbay.errors import MalformedHandshakeError
from plugbay.runners.docker.addresses import container_to_host
from plugbay.runners.docker.sockethandles import NotThereYet, SocketHandles


def check_announced(config: ReattachConfig) -> None:
    """Raise what a Client reattaching with ``config`` would (MalformedHandshakeError, RunnerError) when the
    host cannot, or must not, dial the address its handshake announced; nothing is dialled."""
    runner = config.runner
    handles = SocketHandles()  # a unix socket's handle is opened to check it is one: let go of at once
    try:
        container_to_host(str(runner["transport"]), config.handshake.network, config.handshake.address,
                          host_socket_dir=runner.get("host_socket_dir"), container_id=str(runner["id"]),
                          container_port=int(runner["container_port"]), host_port=runner.get("host_port"),
                          handles=handles)
    except MalformedHandshakeError as exc:
        # the reason the one open of the path gave, not a second look at the folder: a socket made since
        # then would read as a refused address
        if isinstance(exc.__cause__, NotThereYet):
            return
        raise
    finally:
        handles.close()
