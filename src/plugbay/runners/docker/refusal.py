"""What plugbay advises when the Docker engine refuses to create or start a plugin's container.

The advice follows the engine's own reason: a container command the runtime cannot find or open (not in the
image, not executable) is the image's or the entrypoint/command's to fix, while the
engine's own refusals (a bind-mount source missing, an unknown runtime, a host port already taken, a
user the image lacks) name something else, and pointing at the entrypoint there sent people the wrong way.
"""

from __future__ import annotations

import re
from typing import Any

from plugbay.errors import RunnerError, printable

# The runtime's words when the container's command itself cannot run. runc's look-up of it (Go's
# exec.LookPath) in the container's init: '... unable to start container process: exec: "x": executable
# file not found in $PATH' (runc 1.1; 1.0 says 'starting container process caused: exec: ...', either may
# add 'error during container init: '), 'exec: "/x": stat /x: no such file or directory', 'exec: "/x":
# permission denied' (the name Go-quoted: an escaped '"' inside it); crun's: 'executable file `x` not found
# in $PATH', 'open executable: Permission denied'; and the engine's create of a container with none at all:
# 'No command specified'. Only these, anchored so: an engine's own Go exec of a host program fails with
# the same 'exec: "docker-proxy": executable file not found' (port publishing) or 'fork/exec /usr/bin/crun:
# no such file or directory' (a runtime registered without its binary), and "no such file or directory"
# alone is also how a mount or working_dir failure ends. A command runc found but cannot exec (another
# architecture's, a script whose interpreter the image lacks) is no refusal: the container starts, says so
# on its output and exits 1 (PluginExitedError).
_COMMAND_CANNOT_RUN = re.compile(r'(?:unable to start container process|starting container process caused'
                                 r'|error during container init): exec: "(?:[^"\\]|\\.)*": '
                                 r'|executable file `[^`]*` not found|open executable: |^No command specified$')


def engine_refused(image: str, exc: Any, command: str, options: str) -> RunnerError:
    """The engine's refusal (docker-py's APIError ``exc``) to create or start a container of ``image``,
    with advice that fits its reason: ``command`` names where the container's command was set, ``options``
    the create arguments the caller gave (the usual cause of the engine's own refusals)."""
    reason = printable(str(getattr(exc, "explanation", None) or exc)).rstrip(".")
    said = f"the Docker engine refused to run {image!r}: {reason}."
    if _COMMAND_CANNOT_RUN.search(reason):
        return RunnerError(f"{said} The container's command cannot run: check {command}. It must be in the"
                           " image (on its PATH, or a full path) and executable")
    return RunnerError(f"{said} The engine refused before the plugin's command ran, for the reason it gives:"
                       f" fix what that names, in {options} or on the engine's host (a port another process"
                       " holds, a runtime the engine lacks)")
