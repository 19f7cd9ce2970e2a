"""The ``plugbay`` command: run, inspect, call, diagnose and sweep plugins from a shell.

Built on plugbay's public API (Client, the runners, plugbay.images); click
parses arguments, rich draws colour, tables and progress on a terminal. This
package is host-side only: a plugin process (plugbay.serve) never imports it.

Exit codes (one table for every command):

    0  ok
    1  the plugin or the call failed
    2  usage or configuration error
    3  not reachable (plugin gone, no Docker engine, no cluster)
    4  not healthy (reachable, not SERVING)

Errors print one line saying what to do; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Sequence

try:
    import click
except ImportError:  # the cli extra is missing: main() says how to get it
    click = None  # type: ignore[assignment]
else:
    from plugbay.cli import output  # draws with click

_STATE = {"debug": False}
_GATEWAY_OPTIONS = {"--debug", "-v", "--verbose"}  # the gateway logs at info already: -v changes nothing


def _build() -> click.Group:
    from plugbay.cli import ops, probe, run, tools

    @click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
                 epilog="Exit codes:\n\n\b\n" + output.EXIT_TABLE + "\n\nSee docs/cli.md.")
    @click.option("--debug", is_flag=True, help="Tracebacks on errors and plugbay's debug logs.")
    @click.option("-v", "--verbose", is_flag=True, help="plugbay's info logs (plugin logs always show).")
    @click.version_option(package_name="plugbay", prog_name="plugbay")
    def cli(debug: bool, verbose: bool) -> None:
        """plugbay: run, inspect and call go-plugin style plugins (processes, containers, pods).

        \b
        Example:
          plugbay run --cmd '.venv/bin/python examples/kv/plugin.py' --cookie BASIC_PLUGIN=hello --reattach-out kv.json
          plugbay health @kv.json
        """
        _STATE["debug"] = debug
        output.setup_logging(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)
        if not debug:
            # plugin log lines keep their own (hclog) levels
            logging.getLogger("plugin").setLevel(logging.DEBUG)

    for command in (run.run, probe.info, probe.health, probe.call, ops.diagnose, ops.sweep, tools.images,
                    tools.bench, tools.demo, tools.gateway):
        cli.add_command(command)
    return cli


def _on_term(signum: int, frame: object) -> None:
    raise output.Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """The console script ``plugbay`` (and ``python -m plugbay``): returns the exit code."""
    if click is None:
        print("error: the plugbay command needs its extra: pip install 'plugbay[cli]'", file=sys.stderr)
        return 2  # output.USAGE (output itself needs click)
    args = list(sys.argv[1:] if argv is None else argv)
    _STATE["debug"] = False  # the group's callback sets it
    first = next((n for n, arg in enumerate(args) if not arg.startswith("-")), None)
    # plugbay's own options before it (--debug, -v) still count; any other (--help, a typo) goes to click
    if first is not None and args[first] == "gateway" and set(args[:first]) <= _GATEWAY_OPTIONS:
        from plugbay.cli.tools import run_gateway

        debug = "--debug" in args[:first]
        return run_gateway(args[first + 1:], logging.DEBUG if debug else logging.INFO)  # verbatim, `--` included
    _quiet_grpc("--debug" in args[:first])
    # without it SIGTERM ended info/call/health/diagnose with no cleanup: their temp folder and claim stayed.
    # Only over the default action: an ignored SIGTERM (the parent's choice) or a C handler stays as it is
    ours = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    if ours:
        signal.signal(signal.SIGTERM, _on_term)
    try:
        return _run(args)
    finally:
        if ours:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _quiet_grpc(debug: bool) -> None:
    """Import grpc with its C core's own log lines off (``E1207 ... ssl_transport_security_utils.cc ...``,
    ``I1207 ... Handshake failed``, printed above plugbay's error on every TLS failure) unless ``--debug`` or
    the user's own GRPC_VERBOSITY. gRPC reads it once, at import: the environment is restored after, so the
    plugins ``plugbay run`` starts get the user's own, and the library's users are untouched."""
    if debug or "GRPC_VERBOSITY" in os.environ or "grpc" in sys.modules:
        return
    os.environ["GRPC_VERBOSITY"] = "NONE"
    try:
        import grpc  # noqa: F401
    except ImportError:  # said where it is needed
        pass
    finally:
        del os.environ["GRPC_VERBOSITY"]


def _run(args: list[str]) -> int:
    try:
        result = _build().main(args=args, prog_name="plugbay", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort as exc:  # click's form of a KeyboardInterrupt
        if isinstance(exc.__cause__, output.Terminated):
            output.error("terminated")
            return 143
        output.error("aborted")
        return 130
    except click.ClickException as exc:
        exc.show()
        return output.USAGE if isinstance(exc, click.UsageError) else int(exc.exit_code or 1)
    except KeyboardInterrupt as exc:
        output.error("terminated" if isinstance(exc, output.Terminated) else "interrupted")
        return 143 if isinstance(exc, output.Terminated) else 130
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line and an exit code
        from plugbay.errors import PlugbayError

        if _STATE["debug"]:
            traceback.print_exc()
        if isinstance(exc, PlugbayError):
            output.error(str(exc))
        else:
            output.error(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback"
                         " and report it)")
        return output.exit_code_for(exc)
    return int(result or 0) if isinstance(result, int) else 0

