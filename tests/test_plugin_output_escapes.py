"""Plugin output is untrusted: control characters in it reach host log records and errors escaped."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import Client, ClientConfig, HandshakeError, PluginExitedError  # noqa: E402

FORGED = REPO / "tests" / "plugins" / "forged_output.py"
CONTROLS = ("\n", "\r", "\x1b", "\x07", "\x9b", "\u2028")


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=1)
        self.lines: list[str] = []
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))


@pytest.fixture()
def capture() -> Capture:
    handler = Capture()
    logger = logging.getLogger("plugbay")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


def _client(mode: str) -> Client:
    return Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                               cmd=[sys.executable, str(FORGED), mode], start_timeout=20))


def test_stderr_lines_cannot_forge_records_or_send_terminal_escapes(capture: Capture) -> None:
    client = _client("stderr")
    with pytest.raises(PluginExitedError) as info:
        client.start()
    client.kill()
    plugin = [line for line in capture.lines if "plugbay.plugin." in line]
    assert len(plugin) == 4, capture.lines
    for line in capture.lines:
        assert not any(c in line for c in CONTROLS), repr(line)
    assert plugin[0].endswith("loading\\x0a2024-01-01 00:00:00 WARNING plugbay.client: plugin kv exited with code 0")
    assert "plain \\x1b[2K\\x0dWARNING forged by carriage return \\x1b]0;pwned\\x07" in plugin[1]
    assert 'k\\x0aforged via key="v\\rforged via value"' in plugin[2] and "c1=\\x9b31m" in plugin[2]
    assert plugin[3].endswith("line\\u2028forged by a line separator\tand a tab, caf\u00e9")
    # the raw text stays at hand for a handler that wants it
    raw = [r for r in capture.records if r.name.startswith("plugbay.plugin.")]
    assert raw[1].plugin_raw.startswith("plain \x1b[2K\r")  # type: ignore[attr-defined]
    message = str(info.value)
    assert "code 3" in message and "\\x1b]0;pwned\\x07" in message and "loading\\x0a2024-01-01" in message
    body = message.replace("\n    ", " ")  # the tail's own layout: one indented line per stderr line
    assert not any(c in body.split("Its last stderr lines:")[1].split("\nCheck that")[0] for c in CONTROLS)
    assert not any(c in line for line in info.value.stderr_tail for c in CONTROLS)


def test_a_handshake_line_is_logged_escaped(capture: Capture) -> None:
    client = _client("stdout")
    try:
        with pytest.raises(HandshakeError):
            client.start()
    finally:
        client.kill()
    shown = [line for line in capture.lines if "handshake: 1|1|unix|" in line]
    assert shown and shown[0].endswith("/tmp/x\\x1b]0;pwned\\x07\\x0dforged|grpc"), capture.lines
    for line in capture.lines:
        assert not any(c in line for c in CONTROLS), repr(line)


def test_printable_leaves_ordinary_text_alone() -> None:
    from plugbay.errors import printable

    text = "caf\u00e9 \u65e5\u672c tab\there \u00a0nbsp"
    assert printable(text) == text and printable("plain") == "plain"
    assert printable("a\x00b\x7fc\x85d\u2029e") == "a\\x00b\\x7fc\\x85d\\u2029e"


def test_printable_escapes_the_bidi_formatting_characters_only() -> None:
    """Bidi overrides, embeddings, isolates and marks reorder what a log line shows; the other format
    characters (ZWJ in emoji, ZWNJ in Persian words, the soft hyphen) are text and stay."""
    from plugbay.errors import printable

    assert printable("user \u202egnp.exe\u202c") == "user \\u202egnp.exe\\u202c"
    assert printable("\u2066i\u2069 \u200e\u200f \u061c \u202a\u202d") == \
        "\\u2066i\\u2069 \\u200e\\u200f \\u061c \\u202a\\u202d"
    assert printable("\u65e5\u202e\n\u65e5\u00a0") == "\u65e5\\u202e\\x0a\u65e5\u00a0"
    for text in ("\u0646\u0631\u0645\u200c\u0627\u0641\u0632\u0627\u0631", "\U0001f469\u200d\U0001f4bb",
                 "soft\u00adhyphen", "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"):
        assert printable(text) == text


BIDI = r"""
import json, sys, time
sys.stderr.write(json.dumps({"@level": "error", "@message": "user \u202egnp.exe\u202c ok",
                             "@module": "m\u2066x", "@timestamp": "t\u200e\n"}) + "\n")
sys.stderr.write("[ERROR] plain \u2066isolate\u2069 and \u200f mark and \u200d joiner\n")
sys.stderr.flush()
print("not a handshake", flush=True)
time.sleep(30)
"""


def test_stderr_format_characters_reach_records_escaped(capture: Capture) -> None:
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                                 cmd=[sys.executable, "-c", BIDI], start_timeout=20))
    try:
        with pytest.raises(HandshakeError):
            client.start()
    finally:
        client.kill()
    plugin = [r for r in capture.records if r.name.startswith("plugbay.plugin.")]
    lines = [capture.format(r) for r in plugin]
    assert len(lines) == 2 and all("\n" not in line for line in lines), lines
    assert lines[0].endswith("user \\u202egnp.exe\\u202c ok")
    assert lines[1].endswith("plain \\u2066isolate\\u2069 and \\u200f mark and \u200d joiner")
    # the hclog facts a formatter may show are escaped too; the line as read stays raw
    facts = (plugin[0].plugin_module, plugin[0].plugin_timestamp)  # type: ignore[attr-defined]
    assert facts == ("m\\u2066x", "t\\u200e\\x0a")
    assert "\u2066isolate\u2069" in plugin[1].plugin_raw  # type: ignore[attr-defined]
