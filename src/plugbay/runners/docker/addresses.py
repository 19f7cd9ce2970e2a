"""Address mapping for the Docker runner, between what a plugin in a container announces and what the host dials.

unix: the socket folder is bind-mounted, so a socket path maps between the
container's CONTAINER_SOCKET_DIR and the host's folder. tcp: only the
published container port maps, to its 127.0.0.1 port; the container's own
address is never dialled.
"""

from __future__ import annotations

from plugbay.errors import AnnouncedUnreachableError, RunnerError
from plugbay.runners.docker.checks import socket_on_host
from plugbay.runners.docker.engine import CONTAINER_SOCKET_DIR
from plugbay.runners.docker.sockethandles import SocketHandles


def container_to_host(transport: str, network: str, address: str, *, host_socket_dir: str | None,
                      container_id: str, container_port: int, host_port: int | None,
                      handles: SocketHandles) -> tuple[str, str]:
    """The host-dialable address of one the plugin announced; RunnerError when the host cannot reach it.
    A unix socket is dialled through a handle on it (``/proc/self/fd/N``, see sockethandles)."""
    if transport == "unix":
        if network == "unix" and host_socket_dir:
            return "unix", socket_on_host(address, host_socket_dir, container_id, handles)
        raise (AnnouncedUnreachableError if network != "unix" else RunnerError)(
            f"the plugin in container {container_id[:12]} announced {network}:{address}, which the host cannot"
            f" reach: with the unix transport it must put its socket in {CONTAINER_SOCKET_DIR}"
            " (PLUGIN_UNIX_SOCKET_DIR / TMPDIR). Use transport='tcp' for plugins that only listen on TCP."
        )
    if network == "tcp" and host_port is not None:
        port = address.rsplit(":", 1)[-1]
        if port == str(container_port):
            return "tcp", f"127.0.0.1:{host_port}"
    # no published port (host_port None): the container may have stopped before its port was read, and its
    # exit is the better answer; any other miss is the line's own
    raise (AnnouncedUnreachableError if network != "tcp" or host_port is not None else RunnerError)(
        f"the plugin in container {container_id[:12]} announced {network}:{address}, but only container port"
        f" {container_port} is published; make the plugin honour PLUGBAY_LISTEN"
        " (plugbay's serve() does) or set container_port= to the port it listens on."
    )


def host_to_container(transport: str, network: str, address: str, host_socket_dir: str | None,
                      attached: bool = False) -> tuple[str, str]:
    """The in-container path of a host listener in the socket folder; RunnerError for anything else.
    ``attached``: the host reattached to the container (a PluginContainer's Client does), so the
    multiplexed broker, which a reattach cannot use, is no way out to name."""
    if transport == "unix" and network == "unix" and host_socket_dir and (
            address.startswith(host_socket_dir + "/")):
        return "unix", CONTAINER_SOCKET_DIR + address[len(host_socket_dir):]
    if transport == "unix" and host_socket_dir:
        where = f"the unix transport with the listener inside the socket folder {host_socket_dir}"
    elif attached:  # the transport is the container's, fixed when it was started
        where = (f"a way back to the host, which the {transport} transport this container was started with"
                 " does not give: start it with transport='unix' (a host folder both sides put their sockets in;"
                 " PluginContainer(transport='unix') too) and reattach to that one")
    else:  # a published port: the plugin has no way back to a listener of the host's
        where = (f"a way back to the host, which the {transport} transport does not give: use the unix"
                 " transport (transport='unix': a host folder both sides put their sockets in)")
    if attached:
        raise RunnerError(
            f"a plugin in a container cannot reach host address {network}:{address}; brokered callbacks need"
            f" {where} (a reattached Client cannot use ClientConfig(multiplex_broker=True))")
    raise RunnerError(
        f"a plugin in a container cannot reach host address {network}:{address}; brokered callbacks need"
        f" {where}, or ClientConfig(multiplex_broker=True) with a plugin that can multiplex (every brokered"
        " connection then goes through the host's one connection to the plugin)"
    )
