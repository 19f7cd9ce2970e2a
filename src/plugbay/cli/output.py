"""What every command shares: exit codes, terminal detection, printing, errors, logging.

Colour, tables and progress go to a terminal only (rich); with a pipe, a file
or ``NO_COLOR`` set, output is plain parseable lines. ``--json`` output is one
JSON document (or one object per line where a command says so) and never
carries colour.

Much of what is printed is not plugbay's own: a plugin's log lines, names and
addresses from a reattach file, a reflected service's names, an engine's error.
Every printer here writes control characters as escapes (plugbay.errors.printable),
so no such text can drive the terminal (titles, cursor moves, a cleared screen) or
forge lines; only a caller that built a whole text itself may say ``trusted=True``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from plugbay.core.transport.handlenames import handle_path
from plugbay.errors import TLSRequiredError, UnprovenAddressError, clip, printable


class Terminated(KeyboardInterrupt):
    """SIGTERM (a supervisor, CI, ``timeout``), raised where the command is so its cleanups run, as Ctrl-C's do."""


# The one exit code table (README "Command line", docs/cli.md).
OK = 0
FAILED = 1  # the plugin or the call failed
USAGE = 2  # bad arguments or configuration
UNREACHABLE = 3  # the plugin, engine or cluster cannot be reached
UNHEALTHY = 4  # reachable but not SERVING
EXIT_CODES = {OK: "ok", FAILED: "plugin or call failed", USAGE: "usage or configuration error",
              UNREACHABLE: "not reachable", UNHEALTHY: "not healthy"}
EXIT_TABLE = "\n".join(f"  {code}  {what}" for code, what in EXIT_CODES.items())


class FloatRange(click.FloatRange):
    """click.FloatRange that refuses nan too: it passes every bound check (each comparison is False), then
    made a check UNREACHABLE, a watch's sleep raise, and a call's deadline never come."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


@contextmanager
def kubernetes_flags(kubeconfig_flag: str | None) -> Iterator[None]:
    """Kubernetes configuration errors raised inside advise the command's own flag (``kubeconfig_flag``;
    None: the command has none) rather than the Python API's keywords (kubeconfig=, api_client=)."""
    from plugbay.runners.kubernetes.advice import command_line, spelled  # only where Kubernetes is used

    with spelled(command_line(kubeconfig_flag)):
        yield


def refuse_unused(options: tuple[tuple[str, object], ...], used: bool, needs: str, why: str) -> None:
    """Options given (not None, not empty) to a part of the command that will not run are refused, not ignored:
    the command would do otherwise than asked (`run --cmd X --namespace N`, `sweep --namespace N`)."""
    from plugbay.errors import ConfigError

    for flag, value in options:
        if value is not None and value != () and not used:
            raise ConfigError(f"{flag} needs {needs}: {why}")


@contextmanager
def automtls_flag() -> Iterator[None]:
    """A plugin refused inside for announcing no AutoMTLS certificate is advised the command's --no-automtls
    rather than the Python API's ClientConfig(require_tls=False), which a shell user cannot pass."""
    try:
        yield
    except TLSRequiredError as exc:
        # the library's own error stays the cause: --debug's traceback shows where it was raised (without
        # --debug the command prints only this one's words)
        raise TLSRequiredError(exc.name, exc.why, opt_out="run again with --no-automtls") from exc


@contextmanager
def trust_flag() -> Iterator[None]:
    """An announced address refused as not the plugin's is advised the command's --trust-announced-address
    rather than the Python API's ClientConfig(trust_announced_address=True)."""
    try:
        yield
    except UnprovenAddressError as exc:
        raise exc.advising("run again with --trust-announced-address") from exc


def color_enabled(stream: Any = None) -> bool:
    """Colour only on a terminal, never with NO_COLOR (any value) or TERM=dumb."""
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR") is not None or os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def interactive(stream: Any = None) -> bool:
    """Progress displays need a terminal (colour or not)."""
    stream = stream or sys.stderr
    try:
        return bool(stream.isatty()) and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def console(stderr: bool = False) -> Any:
    """A rich Console for the terminal (only call when interactive)."""
    from rich.console import Console

    return Console(stderr=stderr, no_color=not color_enabled(sys.stderr if stderr else sys.stdout),
                   highlight=False)


def say(text: str = "", *, style: str | None = None, trusted: bool = False) -> None:
    """One line on stdout: styled on a colour terminal, plain otherwise.

    ``trusted``: plugbay wrote all of ``text`` (several lines, say); else its controls and line
    breaks are written as escapes.
    """
    text = text if trusted else printable(text)
    if style and color_enabled():
        console().print(text, style=style, markup=False, soft_wrap=True)
    else:
        click.echo(text)


def say_status(text: str, *, style: str | None = None, as_json: bool = False) -> None:
    """A status line: on stdout like say(), but on stderr with --json, whose stdout is the JSON document alone."""
    text = printable(text)
    if not as_json:
        say(text, style=style)
    elif style and color_enabled(sys.stderr):
        console(stderr=True).print(text, style=style, markup=False, soft_wrap=True)
    else:
        click.echo(text, err=True)


def facts(pairs: list[tuple[str, Any]]) -> None:
    """``key: value`` lines (aligned and coloured on a terminal); the values' controls escaped."""
    pairs = [(key, printable(str(value))) for key, value in pairs]
    width = max((len(k) for k, _ in pairs), default=0)
    if color_enabled():
        con = console()
        for key, value in pairs:
            con.print(f"[bold cyan]{key.ljust(width)}[/]  {_escape(value)}", soft_wrap=True)
    else:
        for key, value in pairs:
            click.echo(f"{key}: {value}")


def table(head: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal; tab-separated lines (with a header) otherwise; the cells' controls escaped."""
    rows = [[printable(str(cell)) for cell in row] for row in rows]
    if color_enabled():
        from rich.table import Table

        tab = Table(*head)
        for row in rows:
            tab.add_row(*(_escape(c) for c in row))
        console().print(tab)
    else:
        click.echo("\t".join(head))
        for row in rows:
            click.echo("\t".join(row))


def mapped_address(network: str, address: str) -> str:
    """Where the host dials the plugin, for people: a socket this process holds open (the host dials
    ``/proc/self/fd/N``, a handle on the socket it proved or checked) by the path it stands for."""
    return f"{network}:{handle_path(address) if network == 'unix' else address}"


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, sort_keys=True))


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def one_line(message: str, limit: int = 1000) -> str:
    """An error message on one line: its lines joined, bounded by cutting its middle, as its end says what to do."""
    return clip(" | ".join(part.strip() for part in str(message).splitlines() if part.strip()), limit)


def error(message: str) -> None:
    text = "error: " + printable(one_line(message))  # an engine's or a plugin's words may be in it
    if color_enabled(sys.stderr):
        console(stderr=True).print(text, style="bold red", markup=False, soft_wrap=True)
    else:
        click.echo(text, err=True)


def exit_code_for(exc: BaseException) -> int:
    """Which row of the exit code table an exception belongs to."""
    from plugbay.errors import (CallFailedError, ConfigError, EngineUnavailableError, PlugbayError,
                                TargetUnreachableError)

    if isinstance(exc, (TargetUnreachableError, EngineUnavailableError)):
        return UNREACHABLE
    if isinstance(exc, ConfigError) and not isinstance(exc, CallFailedError):
        return USAGE
    if isinstance(exc, PlugbayError):
        return FAILED
    return FAILED


class LogHandler(logging.Handler):
    """Plugin and plugbay log records to stderr: ``LEVEL name: message``, coloured on a terminal."""

    _STYLES = {"DEBUG": "dim", "INFO": "green", "WARNING": "yellow", "ERROR": "bold red", "CRITICAL": "bold red"}

    def __init__(self) -> None:
        super().__init__()
        self._color = color_enabled(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # line breaks kept (a record may span lines), every other control escaped
            text = "\n".join(printable(line) for line in record.getMessage().split("\n"))
            if self._color:
                style = self._STYLES.get(record.levelname, "")
                console(stderr=True).print(f"[{style}]{record.levelname:<7}[/] [dim]{record.name}:[/] "
                                           f"{_escape(text)}", soft_wrap=True)
            else:
                sys.stderr.write(f"{record.levelname} {record.name}: {text}\n")
                sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


def setup_logging(level: int) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, LogHandler):
            root.removeHandler(handler)
    root.addHandler(LogHandler())
    root.setLevel(level)
