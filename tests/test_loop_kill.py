"""kill() and close() asked from a callback on the shared loop thread never block that loop.

A logging handler on a plugin's log stream (or a ``raw_log_sink``) runs on
``plugbay-io``, the one thread that carries every plugin's pipes, exits, TLS
relays and broker streams. A kill() there used to wait on that same thread for
the plugin's pipes to end (and, holding the Client's lock, could keep a start()
from ever reading its handshake line). These tests run real plugin processes
(the trap KV plugin) and call kill()/close() from such callbacks.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import Client, ClientConfig, ClientStateError, PlugbayError, ReattachConfig, Supervisor  # noqa: E402
from plugbay.core.transport import ioloop  # noqa: E402
from tests import gobuild  # noqa: E402
from tests.race_util import pid_gone  # noqa: E402
from tests.thread_util import plugbay_threads, wait_for  # noqa: E402

TRAP = [sys.executable, str(REPO / "tests" / "plugins" / "trap_kv.py")]
_WAIT = 20.0  # bounded waits only: none of these is a speed assertion


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the KV plugins write kv_<key> files in their cwd


def config(name: str, **kw: object) -> ClientConfig:
    return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=TRAP,
                        name=name, **kw)  # type: ignore[arg-type]


class OnRecord(logging.Handler):
    """Runs ``action`` (once) on the first record whose message starts with ``message``; notes the thread."""

    def __init__(self, message: str, action: Callable[[], None]) -> None:
        super().__init__()
        self.message = message
        self.action = action
        self.thread: str | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage())
        if not record.getMessage().startswith(self.message) or self.done.is_set():
            return
        self.thread = threading.current_thread().name
        try:
            self.action()
        except BaseException as exc:  # handed to the test thread
            self.error = exc
        finally:
            self.done.set()


@pytest.fixture
def handlers() -> Iterator[list[tuple[logging.Logger, logging.Handler]]]:
    added: list[tuple[logging.Logger, logging.Handler]] = []
    yield added
    for logger, handler in added:
        logger.removeHandler(handler)


def attach(added: list[tuple[logging.Logger, logging.Handler]], name: str, handler: OnRecord) -> OnRecord:
    logger = logging.getLogger(f"plugbay.plugin.{name}")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    added.append((logger, handler))
    return handler


def call_during_kill(call: Callable[[], object]) -> None:
    """A call whose log line kills its plugin: it may finish first, or fail typed (the Client is closing)."""
    try:
        call()
    except PlugbayError:
        pass


def loop_probe() -> threading.Event:
    """An event the shared loop sets once it gets to it."""
    ran = threading.Event()
    ioloop.shared().call_soon(ran.set)
    return ran


def test_kill_from_a_log_handler_returns_and_the_loop_keeps_serving_others(
        handlers: list[tuple[logging.Logger, logging.Handler]]) -> None:
    with Client(config("victim")) as victim, Client(config("bystander")) as bystander:
        pid = int(victim.runner.id)
        probe: list[threading.Event] = []

        def kill_victim() -> None:
            victim.kill()
            probe.append(loop_probe())  # runs only once the loop is free again

        on_victim = attach(handlers, "victim", OnRecord("warn line", kill_victim))
        on_bystander = attach(handlers, "bystander", OnRecord("error line", lambda: None))
        kv_victim = victim.dispense(PLUGIN_NAME)
        kv = bystander.dispense(PLUGIN_NAME)
        call_during_kill(lambda: kv_victim.get("__log__"))  # the plugin logs a warning; the handler kills it

        assert on_victim.done.wait(_WAIT), "the victim's warning never reached the handler"
        assert on_victim.error is None
        assert on_victim.thread == "plugbay-io"  # the case under test: a callback on the shared loop
        assert probe and probe[0].wait(_WAIT), "the shared loop stayed blocked after kill() returned"
        assert victim.exited
        with pytest.raises(ClientStateError, match="was killed; make a new Client"):
            victim.dispense(PLUGIN_NAME)

        # The other plugin's calls and log lines still flow through the same loop.
        kv.put("after", b"kill")
        assert kv.get("after") == b"kill"
        assert kv.get("__log__") == b"logged"
        assert on_bystander.done.wait(_WAIT), "the bystander's log lines stopped flowing"

        wait_for(lambda: pid_gone(pid), "the killed plugin's process to be reaped", _WAIT)
        victim.kill()  # off the loop: waits for the kill the handler started, then it is a no-op
        assert not [t for t in plugbay_threads() if t.startswith("plugbay-kill-")]
    assert bystander.exited


def test_kill_asked_while_start_waits_for_the_handshake(
        handlers: list[tuple[logging.Logger, logging.Handler]]) -> None:
    # The plugin logs a line before its handshake: the handler's kill() runs on the loop while
    # start() holds the Client and waits on that loop for the handshake line. Waiting there for
    # the Client would have starved start() until start_timeout (a HandshakeTimeoutError); the
    # handed-off kill() ends the plugin instead, and start() says it was killed.
    client = Client(config("early", env={"TRAP_SAY_FIRST": "[WARN] early bird"}, start_timeout=_WAIT))
    on_early = attach(handlers, "early", OnRecord("[WARN] early bird", client.kill))
    try:
        with pytest.raises(ClientStateError, match="was killed while it started the plugin"):
            client.start()
        assert on_early.done.wait(_WAIT)
        assert on_early.thread == "plugbay-io" and on_early.error is None
        pid = int(client.runner.id)
        wait_for(lambda: pid_gone(pid), "the plugin killed from its own log line to be reaped", _WAIT)
    finally:
        client.kill()
    assert client.exited
    assert not [t for t in plugbay_threads() if t.startswith("plugbay-kill-")]


def test_close_from_a_loop_callback(handlers: list[tuple[logging.Logger, logging.Handler]]) -> None:
    with Client(config("owner")) as owner:
        kv = owner.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        attached = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                                       reattach=ReattachConfig.from_json(owner.reattach_config().to_json())))
        assert attached.dispense(PLUGIN_NAME).get("k") == b"v"

        outcome: dict[str, BaseException | None] = {}
        asked = threading.Event()

        def close_both() -> None:
            for key, client in (("attached", attached), ("owner", owner)):
                try:
                    client.close()
                    outcome[key] = None
                except BaseException as exc:
                    outcome[key] = exc
            asked.set()

        ioloop.shared().call_soon(close_both)
        assert asked.wait(_WAIT)
        # A started plugin's Client refuses close() on the loop too, at once, with the usual error.
        assert isinstance(outcome["owner"], ClientStateError)
        assert "stop it with kill()" in str(outcome["owner"])
        assert outcome["attached"] is None
        assert loop_probe().wait(_WAIT)
        attached.close()  # waits for the close the callback started
        assert attached.exited
        with pytest.raises(ClientStateError):
            attached.dispense(PLUGIN_NAME)
        assert kv.get("k") == b"v"  # the plugin itself lives on: close() only disconnected
    assert not [t for t in plugbay_threads() if t.startswith("plugbay-close-")]


def test_kill_from_a_stdio_sink() -> None:
    # GRPCStdio sinks run on the plugin's own reader thread, not the loop: kill() runs there in
    # place (it used to fail joining that very thread).
    killed = threading.Event()
    errors: list[BaseException] = []
    holder: list[Client] = []

    def sink(data: bytes) -> None:
        if b"to-stdout" in data and not killed.is_set():
            try:
                holder[0].kill()
            except BaseException as exc:
                errors.append(exc)
            killed.set()

    with Client(config("printer", stdout_sink=sink)) as client:
        holder.append(client)
        pid = int(client.runner.id)
        kv = client.dispense(PLUGIN_NAME)
        call_during_kill(lambda: kv.get("__print__"))
        assert killed.wait(_WAIT), "the plugin's stdout never reached the sink"
        assert errors == []
        assert client.exited
        wait_for(lambda: pid_gone(pid), "the plugin killed from its stdout sink to be reaped", _WAIT)


@pytest.mark.go
@pytest.mark.skipif(gobuild.go_missing_reason() is not None, reason=gobuild.go_missing_reason() or "")
def test_kill_of_a_go_plugin_over_the_tls_relay_from_its_log_handler(
        handlers: list[tuple[logging.Logger, logging.Handler]]) -> None:
    # A go-plugin 1.0.1 plugin with AutoMTLS: its calls cross the OpenSSL relay and its broker stream
    # runs on grpc.aio, both on the loop the handler runs on. The bystander is relayed there too.
    binary = str(gobuild.build_go("kv_plugin"))

    def go(name: str) -> ClientConfig:
        return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=[binary],
                            name=name, auto_mtls=True)

    with Client(go("govictim")) as victim, Client(go("gobystander")) as bystander:
        assert victim.connection_mode == bystander.connection_mode == "relay-tls"
        pid = int(victim.runner.id)
        on_victim = attach(handlers, "govictim", OnRecord("put", victim.kill))
        kv_victim = victim.dispense(PLUGIN_NAME)  # opens its broker stream (a go-plugin plugin's Send waits for it)
        kv = bystander.dispense(PLUGIN_NAME)
        call_during_kill(lambda: kv_victim.put("trigger", b"x"))  # it logs "put ..." at debug: the handler kills it

        assert on_victim.done.wait(_WAIT), "the Go plugin's put line never reached the handler"
        assert on_victim.thread == "plugbay-io" and on_victim.error is None
        assert loop_probe().wait(_WAIT), "the shared loop stayed blocked after kill() returned"
        kv.put("still", b"here")  # across the same loop's relay
        assert kv.get("still") == b"here"
        wait_for(lambda: pid_gone(pid), "the killed Go plugin's process to be reaped", _WAIT)
        victim.kill()
        assert not [t for t in plugbay_threads() if t.startswith("plugbay-kill-")]


def test_supervisor_stop_from_a_log_handler(handlers: list[tuple[logging.Logger, logging.Handler]]) -> None:
    # Supervisor.stop() joins its monitor thread and kills the Client: on the loop it hands off too.
    with Supervisor(lambda: config("supervised"), health_interval=None) as sup:
        pid = int(sup.client.runner.id)
        on_log = attach(handlers, "supervised", OnRecord("warn line", sup.stop))
        call_during_kill(lambda: sup.dispense(PLUGIN_NAME).get("__log__"))
        assert on_log.done.wait(_WAIT)
        assert on_log.thread == "plugbay-io" and on_log.error is None
        assert loop_probe().wait(_WAIT), "the shared loop stayed blocked after stop() returned"
        wait_for(lambda: sup.state == "stopped", "the supervisor to stop", _WAIT)
        wait_for(lambda: pid_gone(pid), "the supervised plugin's process to be reaped", _WAIT)
        assert sup.restarts == 0  # stopped, not restarted
    assert not [t for t in plugbay_threads() if t.startswith("plugbay-stop-")]


def test_close_asked_inside_start_is_refused(handlers: list[tuple[logging.Logger, logging.Handler]]) -> None:
    # A handler of plugbay.client runs on the thread in start(): a close() there used to
    # disconnect the Client under that start() (its socket folder removed), so start() waited
    # for start_timeout and blamed the plugin, or, connected anyway, left the plugin running
    # with a Client that counted as closed. It is refused now, and start() goes on.
    client = Client(config("inside", start_timeout=_WAIT))
    on_line = OnRecord("plugin inside handshake:", client.close)
    logger = logging.getLogger("plugbay.client")
    handlers.append((logger, on_line))
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(on_line)
    try:
        client.start()
        assert on_line.done.is_set() and on_line.thread == threading.current_thread().name
        assert isinstance(on_line.error, ClientStateError), on_line.error
        assert "Client.close() was asked inside start() of plugin 'inside'" in str(on_line.error)
        assert "once start() has returned" in str(on_line.error)
        pid = int(client.runner.id)
        assert not client.exited and client.dispense(PLUGIN_NAME) is not None
    finally:
        logger.setLevel(level)
        client.kill()
    wait_for(lambda: pid_gone(pid), "the plugin to end", _WAIT)
