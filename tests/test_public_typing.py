"""What a user's type checker sees of the public API, in strict mode.

The package ships py.typed. Its top-level names are imported lazily at run time
(plugbay/__init__.py's export table), so they must also be explicit re-exports for
mypy --strict (no implicit re-export), or every ``from plugbay import Client`` in a
strictly checked program is an error. A ``with`` block gives the class it was opened
on (a RemoteClient, a subclass), and the documented examples type-check.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import plugbay
import plugbay.network
from tests.kv_user_mypy import mypy_kv_user

PROGRAM = '''
from plugbay import {names}
from plugbay.network import {network}

def start(config: ClientConfig) -> Client:
    return Client(config)

remote: RemoteClient = connect("static:///127.0.0.1:1", handshake=HandshakeConfig(1, "K", "V"))
'''


def test_every_public_name_type_checks_under_mypy_strict(tmp_path: Path) -> None:
    names = sorted(n for n in plugbay.__all__ if n != "__version__")
    network = sorted(plugbay.network._NAMES)
    (tmp_path / "user.py").write_text(PROGRAM.format(names=", ".join(names), network=", ".join(network)))
    (tmp_path / "mypy.ini").write_text("[mypy]\nstrict = True\n")
    out = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), "user.py"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success" in out.stdout


# Each `with` must give what it was opened on: a RemoteClient's metrics(), a subclass's own methods
# (__enter__ said Client, AsyncClient, Supervisor...).
CONTEXTS = '''
from typing import Any

from plugbay import (AsyncClient, AsyncRemoteClient, AsyncSupervisor, Client, ClientConfig, HandshakeConfig,
                     HealthWatcher, RemoteClient, RemoteConfig, Supervisor)
from plugbay.network import connect
from plugbay.testing import PluginContainer

HANDSHAKE = HandshakeConfig(1, "K", "V")


class MyClient(Client):
    def mine(self) -> int: return 1


class MyAsyncClient(AsyncClient):
    def mine(self) -> int: return 1


class MySupervisor(Supervisor):
    def mine(self) -> int: return 1


class MyAsyncSupervisor(AsyncSupervisor):
    def mine(self) -> int: return 1


class MyWatcher(HealthWatcher):
    def mine(self) -> int: return 1


class MyContainer(PluginContainer):
    def mine(self) -> int: return 1


def sync(config: ClientConfig, remote: RemoteConfig) -> list[Any]:
    out: list[Any] = []
    with RemoteClient(remote) as client:
        out.append(client.metrics())
    with connect("static:///127.0.0.1:1", handshake=HANDSHAKE) as connected:
        out.append(connected.metrics())
    with MyClient(config) as mine, MySupervisor(config) as sup, MyWatcher(mine.channel) as watcher:
        out += [mine.mine(), sup.mine(), watcher.mine(), watcher.start().mine()]
    with MyContainer("plugbay-kv:latest", HANDSHAKE) as container:
        out += [container.mine(), container.start().mine()]
    return out


async def asynchronous(config: ClientConfig, remote: RemoteConfig) -> list[Any]:
    async with AsyncRemoteClient(remote) as client:
        metrics = client.metrics()
    async with MyAsyncClient(config) as mine, MyAsyncSupervisor(config) as sup:
        return [metrics, mine.mine(), sup.mine()]
'''


def _mypy(tmp_path: Path, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    # the examples' own modules are the user's, not under test: seen as Any
    (tmp_path / "mypy.ini").write_text("[mypy]\nstrict = True\n[mypy-kv_plugin_def,kvproto.*]\nfollow_imports = skip\n"
                                       "ignore_missing_imports = True\n")
    # the plugbay under test (an installed one may be another checkout)
    env = {**os.environ, "MYPYPATH": str(Path(plugbay.__file__).resolve().parent.parent)}
    return subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), *files],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)


def test_with_gives_the_class_it_was_opened_on_and_the_docs_examples_type_check(tmp_path: Path) -> None:
    docs = Path(__file__).resolve().parent.parent / "docs" / "resilience.md"
    section = docs.read_text().split("### Supervised plugins", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert example is not None
    out = _mypy(tmp_path, {"contexts.py": CONTEXTS, "supervised_example.py": example.group(1)})
    assert out.returncode == 0, out.stdout + out.stderr


# connect()'s keyword options are typed (RemoteOptions): a misspelled or wrongly typed one is caught as
# on RemoteConfig itself, and a wrapper passing on **kwargs: Any still type-checks. They were **Any.
CONNECT = '''
from typing import Any, Unpack

from plugbay import HandshakeConfig, RemoteClient
from plugbay.network import RemoteOptions, connect

H = HandshakeConfig(1, "K", "V")
connect("static:///127.0.0.1:1", handshake=H, insecur=True)
connect("static:///127.0.0.1:1", handshake=H, start_timeout="5")


def fine(**options: Any) -> RemoteClient:
    return connect("static:///127.0.0.1:1", handshake=H, insecure=True, call_timeout=None, **options)


def mine(**options: Unpack[RemoteOptions]) -> RemoteClient:
    return connect("static:///127.0.0.1:1", handshake=H, **options)
'''


def test_connect_options_are_typed(tmp_path: Path) -> None:
    out = _mypy(tmp_path, {"connecting.py": CONNECT})
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert errors == [
        'connecting.py:8: error: Unexpected keyword argument "insecur" for "connect"; did you mean "insecure"?'
        '  [call-arg]',
        'connecting.py:9: error: Argument "start_timeout" to "connect" has incompatible type "str"; expected'
        ' "float"  [arg-type]',
    ], out.stdout + out.stderr


# The fixtures' keyword options are typed (ClientOptions, ClientConfig's fields they take): a misspelled or
# wrongly typed one is caught, as connect()'s are, and so is one they set themselves. They were **Any.
FIXTURES = '''
from plugbay import HandshakeConfig
from plugbay.testing import StartPluginContainer, StartPluginProcess

H = HandshakeConfig(1, "K", "V")


def test_options(plugin_process: StartPluginProcess, plugin_container: StartPluginContainer) -> None:
    plugin_process(["./kv"], H, call_timeout=5.0, env={"A": "1"}, name="kv", skip_host_env=True)
    plugin_container("kv:latest", H, runner={"transport": "tcp"}, kill_grace=1.0, auto_mtls=True)
    plugin_process(["./kv"], H, start_timout=5)
    plugin_process(["./kv"], H, call_timeout="5")
    plugin_container("kv:latest", H, cmd=["./kv"])
'''


def test_fixture_options_are_typed(tmp_path: Path) -> None:
    out = _mypy(tmp_path, {"fixtures.py": FIXTURES})
    errors = [line.split(":", 1)[1] for line in out.stdout.splitlines() if ": error: " in line]
    assert errors == [
        '11: error: Unexpected keyword argument "start_timout" for "__call__" of "StartPluginProcess";'
        ' did you mean "start_timeout"?  [call-arg]',
        '12: error: Argument "call_timeout" to "__call__" of "StartPluginProcess" has incompatible type "str";'
        ' expected "float | None"  [arg-type]',
        '13: error: Unexpected keyword argument "cmd" for "__call__" of "StartPluginContainer"  [call-arg]',
    ], out.stdout + out.stderr


def test_a_typed_user_program_type_checks(tmp_path: Path) -> None:
    """tests/typed_user_program.py, under mypy --strict as its user would run it: the call errors' code(),
    details() and sent (a CircuitOpenError's retry_in), client.channel as the ManagedChannel it is, the
    fixtures' types and the KV example's typed stubs. Each was an error or Any. And a state compared, changed
    by a call and compared again (a false "non-overlapping" error while state was a Literal, and the rest of
    the function unchecked); every name it needs imported from plugbay and plugbay.testing."""
    out = mypy_kv_user(tmp_path, str(Path(__file__).resolve().parent / "typed_user_program.py"))
    assert out.returncode == 0, out.stdout + out.stderr


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    return found.union(*(_subclasses(sub) for sub in found))


def test_the_call_errors_answer_what_their_types_say() -> None:
    """The classes typed with code() and details() (and sent) are raised only as call errors that have them:
    every subclass in plugbay answers them, so the types are no promise that some instance breaks."""
    import importlib
    import pkgutil

    for module in pkgutil.walk_packages(plugbay.__path__, "plugbay."):
        if "._proto" not in module.name and not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    from plugbay import errors
    from plugbay.core.host.callerrors import _TranslatedRpcError
    from plugbay.core.resilience.circuit import CircuitOpen

    sent = [errors.PluginDiedError, errors.CallTimeoutError, errors.PluginUnavailableError]
    for base in [*sent, errors.CircuitOpenError, errors.NoEndpointsError]:
        raised = _subclasses(base)
        assert raised, base
        for cls in raised:
            if cls.__module__ == "plugbay.errors":  # a narrower exported class (BrokerTLSError): never raised bare
                continue
            assert callable(getattr(cls, "code", None)) and callable(getattr(cls, "details", None)), cls
            assert base not in sent or issubclass(cls, _TranslatedRpcError), cls  # which sets sent
    assert _TranslatedRpcError("refused", None, sent=False).sent is False
    circuit_open = CircuitOpen("open", "kv", 2.5, "UNAVAILABLE")
    assert (circuit_open.retry_in, circuit_open.last_failure, circuit_open.name) == (2.5, "UNAVAILABLE", "kv")


def test_network_star_import_gives_its_public_names() -> None:
    namespace: dict[str, object] = {}
    exec("from plugbay.network import *", namespace)
    assert sorted(plugbay.network.__all__) == sorted(plugbay.network._NAMES)
    assert set(plugbay.network._NAMES) <= set(namespace)


# An event's kind is Literal (a frozen field): a misspelled one in a comparison is caught (mypy --strict's
# strict equality). A Supervisor's and a breaker's state are str: they change under the caller, and a type
# checker narrows a property after `==` for the rest of the function, across the calls that change it. As
# Literals, each `state == X; call; state == Y` below was a "Non-overlapping equality check" and the code
# after it went unchecked (its deliberate error unreported).
STATES = '''
from plugbay import (AsyncSupervisor, CircuitBreaker, CircuitState, EventKind, Supervisor, SupervisorEvent,
                     SupervisorState)


def fine(sup: Supervisor, asup: AsyncSupervisor, breaker: CircuitBreaker, event: SupervisorEvent) -> bool:
    return (sup.state == "running" and asup.state != "failed" and breaker.state != "half_open"
            and event.kind in ("restarted", "gave_up"))


def misspelled(event: SupervisorEvent) -> bool:
    return event.kind == "restart"


def breaker_moves(breaker: CircuitBreaker) -> None:
    assert breaker.state == "closed"
    breaker.trip("test")
    assert breaker.state == "open"
    checked: int = "breaker"


def supervisor_moves(sup: Supervisor) -> None:
    assert sup.state == "running"
    sup.stop()
    assert sup.state == "stopped"
    checked: int = "supervisor"


async def async_supervisor_moves(sup: AsyncSupervisor) -> None:
    assert sup.state == "running"
    await sup.stop()
    assert sup.state == "stopped"
    checked: int = "async supervisor"


def words(kind: EventKind, state: SupervisorState, circuit: CircuitState) -> list[str]:
    def typed(old: CircuitState, new: CircuitState, reason: str) -> None: ...
    def plain(old: str, new: str, reason: str) -> None: ...
    CircuitBreaker(on_change=typed), CircuitBreaker(on_change=plain)  # on_change's old and new: CircuitState
    return [kind, state, circuit]
'''


def test_state_is_str_and_event_kind_literal(tmp_path: Path) -> None:
    out = _mypy(tmp_path, {"states.py": STATES})
    errors = [line.split(":", 1)[1] for line in out.stdout.splitlines() if ": error: " in line]
    kinds = ("'started', 'start_failed', 'reattached', 'reattach_failed', 'failure', 'recovered', 'restarting',"
             " 'restarted', 'restart_failed', 'gave_up', 'stopped'")
    assigned = 'error: Incompatible types in assignment (expression has type "str", variable has type "int")'
    assert errors == [
        f'12: error: Non-overlapping equality check (left operand type: "Literal[{kinds}]", right operand type:'
        ' "Literal[\'restart\']")  [comparison-overlap]',
        f"19: {assigned}  [assignment]", f"26: {assigned}  [assignment]", f"33: {assigned}  [assignment]",
    ], out.stdout + out.stderr


# A call future's sync done callbacks get the future they were added to, typed as its own class (a Client's
# HookedFuture, a pool's FailoverFuture), as grpc.Future's get theirs. They took Callable[[Any], None]: the
# callback's argument was Any, and nothing in its body was checked. (grpc.Future is Any here, grpcio shipping no
# types, so a callback for an unrelated type cannot be caught: a class with an Any base passes for any type.)
DONE_CALLBACKS = '''
from plugbay.core.host.callfuture import CallFuture, HookedFuture
from plugbay.network.poolfuture import FailoverFuture


def watch(plain: CallFuture, hooked: HookedFuture, failover: FailoverFuture) -> None:
    plain.add_done_callback(lambda done: print(reveal_type(done)))
    hooked.add_done_callback(lambda done: print(reveal_type(done)))
    failover.add_done_callback(lambda done: print(reveal_type(done)))
'''


def test_a_call_futures_done_callbacks_get_its_own_type(tmp_path: Path) -> None:
    out = _mypy(tmp_path, {"callbacks.py": DONE_CALLBACKS})
    said = [line.split(":", 1)[1] for line in out.stdout.splitlines() if ": error: " in line or ": note: " in line]
    assert said == [
        '7: note: Revealed type is "plugbay.core.host.callfuture.CallFuture"',
        '8: note: Revealed type is "plugbay.core.host.callfuture.HookedFuture"',
        '9: note: Revealed type is "plugbay.network.poolfuture.FailoverFuture"',
    ], out.stdout + out.stderr
