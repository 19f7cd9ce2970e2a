"""ExitNotice, the Client's base above ClientParts: how the Client learns that its plugin exited
(the exit watch's callback, and the probe a broken call asks) and what it does then."""

from __future__ import annotations

import logging

from plugbay.core.host.live import stop_elsewhere
from plugbay.core.host.parts import STDIO_FINISH, STDIO_QUIET, ClientParts
from plugbay.core.host.stdio import StdioReader
from plugbay.core.host.stop import describe_exit
from plugbay.core.protocol.exits import exit_said

_log = logging.getLogger("plugbay.client")


class ExitNotice(ClientParts):
    """The plugin's exit as the Client hears of it."""

    _exit_reason: str | None = None  # _reason_of()'s answer, once asked

    def _on_exit(self, code: int) -> None:
        # heard before the gate is asked: a start() that opens it after a no here reads this next (Connecting)
        self._exit_heard = code
        if self._stop.is_set() or not self._exit_gate.tell():
            self._exit_code = code
            return
        self._learned_exit(code, refuse=True)
        how = self._exit_words(code)
        _log.warning("plugin %s %s", self.name, how)
        broker = self._broker
        if broker is not None:  # its stream has a connection of its own
            broker.end_stream(f"plugin {self.name!r} {how}")
        channel = self._channel
        stdio = self._stdio
        if isinstance(stdio, StdioReader) and stdio.keeps_output:
            # What the plugin wrote last may be received but not yet handed to the sinks: read its stream
            # (on the channel) to its end as kill() does, bounded, then close the channel. Off this thread,
            # which may be the shared loop's; a kill() meanwhile waits for the read (StdioReader.finish).
            def read_to_end() -> None:
                stdio.finish(STDIO_FINISH, STDIO_QUIET)
                if channel is not None:
                    channel.close_current()

            stop_elsewhere(f"plugbay-stdio-end-{self.name}", read_to_end)
            return
        # Fail calls still in flight now, whatever the transport (a published
        # port may keep a dead plugin's connection open).
        # Through the ManagedChannel, so no call object is built on the closed channel.
        if channel is not None:
            channel.close_current()
        if stdio is not None:  # nothing to keep; an AioStdio's stream shares the broker's connection
            stdio.cancel()

    def _learned_exit(self, code: int, refuse: bool) -> None:
        """Publish the exit code; ``refuse``: mark the channel refusing first, so a call made once
        ``exited`` reads True is never sent (the mark takes no lock: the probe runs under the channel's)."""
        channel = self._channel
        if refuse and channel is not None:
            channel.refuse_calls()
        self._exit_code = code

    def _exit_probe(self, wait: float) -> str | None:
        """Why the plugin ended, or None while it runs; ``wait`` > 0: the connection just broke, and the caller
        can wait that long (what is left of its call's deadline) for the exit to show, which takes the runner
        up to its exit_notice_time: the probe waits no longer than either."""
        code = self._exit_code
        if code is None and self._runner is not None:
            code = self._runner.wait(min(wait, self._runner.exit_notice_time) if wait > 0 else 0.0)
        if code is None:
            return None
        # learned here before the exit watch: refused as the watch would
        self._learned_exit(code, refuse=self._exit_code is None and self._exit_gate.is_open)
        self._drain_logs()
        return describe_exit(self._exit_words(code), self._logs.last(5), self._reason_of(code))

    def _exit_words(self, code: int) -> str:
        """How the plugin ended, as its runner can tell (a reattached process's status is unknown)."""
        runner = self._runner
        return runner.exit_words(code) if runner is not None else exit_said(code)

    def _reason_of(self, code: int) -> str:
        """The runner's exit_reason(), asked once (a Docker runner asks the engine): every later call says it too."""
        if self._exit_reason is None:
            reason = ""
            if self._runner is not None:
                try:
                    reason = str(self._runner.exit_reason(code))
                except Exception as exc:  # only the message loses it
                    _log.debug("plugin %s: the runner could not say why it exited: %s", self.name, exc)
            self._exit_reason = reason
        return self._exit_reason
