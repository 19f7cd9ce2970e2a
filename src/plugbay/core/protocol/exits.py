"""What a process's exit code says: the signal that ended it, by name."""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence


def signal_name(num: int) -> str | None:
    """The name of signal ``num`` ("SIGKILL", "SIGRTMIN+6"), or None when it is no signal here.

    The real-time signals (SIGRTMIN..SIGRTMAX) are valid signals without a name of their own in
    ``signal.Signals``: a process ended by one must still be described, not make the description fail.
    """
    if num <= 0 or num not in signal.valid_signals():
        return None
    try:
        return signal.Signals(num).name
    except ValueError:
        low = getattr(signal, "SIGRTMIN", 0)
        return f"SIGRTMIN+{num - low}" if low and num >= low else f"signal {num}"


def killed_by(code: int | None) -> str | None:
    """The signal a child process's exit code names (-N: ended by signal N, as subprocess reports it), or None."""
    return signal_name(-code) if code is not None and code < 0 else None


def exit_said(code: int | None) -> str:
    """'exited with code N', naming the signal a negative code stands for ("... -11 (killed by SIGSEGV)")."""
    by = killed_by(code)
    return f"exited with code {code}" + (f" (killed by {by})" if by else "")


# A POSIX shell's exit codes for a command it could not run: 127 not found, 126 found but not executable. A
# plugin started through a shell (`sh -c`, an image's shell-form ENTRYPOINT/CMD) that exits so never ran.
NOT_FOUND, NOT_EXECUTABLE = 127, 126
# a shell's words when it cannot run a program (dash, bash, busybox; "exec: NAME: not found" from sh -c exec):
# a program may exit 127 or 126 itself, after it ran, and then the advice below would send the user astray
# ("sh: 1: pythn: not found", "bash: pythn: command not found", "env: 'pythn': No such file or directory"): a
# program's own log line ("[ERROR] config key not found", hclog's "[LEVEL] ...") is none of them
_SHELL_REFUSAL = re.compile(r"^[^\s\[]+:.*: (?:command not found|not found|No such file or directory|Permission denied"
                            r"|cannot execute.*|Exec format error|Is a directory)$", re.IGNORECASE)


def not_run_advice(code: int | None, last: Sequence[str], command: str, where: str, check: str) -> str | None:
    """The advice for a plugin whose shell said it could not run ``command`` (exit 127 or 126, the last of its
    stderr lines ``last`` the shell's refusal), else None: no plugin ran, so its handshake config (the magic
    cookie) is not the cause. ``where``: where the program was looked for ("on its PATH"); ``check``: what to
    check."""
    if not last or _SHELL_REFUSAL.search(last[-1]) is None:
        return None
    if code == NOT_FOUND:
        said = f"a program {command} runs was not found {where} (or no file is at the path given)"
    elif code == NOT_EXECUTABLE:
        said = f"a program {command} runs was found but could not be executed (no execute permission, or not a" \
               " program this system runs)"
    else:
        return None
    return (f"Exit code {code} is a shell's: {said}, so the plugin never started and its handshake config (magic"
            f" cookie) is not the cause. {check}")
