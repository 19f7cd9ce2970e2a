"""The process a Client belongs to, and what its copy in a forked child may do: nothing but let go.

A Client is its starting process's: the plugin, its process group, its socket folder and its connection,
which the parent goes on using after a fork. The child's copy is refused (start(), dispense()) and its
kill()/close() only mark it ended.
"""

from __future__ import annotations

import os
from abc import abstractmethod

from plugbay.core.host.live import LIVE
from plugbay.core.host.parts import ClientParts
from plugbay.errors import ClientStateError


class ForkOwner(ClientParts):
    """Client's part: the process that first started or used it (``_pid``), and its forked children's copies."""

    _pid: int | None  # the process that began to start it: its plugin is that process's alone
    _killed: bool

    @abstractmethod
    def kill(self) -> None: ...  # a Client's: LIVE holds what its exit cleanup can kill and close

    @abstractmethod
    def close(self) -> None: ...

    def _claim(self) -> None:
        """Note this process as the Client's before its lock is taken (start(), dispense()): a fork while
        another thread holds the lock leaves the child a copy held for ever, whose use is refused here."""
        pid = os.getpid()
        if self._pid is None:
            self._pid = pid
        elif self._pid != pid and self._forked_away():
            raise ClientStateError(f"the client of plugin {self.name!r} belongs to process {self._pid}, which"
                                   " started it before this process forked; make a new Client in this process")

    def _forked_away(self) -> bool:
        """True in a forked child of the host that started this Client, which then only lets go of its copy.

        The plugin, its process group, its socket folder and its connection are the parent's, which
        goes on using them: no signal, no Shutdown, no folder removed, nothing grpc does (grpcio's
        state is its parent's there too). Nor a wait for the I/O loop's readers, which the fork left
        behind (each kill() waited out their timeouts).
        """
        if self._pid is None or self._pid == os.getpid():
            return False
        self._killed = True  # a Client starts once, in any process
        LIVE.discard(self)
        return True
