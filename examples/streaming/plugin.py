"""The streaming example plugin: serves streaming.Streamer (see streaming_plugin_def)."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
if (_HERE.parent.parent / "src" / "plugbay").is_dir():  # a source checkout: no install needed
    sys.path.insert(0, str(_HERE.parent.parent / "src"))

from streaming_plugin_def import HANDSHAKE, PLUGIN_NAME, StreamerPlugin, StreamerServicer  # noqa: E402

from plugbay import ServeConfig, serve  # noqa: E402

if __name__ == "__main__":
    serve(ServeConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: StreamerPlugin(StreamerServicer())}))
