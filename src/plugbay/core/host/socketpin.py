"""Proving who listens on a plugin's unix socket through a handle on its inode, and dialing that handle.

A plugin may rename another server's socket (or a symlink to it) onto its path once a proof by name is made,
and gRPC dials (and redials) a path by name: so the socket is opened O_PATH, the runner checks the listener
through that handle, and the host dials ``unix:/proc/self/fd/N`` for as long as it holds it. The Client
(connecting.py) and the command line's reattach (cli/targets.py) both go through prove_listener(), and so does
the Client's broker for an address its plugin announces later on the broker stream (a ConnInfo: BrokeredProof).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from plugbay.core.host.launch import file_kind, not_a_socket
from plugbay.core.protocol.handshake import HandshakeInfo
from plugbay.errors import BrokerClosedError, MalformedHandshakeError, UnprovenAddressError, clip, printable
from plugbay.runners.base import ASK_A_CONNECTION, NOT_LISTENING, REATTACH_OPT_OUT, AttachedRunner

if TYPE_CHECKING:
    from plugbay.core.broker.brokertransport import ProvenAddress


@dataclass(frozen=True)
class Proven:
    """The address to dial; ``handle``: the O_PATH descriptor it names, when one was taken (the caller closes
    it once nothing dials it any more). ``on_connection`` (only where prove_listener() was told not to
    connect): the kernel could not tell who listens on the pinned socket, so the caller proves the connection
    it makes through the handle on itself before a byte goes (runner.unproven_listener(conn=))."""

    address: str
    handle: int | None
    on_connection: bool = False


def prove_listener(runner: AttachedRunner, network: str, address: str, announced: HandshakeInfo, name: str,
                   reattached: bool, brokered: bool = False, connect: bool = True) -> Proven | str:
    """Proven once ``runner`` says the plugin listens on ``address`` (a plugin_to_host() answer), a unix socket
    through a handle on it (unless the runner's unix addresses are handles of its own); else why not
    (NOT_LISTENING while no file or listener is there: the caller may look again). A path that holds another
    kind of file, or that this host may not open, raises (``brokered``: saying the address is a brokered
    server's, a ConnInfo's, not the handshake's). ``connect=False``: no connection is made to ask (one a
    server that serves a single connection, go-plugin's multiplexed one, would end on); where only a
    connection could tell, the pinned handle comes back marked ``on_connection``."""
    if network != "unix" or runner.maps_unix_to_own_handles:  # the runner's word, not the address's
        why = runner.unproven_listener(network, address)
        return Proven(address, None) if why is None else why
    fd = pin_socket(address, announced, name, reattached, brokered)
    if fd is None:
        return NOT_LISTENING  # no file there (yet)
    try:
        handle = f"/proc/self/fd/{fd}"
        # asked with connect= only when set: a runner (or a wrapper of one) of before that keyword still proves
        why = runner.unproven_listener(network, handle) if connect else _without_connecting(runner, network, handle)
    except BaseException:
        os.close(fd)
        raise
    if why == ASK_A_CONNECTION:
        return Proven(handle, fd, on_connection=True)
    if why is not None:
        os.close(fd)
        return why
    return Proven(handle, fd)


def _without_connecting(runner: AttachedRunner, network: str, handle: str) -> str | None:
    """unproven_listener(connect=False); a runner's override of before that keyword is asked on the connection
    (ASK_A_CONNECTION), as it proved every multiplexed connection then."""
    try:
        return runner.unproven_listener(network, handle, connect=False)
    except TypeError as exc:
        if "connect" not in str(exc):
            raise
        return ASK_A_CONNECTION


_REASON_KEPT = 800  # _errormessages.REASON_KEPT, what MalformedHandshakeError keeps of a refusal's reason (host code
# imports errors, not its private message module)


def refusal(name: str, network: str, address: str, why: str,
            opt_out: str | None = "set ClientConfig(trust_announced_address=True)") -> UnprovenAddressError:
    """UnprovenAddressError with ``why`` cut in its middle as far as the whole reason needs to be kept whole: the
    error's own cut (the reason's middle) would take the advice that follows a long ``why``."""
    refused = UnprovenAddressError(name, network, address, why, opt_out)
    over = len(refused.reason) - _REASON_KEPT
    if over <= 0:
        return refused
    # clip() writes "...(N characters cut)..." in place of what it cuts
    return UnprovenAddressError(name, network, address, clip(why, max(len(why) - over - 40, 80)), opt_out)


def pin_socket(path: str, announced: HandshakeInfo, name: str, reattached: bool,
               brokered: bool = False) -> int | None:
    """An O_PATH descriptor of the socket now at ``path``; None while no file is there (the plugin may make
    it yet)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:  # no opt-out reaches it: a dial by name, unproven, would be refused as this open was
        shown = clip(printable(path), 200)  # the plugin's word: a path up to PATH_MAX, any characters
        if exc.errno in (errno.EACCES, errno.EPERM):
            why = f"this host may not open it ({exc.strerror}); run as a user who may open {shown}"
        else:  # a symlink loop, a name too long, an I/O error: no user may open it, nor would a dial
            code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            why = (f"this host cannot open it ({code}: {exc.strerror}); check the path {shown}. Have the plugin"
                   " announce the address its own server listens on")
        raise refusal(name, announced.network, announced.address, why, None) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISSOCK(mode):  # swapped for a file since it was looked at
        os.close(fd)
        if brokered:
            raise MalformedHandshakeError(
                f"{announced.network}|{announced.address}",
                f"plugin {name!r} announced unix address {announced.address!r} for a brokered server (a ConnInfo"
                f" on its broker stream), but that path is {file_kind(mode)}, not a socket, so the host does not"
                " dial it. A brokered server announces the socket it listens on, bound before the id is announced"
                " (go-plugin's Accept, plugbay's accept_and_serve): check the plugin's broker", refused=True)
        raise not_a_socket(name, announced.address, path, reattached, mode)
    return fd


class BrokeredProof:
    """The broker's proof (BrokerTransport.prove) of an address the plugin announced on the broker stream for a
    brokered server of its own (a ConnInfo), made as its handshake address's: that plugin's word, untrusted, and
    a host that dialed it unproven would send a brokered call to /var/run/docker.sock or another user's service.

    The runner says who listens there (the process runner: the plugin it started or a descendant; a reattached
    one: the proven process; Docker and pod runners mapped the address themselves); a unix socket is pinned and
    proven through a handle, which the brokered channel dials until it closes. A ConnInfo comes once its
    server listens (go-plugin's Accept listens before it announces; plugbay's brokered servers too), so nothing
    there yet is refused, not waited for: that server stopped since (nothing to trust; the opt-out is not offered).
    A plugin that exited since it announced the address is told first, as a dial to a dead plugin's broker is
    (BrokerClosedError: a Supervisor's broker says "call again"), not by what is left at its address."""

    def __init__(self, runner: AttachedRunner, handshake: HandshakeInfo, name: str, reattached: bool = False) -> None:
        """``reattached``: the runner reattached to a plugin (whose every address is proven, whatever
        ClientConfig(trust_announced_address=) says): its refusals name another way out."""
        self._runner = runner
        self._handshake = handshake
        self._name = name
        self._reattached = reattached
        self._opt_out = REATTACH_OPT_OUT if reattached else None

    def __call__(self, announced: tuple[str, str], network: str, address: str) -> ProvenAddress:
        """The address to dial (a handle on a unix socket) and what closes that handle once no channel dials
        it; UnprovenAddressError (saying who listens there, and the opt-out) when the runner cannot prove it,
        another MalformedHandshakeError when nothing listens there (any more), BrokerClosedError once the plugin
        has exited."""
        said = self._handshake.with_address(*announced)  # what the errors name: the ConnInfo's own words
        try:
            found = prove_listener(self._runner, network, address, said, self._name, self._reattached,
                                   brokered=True)
        except MalformedHandshakeError:
            self._raise_if_exited(announced)
            raise
        if isinstance(found, str):
            self._raise_if_exited(announced)  # an exit says more than what is left at the address
            if found == NOT_LISTENING:
                raise MalformedHandshakeError(
                    "|".join(announced),
                    f"plugin {self._name!r} announced {announced[0]} address {announced[1]!r} for a brokered server,"
                    " but nothing listens there: the plugin's brokered server is no longer listening (it listened"
                    " when the plugin announced it; the plugin stopped serving that id since). Have the plugin"
                    " serve it again and dial the id it then announces", refused=True)
            if self._opt_out is not None:
                raise refusal(self._name, *announced, found, self._opt_out)
            raise refusal(self._name, *announced, found)
        handle = found.handle
        return found.address, (None if handle is None else lambda: os.close(handle))

    def _raise_if_exited(self, announced: tuple[str, str]) -> None:
        """BrokerClosedError once the plugin has exited: its brokered servers went with it."""
        code = self._runner.wait(0)
        if code is not None:
            raise BrokerClosedError(
                f"plugin {self._name!r} {self._runner.exit_words(code)} after it announced {announced[0]} address"
                f" {announced[1]!r} for a brokered server, which went with it; nothing was dialed. Restart the plugin"
                " (new Client) to broker again") from None
