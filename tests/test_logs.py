"""The stderr log pump: hclog JSON lines to logging records, raw lines, the tail."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from collections.abc import Callable

import pytest

from plugbay.core.host.logs import LogPump
from plugbay.core.protocol.hclog import TRACE, parse_hclog


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=1)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture()
def capture() -> Capture:
    handler = Capture()
    logger = logging.getLogger("plugbay.plugin.testplug")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(1)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


def hclog(level: str, msg: str, **kv: object) -> str:
    return json.dumps({"@level": level, "@message": msg, "@module": "kv_plugin",
                       "@timestamp": "2026-01-01T00:00:00.000000Z", **kv})


def test_hclog_levels_and_extra(capture: Capture) -> None:
    pump = LogPump("testplug")
    lines = [hclog("trace", "t"), hclog("debug", "d", key="a"), hclog("info", "i"),
             hclog("warn", "w"), hclog("error", "e", err="disk full", n=3)]
    for line in lines:
        pump.handle(line)
    got = [(r.levelno, r.getMessage()) for r in capture.records]
    assert got == [(TRACE, "t"), (logging.DEBUG, "d key=a"), (logging.INFO, "i"),
                   (logging.WARNING, "w"), (logging.ERROR, 'e err="disk full" n=3')]
    last = capture.records[-1]
    assert last.name == "plugbay.plugin.testplug"
    assert last.plugin_module == "kv_plugin"  # type: ignore[attr-defined]
    assert last.plugin_fields == {"err": "disk full", "n": 3}  # type: ignore[attr-defined]
    assert last.plugin_timestamp.startswith("2026-01-01")  # type: ignore[attr-defined]
    assert pump.tail()[-1] == '[ERROR] e err="disk full" n=3'


def test_lines_below_the_loggers_level_are_dropped_but_kept_in_the_tail(capture: Capture) -> None:
    logging.getLogger("plugbay.plugin.testplug").setLevel(logging.INFO)
    pump = LogPump("testplug")
    # Go's hclog writes @level first: such a line below INFO is dropped from a look at its level
    go_debug = '{"@level":"debug","@message":"get","@module":"kv","@timestamp":"t","key":"bench"}'
    for line in (go_debug, hclog("trace", "t"), hclog("info", "shown", n=1), '{"@level":"debug"}',
                 '{"@level":"bogus","@message":"m"}'):
        pump.handle(line)
    got = [(r.levelno, r.getMessage()) for r in capture.records]
    # the last two are not hclog: logged verbatim, as before
    assert got == [(logging.INFO, "shown n=1"), (logging.INFO, '{"@level":"debug"}'),
                   (logging.INFO, '{"@level":"bogus","@message":"m"}')]
    assert pump.tail() == ["[DEBUG] get key=bench", "[TRACE] t", "[INFO] shown n=1", '{"@level":"debug"}',
                           '{"@level":"bogus","@message":"m"}']


def test_raw_lines_prefixes_and_panic(capture: Capture) -> None:
    pump = LogPump("testplug")
    for line in ["plain text", "[WARN] careful", "[DEBUG] detail", '{"not": "hclog"}',
                 "panic: runtime error", "goroutine 1 [running]:"]:
        pump.handle(line)
    got = [(r.levelno, r.getMessage()) for r in capture.records]
    assert got == [(logging.INFO, "plain text"), (logging.WARNING, "[WARN] careful"),
                   (logging.DEBUG, "[DEBUG] detail"), (logging.INFO, '{"not": "hclog"}'),
                   (logging.ERROR, "panic: runtime error"), (logging.ERROR, "goroutine 1 [running]:")]
    assert pump.tail() == ["plain text", "[WARN] careful", "[DEBUG] detail", '{"not": "hclog"}',
                           "panic: runtime error", "goroutine 1 [running]:"]


def test_raw_sink_takes_non_json_lines(capture: Capture) -> None:
    raw: list[str] = []
    pump = LogPump("testplug", raw_sink=raw.append)
    pump.handle("raw one")
    pump.handle(hclog("info", "structured"))
    assert raw == ["raw one"]
    assert [r.getMessage() for r in capture.records] == ["structured"]


def test_custom_logger_and_tail_limit() -> None:
    logger = logging.getLogger("custom.plugin.logger")
    handler = Capture()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        pump = LogPump("x", logger=logger, tail=3)
        for i in range(10):
            pump.handle(f"line {i}")
        pump.handle("on stdout", stream="stdout")
        assert pump.tail() == ["line 7", "line 8", "line 9"]
        assert len(handler.records) == 11
        assert handler.records[-1].plugin_stream == "stdout"  # type: ignore[attr-defined]
    finally:
        logger.removeHandler(handler)


def test_parse_hclog_rejects_non_hclog() -> None:
    assert parse_hclog("hello") is None
    assert parse_hclog("{broken json") is None
    assert parse_hclog('["a"]') is None
    assert parse_hclog('{"@message": "m", "@level": "bogus"}') is None
    level, msg, extra = parse_hclog('{"@message": "m", "@level": "WARN"}') or (0, "", {})
    assert (level, msg, extra["plugin_fields"]) == (logging.WARNING, "m", {})


_LOG_FROM_A_SIGNAL_HANDLER = r"""
import logging, os, signal, sys
from plugbay.core.plugin.logs import HclogHandler

class Stream:
    # the signal arrives while the handler is writing a record, as SIGTERM can in serve()
    def __init__(self): self.lines, self.armed = [], True
    def write(self, text):
        if self.armed:
            self.armed = False
            os.kill(os.getpid(), signal.SIGUSR1)  # its handler runs on this thread, inside emit
        self.lines.append(text)
    def flush(self): pass

stream = Stream()
log = logging.getLogger("probe")
log.addHandler(HclogHandler(stream))
log.setLevel(logging.DEBUG)
signal.signal(signal.SIGUSR1, lambda *_: log.debug("from the signal handler"))
log.info("outer record")
print(len(stream.lines), sum('"@message":"from the signal handler"' in l for l in stream.lines),
      sum('"@message":"outer record"' in l for l in stream.lines))
"""


def test_a_record_logged_from_a_signal_handler_mid_write_does_not_deadlock() -> None:
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parent.parent / "src"
    out = subprocess.run([sys.executable, "-c", _LOG_FROM_A_SIGNAL_HANDLER], capture_output=True, text=True,
                         timeout=30, env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "1", "1"]  # both records, each whole on its own line


def test_a_plugins_hclog_line_is_the_text_json_dumps_writes() -> None:
    """hclog_json writes flat records itself (no json import at a plugin's first record): same text as json."""
    import datetime
    import decimal
    import enum
    import random

    from plugbay.core.protocol.hclog import hclog_json

    class Level(enum.IntEnum):
        A = 1

    class Name(str):
        pass

    values: list[object] = [
        "", 'quote " and \\ backslash', "\x00\x01\x1f\x7f\u2028\u00e9\U0001F600", "line\nnext\r\t\b\f",
        0, -5, 2**70, 1.5, -0.0, 1e300, 1e-7, float("nan"), float("inf"), float("-inf"), True, False, None,
        Level.A, Name("x"), [1, "a"], (2,), {"k": [None]}, datetime.date(2020, 1, 2),
        decimal.Decimal("1.1"), b"bytes", object]
    rng = random.Random(13)
    values += ["".join(chr(rng.choice([rng.randrange(0, 0x80), rng.randrange(0x80, 0x3000),
                                       rng.randrange(0x10000, 0x10400)])) for _ in range(rng.randrange(12)))
               for _ in range(500)]
    spelled = {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}  # JSON has no NaN: hosts would drop the line

    def finite(value: object) -> object:
        return spelled.get(repr(value), value) if isinstance(value, float) else value

    for value in values:
        entry = {"@level": "info", "@message": "m", "key": value, 'odd\n"key': value}
        expected = {k: finite(v) for k, v in entry.items()}
        assert hclog_json(entry) == json.dumps(expected, default=str, ensure_ascii=False, separators=(",", ":"))


def test_a_record_with_nan_or_infinity_stays_valid_json() -> None:
    """A Go host parses each line as strict JSON; NaN and infinities (flat or nested) are written as strings."""
    from plugbay.core.protocol.hclog import hclog_json

    def refuse(constant: str) -> object:
        raise ValueError(f"not JSON: {constant}")

    entry = {"@level": "error", "@message": "m", "ratio": float("nan"), "top": float("inf"),
             "nested": {"low": [float("-inf"), 1.5]}}
    decoded = json.loads(hclog_json(entry), parse_constant=refuse)
    assert decoded["ratio"] == "NaN" and decoded["top"] == "+Inf" and decoded["nested"] == {"low": ["-Inf", 1.5]}


def test_serve_keeps_the_programs_own_thread_hook_and_faulthandler_file(tmp_path: Path) -> None:
    """keep_stderr_writers() follows stderr only: a thread excepthook or a faulthandler file the
    program chose itself stays as it was (checked in a child that really crashes)."""
    dump = tmp_path / "faults.txt"
    marker = tmp_path / "hook.txt"
    script = f"""
import faulthandler, sys, threading
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent / "src")!r})
from plugbay.core.plugin.logs import PluginLogging
out = open({str(dump)!r}, "w")
faulthandler.enable(file=out)
def own_hook(args):
    open({str(marker)!r}, "w").write(f"own hook saw {{args.exc_value}}")
threading.excepthook = own_hook
logging_ = PluginLogging(None)
logging_.keep_stderr_writers()
assert threading.excepthook is own_hook
t = threading.Thread(target=lambda: 1 / 0)
t.start(); t.join()
faulthandler._sigsegv()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0  # it crashed, as asked
    assert "Fatal Python error" in dump.read_text(), done.stderr  # the program's own file got the dump
    assert marker.read_text() == "own hook saw division by zero"


def test_a_thread_ending_by_an_exception_is_logged_and_the_default_hook_comes_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from plugbay.core.plugin.logs import PluginLogging

    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)  # pytest has its own meanwhile
    before = threading.excepthook
    plugin_logging = PluginLogging(None)
    try:
        plugin_logging.keep_stderr_writers()
        assert threading.excepthook is not before  # plugbay's: an error record on the original stderr
    finally:
        plugin_logging.close()
    assert threading.excepthook is before


def test_a_deeply_nested_json_line_is_plain_text() -> None:
    line = '{"@level":"info","@message":"x","a":' + "[" * 5000 + "]" * 5000 + "}"
    assert parse_hclog(line) is None
    pump = LogPump("testplug")
    pump.handle(line)
    assert pump.tail() == [line]


def test_a_failed_start_after_a_deeply_nested_stderr_line_raises_a_plugbay_error(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "kv"))
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin

    from plugbay import Client, ClientConfig, PlugbayError

    script = tmp_path / "nested.py"
    script.write_text("import sys\nsys.stderr.write('{\"@level\":\"info\",\"@message\":\"x\",\"a\":'"
                      " + '[' * 5000 + ']' * 5000 + '}\\n')\nsys.exit(1)\n")
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                                 cmd=[sys.executable, str(script)], start_timeout=20))
    try:
        with pytest.raises(PlugbayError):
            client.start()
    finally:
        client.kill()


def _nested_field_line(depth: int) -> str:
    return '{"@level":"error","@message":"m","k":' + "[" * depth + "]" * depth + "}"


def test_a_field_nested_just_under_the_parsers_limit_is_shown_not_raised() -> None:
    # json.loads takes a little more nesting than json.dumps: a field loads took must not make
    # re-encoding it for the message raise (a plugin's stderr line is the plugin's to write)
    shown = 0
    for depth in range(900, 1000):
        parsed = parse_hclog(_nested_field_line(depth))
        if parsed is not None:
            shown += 1
            assert parsed[1].startswith("m k=")
        pump = LogPump("testplug")
        pump.handle(_nested_field_line(depth))
        assert len(pump.tail()) == 1
    assert shown  # some depths parse: the case is really met


_DYING_KV = """
import logging, os, sys
sys.path.insert(0, {kv!r})
import plugin as kvp
from plugbay import ServeConfig, serve
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin

class Dying(kvp.FileKV):
    def put(self, key, value):
        # the plugin's log stream (fd 2 itself is captured for GRPCStdio): where hclog lines go
        log = next(h.stream for h in logging.getLogger().handlers if hasattr(h, "stream"))
        for depth in range(944, 994):
            os.write(log.fileno(), ({line!r} % ("[" * depth + "]" * depth)).encode())
        os._exit(3)

serve(ServeConfig(handshake=HANDSHAKE, plugins={{PLUGIN_NAME: KVPlugin(Dying())}}))
"""

# The host runs in a process of its own: where json.loads takes a nesting and json.dumps does not
# depends on the stack already in use, and a plain script's is the one users have.
_HOST = """
import logging, os, sys
sys.path.insert(0, {kv!r})
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
from plugbay import Client, ClientConfig, PlugbayError
logging.getLogger("plugbay").setLevel(logging.CRITICAL)
client = Client(ClientConfig(handshake=HANDSHAKE, plugins={{PLUGIN_NAME: KVPlugin()}},
                             cmd=[sys.executable, {plugin!r}], start_timeout=20))
client.start()
folder = client._tmpdir
try:
    client.dispense(PLUGIN_NAME).put("a", b"b")
    print("call returned")
except PlugbayError as exc:
    print("call typed", type(exc).__name__)
except BaseException as exc:
    print("call untyped", type(exc).__name__)
try:
    client.kill()
    print("kill returned")
except BaseException as exc:
    print("kill raised", type(exc).__name__)
    client.kill()
print("folder left", os.path.exists(folder))
"""


def test_a_plugin_dying_after_deeply_nested_stderr_lines_fails_the_call_typed_and_is_cleaned_up(
        tmp_path: Path) -> None:
    kv = Path(__file__).resolve().parent.parent / "examples" / "kv"
    plugin = tmp_path / "dying.py"
    plugin.write_text(_DYING_KV.format(kv=str(kv), line='{"@level":"error","@message":"m","k":%s}\n'))
    host = subprocess.run([sys.executable, "-c", _HOST.format(kv=str(kv), plugin=str(plugin))], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert host.stdout.splitlines() == ["call typed PluginDied", "kill returned", "folder left False"], (
        host.stdout + host.stderr[-2000:])


def test_the_hclog_handler_drops_records_once_stderr_is_gone(capsys: pytest.CaptureFixture[str]) -> None:
    from plugbay.core.plugin.logs import HclogHandler

    class Dead:
        writes = 0

        def write(self, text: str) -> int:
            self.writes += 1
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            pass

    stream = Dead()
    handler = HclogHandler(stream)  # type: ignore[arg-type]
    record = logging.LogRecord("plugin", logging.INFO, __file__, 1, "lost", None, None)
    for _ in range(3):
        handler.emit(record)
    assert stream.writes == 1  # not retried at every record
    assert "Logging error" not in capsys.readouterr().err  # no traceback aimed at the dead stderr


def test_the_hclog_handler_keeps_writing_after_another_write_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Only a broken pipe means nobody reads any more: a full disk behind a redirected stderr loses that
    record, and later ones are written once there is room again."""
    from plugbay.core.plugin.logs import HclogHandler

    class Full:
        lines: list[str] = []
        fail = True

        def write(self, text: str) -> int:
            if self.fail:
                raise OSError(28, "No space left on device")
            self.lines.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    stream = Full()
    handler = HclogHandler(stream)  # type: ignore[arg-type]
    handler.emit(logging.LogRecord("plugin", logging.INFO, __file__, 1, "lost", None, None))
    stream.fail = False
    handler.emit(logging.LogRecord("plugin", logging.INFO, __file__, 1, "kept", None, None))
    assert len(stream.lines) == 1 and "kept" in stream.lines[0], stream.lines
    assert "Logging error" not in capsys.readouterr().err


def test_a_moved_stderr_handler_still_sees_a_file_like_stream() -> None:
    """The program's stderr handler, moved to the host's log, writes through a stream that drops records
    once the host is gone; what code reads off a stream (encoding, isatty(), writelines) still works."""
    from plugbay.core.plugin.logs import PluginLogging

    handler = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.addHandler(handler)
    plugin_logging = PluginLogging(None)
    try:
        plugin_logging.keep_stderr_writers()
        moved = handler.stream
        assert moved is not sys.stderr
        assert moved.encoding == "utf-8" and moved.isatty() in (True, False) and not moved.closed
        moved.writelines(["a moved line\n"])
        moved.flush()
    finally:
        plugin_logging.close()
        root.removeHandler(handler)
    assert handler.stream is sys.stderr


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def _cycle() -> list[object]:
    looped: list[object] = []
    looped.append(looped)
    return looped


def _hclog_lines(emit: Callable[[logging.Logger], None]) -> list[str]:
    """The lines a real HclogHandler writes for what ``emit(logger)`` logs."""
    import io

    from plugbay.core.plugin.logs import HclogHandler

    stream = io.StringIO()
    logger = logging.getLogger("plugbay.test.hclog-lines")
    handler = HclogHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    return stream.getvalue().splitlines()


@pytest.mark.parametrize("extra, fields", [
    ({1: "one"}, {"1": "one"}),  # a key that is no str: hclog writes it with %s
    ({"d": {(1, 2): 3}}, {"d": "{(1, 2): 3}"}),  # JSON has no tuple keys: shown by repr
    ({"n": 10**5000}, {"n": hex(10**5000)}),  # past Python's int-to-str digit limit
    ({"o": _Unprintable()}, {"o": "<unprintable _Unprintable>"}),
    ({"l": [_Unprintable(), float("nan")], "x": 1}, {"l": ["<unprintable _Unprintable>", "NaN"], "x": 1}),
    ({"c": _cycle(), "ok": "kept"}, {"c": "[[...]]", "ok": "kept"}),
])
def test_a_record_with_a_value_json_cannot_hold_is_still_written(
        extra: dict[object, object], fields: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:
    """Such a record vanished: the formatter raised, and the handler's error went to the captured stderr.
    Go's hclog writes it too (any key with %s)."""
    lines = _hclog_lines(lambda log: log.warning("odd", extra=extra))  # type: ignore[arg-type]
    assert len(lines) == 1, lines
    entry = json.loads(lines[0])
    assert entry["@message"] == "odd" and entry["@level"] == "warn"
    assert {k: v for k, v in entry.items() if not k.startswith("@")} == fields
    assert "Logging error" not in capsys.readouterr().err


def test_a_record_whose_arguments_do_not_fit_its_format_is_still_written(capsys: pytest.CaptureFixture[str]) -> None:
    """log.info("%d", "x") raised in getMessage(): the record went to logging's error path only."""
    lines = _hclog_lines(lambda log: log.warning("count %d", "x"))
    assert len(lines) == 1, lines
    assert json.loads(lines[0])["@message"] == "count %d (arguments that do not fit it: ('x',))"
    assert "Logging error" not in capsys.readouterr().err
