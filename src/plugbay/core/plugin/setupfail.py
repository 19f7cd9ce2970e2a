"""What serve() does when it cannot start, and whether its host asked it to outlive the host.

A setup error ends the plugin (exit 1) with one line on stderr for the host: a plugbay host reads it
as it is; a go-plugin host logs plain stderr lines only at DEBUG, so for one the line also goes out as
an hclog JSON record at level error, as a Go plugin's setup errors show.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping

from plugbay.core.plugin.logs import HclogFormatter
from plugbay.core.protocol.outlive import outlives


def fail_setup(message: str, hclog: bool = False) -> None:
    """The message on stderr, exit 1. With ``hclog`` (the cookie was right and no plugbay host launched us:
    a go-plugin host did) also as an hclog JSON line at level error: a Go host logs other stderr lines at
    DEBUG only (hidden by default), and a Go plugin's setup errors show at ERROR."""
    if hclog:
        record = logging.LogRecord("plugbay.server", logging.ERROR, __file__, 0, message.strip(), None, None)
        message += HclogFormatter().format(record).replace("\n", "\\n") + "\n"
    try:
        sys.stderr.write(message)
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):  # None, closed, or its fd 2 closed: the exit code still tells
        pass
    raise SystemExit(1)


def outlives_host(env: Mapping[str, str], stderr: int = 2) -> bool:
    """Whether the host asked this plugin to serve on after the host dies (for a later host to reattach):
    only by naming the pipe on ``stderr`` in PLUGBAY_OUTLIVE_PIPE (core/protocol/outlive.py), so an ask a Go
    host passed on from its own host's environment asks nothing; PLUGBAY_OUTLIVE_HOST=1 alone (a plugbay
    host before the name) cannot be told from an inherited one, and stops the plugin; "0" stops it too."""
    return outlives(env, stderr)
