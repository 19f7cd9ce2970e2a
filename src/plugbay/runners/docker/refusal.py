"""What plugbay advises when the Docker engine refuses to create or start a plugin's container.

The advice follows the engine's own reason: a container command that cannot run (not in the image, not
executable, built for another architecture) is the image's or the entrypoint/command's to fix, while the
engine's own refusals (a bind-mount source missing, an unknown runtime, a host port already taken, a
user the image lacks) name something else, and pointing at the entrypoint there sent people the wrong way.
"""

from __future__ import annotations

import re
from typing import Any

from plugbay.errors import RunnerError, printable

# The runtime's words when the container's command itself cannot run. runc's look-up of it (Go's
# exec.LookPath): 'exec: "x": executable file not found in $PATH', 'exec: "/x": stat /x: no such file or
# directory', 'exec: "/x": permission denied'; runc's exec of what it found: 'exec /x: exec format error'
# (another architecture) or 'exec /x: no such file or directory' (a script whose interpreter the image
# lacks); crun's: 'executable file `x` not found in $PATH', 'open executable: Permission denied'; and the
# engine's create of a container with none at all: 'No command specified'. Only these: "no such file or
# directory" alone is also how a mount or working_dir failure ends.
_COMMAND_CANNOT_RUN = re.compile(r'\bexec: "[^"]*": |\bexec /[^\s:]*: |executable file `[^`]*` not found'
                                 r'|open executable: |^No command specified$')


def engine_refused(image: str, exc: Any, command: str, options: str) -> RunnerError:
    """The engine's refusal (docker-py's APIError ``exc``) to create or start a container of ``image``,
    with advice that fits its reason: ``command`` names where the container's command was set, ``options``
    the create arguments the caller gave (the usual cause of the engine's own refusals)."""
    reason = printable(str(getattr(exc, "explanation", None) or exc)).rstrip(".")
    said = f"the Docker engine refused to run {image!r}: {reason}."
    if _COMMAND_CANNOT_RUN.search(reason):
        return RunnerError(f"{said} The container's command cannot run: check {command}. It must be in the"
                           " image and executable, built for the engine's architecture, and a script's interpreter"
                           " must be in the image too")
    return RunnerError(f"{said} The engine refused before the plugin's command ran, for the reason it gives:"
                       f" fix what that names, in {options} or on the engine's host (a port another process"
                       " holds, a runtime the engine lacks)")
