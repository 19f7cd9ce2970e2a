"""``python -m plugbay.network.gateway`` (and ``plugbay gateway``): the gateway's command line.

    python -m plugbay.network.gateway --listen 0.0.0.0:7001 --cert tls.crt --key tls.key \\
        --client-ca ca.crt --cookie BASIC_PLUGIN=hello --plugins kv_grpc -- ./kv-plugin

Every flag also reads an environment variable (PLUGBAY_GATEWAY_LISTEN, _CERT, _KEY,
_CLIENT_CA, _COOKIE, _PROTOCOL_VERSIONS, _PLUGINS, _INSECURE=1, _MULTIPLEX=1, _KEEPALIVE,
_MAX_CALLS, _MAX_PEER_CALLS, _MAX_PEER_SESSIONS, _MAX_MESSAGE), which is how the
container image (Dockerfile.plugin, target ``gateway``) is configured. Once
serving it prints ``listening tcp HOST:PORT`` on stdout. SIGTERM, SIGINT, SIGHUP and
SIGQUIT stop it (child included) with exit code 0; it exits 1 when the plugin cannot be started or
keeps dying beyond the restart budget, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from types import FrameType

from plugbay.core.plugin.fdlimit import raise_fd_limit
from plugbay.core.plugin.netconfig import DEFAULT_MAX_PEER_SESSIONS, MAX_SESSIONS, env_switch, keepalive_figures
from plugbay.errors import ConfigError, PlugbayError
from plugbay.network.gateway.config import DEFAULT_MAX_CALLS, DEFAULT_MAX_MESSAGE, MAX_MAX_MESSAGE, GatewayConfig
from plugbay.network.gateway.gateway import Gateway
from plugbay.network.gateway.starts import DEFAULT_MAX_CHILD_STARTS

ENV_PREFIX = "PLUGBAY_GATEWAY_"
# SIGHUP (its terminal or SSH session closed, `kill -HUP`) and SIGQUIT end the process by default: the
# children, their socket folders and the sessions' children were left behind, so they stop it as SIGTERM does
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
_START_JOIN = 10.0  # a stopped start ends at once (its child is killed); this only bounds the wait


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    def default(name: str, fallback: str | None = None) -> str | None:
        return env.get(ENV_PREFIX + name, fallback)

    p = argparse.ArgumentParser(
        prog="plugbay gateway", description="Serve a go-plugin plugin on the network over mutual TLS.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  plugbay gateway --listen 0.0.0.0:7001 --cert kv.crt --key kv.key --client-ca ca.crt \\\n"
               "    --cookie BASIC_PLUGIN=hello --plugins kv_grpc -- ./kv_plugin",
        usage="%(prog)s --cookie KEY=VALUE [--listen HOST:PORT] [--cert FILE --key FILE --client-ca FILE |"
              " --insecure] [--protocol-versions 1,2] [--plugins NAME,...] -- PLUGIN_COMMAND [ARGS...]")
    p.add_argument("--listen", default=default("LISTEN", "0.0.0.0:7001"), help="HOST:PORT (port 0: any free port)")
    p.add_argument("--cert", default=default("CERT"), help="server certificate (chain), PEM")
    p.add_argument("--key", default=default("KEY"), help="the certificate's private key, PEM")
    p.add_argument("--client-ca", default=default("CLIENT_CA"), help="CA bundle that signs the hosts' certificates")
    p.add_argument("--cookie", default=default("COOKIE"), help="the plugin's magic cookie, KEY=VALUE")
    p.add_argument("--protocol-versions", default=default("PROTOCOL_VERSIONS", "1"),
                   help="app protocol versions to offer the plugin, e.g. 1,2")
    p.add_argument("--plugins", default=default("PLUGINS", ""), help="plugin names Discovery reports")
    p.add_argument("--insecure", action="store_true", default=_switch(env, "INSECURE"),
                   help="plaintext, no client authentication (trusted test networks only)")
    p.add_argument("--trust-announced-address", action="store_true", default=_switch(env, "TRUST_ANNOUNCED_ADDRESS"),
                   help="dial the address the plugin announces even when plugbay cannot prove the plugin it"
                        " started listens there (a command that hands the serving on, such as `docker run`)")
    p.add_argument("--multiplex", action="store_true", default=_switch(env, "MULTIPLEX"),
                   help="brokered callbacks: each host session gets its own child (the plugin must"
                        " multiplex; checked at start)")
    p.add_argument("--start-timeout", type=float, default=30.0, help="seconds the plugin has to start")
    p.add_argument("--keepalive", default=default("KEEPALIVE", "30,10"), metavar="INTERVAL,TIMEOUT[,WRITE]",
                   help="ping a brokering host's session after INTERVAL quiet seconds; drop it (and stop its"
                        " child) when nothing answers within TIMEOUT (default 30,10); WRITE: drop a session"
                        " (the host's or its child's) on which no byte could be written for that long"
                        " (default 10); also the shared child's health checks: every INTERVAL, each given"
                        " TIMEOUT, NOT_SERVING after 2 unanswered in a row")
    p.add_argument("--max-calls", default=default("MAX_CALLS", str(DEFAULT_MAX_CALLS)), metavar="N",
                   help="forwarded calls at once; one more is refused with RESOURCE_EXHAUSTED, so health"
                        f" checks always answer (default {DEFAULT_MAX_CALLS})")
    p.add_argument("--max-peer-calls", default=default("MAX_PEER_CALLS", ""), metavar="N",
                   help="of those, at most N from one peer IP address, so one host cannot take them all"
                        " (default: three quarters of --max-calls)")
    p.add_argument("--max-peer-sessions", default=default("MAX_PEER_SESSIONS", str(DEFAULT_MAX_PEER_SESSIONS)),
                   metavar="N", help="with --multiplex: brokering sessions (each a child) one peer IP address may"
                                     " hold at once; its next is refused, the host told why (default"
                                     f" {DEFAULT_MAX_PEER_SESSIONS}, at most {MAX_SESSIONS})")
    p.add_argument("--max-child-starts", default=default("MAX_CHILD_STARTS", str(DEFAULT_MAX_CHILD_STARTS)),
                   metavar="N", help="with --multiplex: brokering sessions' children starting at once; the next"
                                     " turn goes to the next peer IP address waiting, so a host opening sessions"
                                     " in a loop delays only its own (default"
                                     f" {DEFAULT_MAX_CHILD_STARTS}, at most 256)")
    p.add_argument("--max-message", default=default("MAX_MESSAGE", str(DEFAULT_MAX_MESSAGE)), metavar="BYTES",
                   help="largest request message forwarded; a larger one is refused with RESOURCE_EXHAUSTED"
                        f" before the gateway buffers it (default {DEFAULT_MAX_MESSAGE}, 4 MiB, as go-plugin's)")
    return p


def _switch(env: Mapping[str, str], name: str) -> bool:
    """PLUGBAY_GATEWAY_<name> as the flag's default: on/off as env_switch reads it (else parse() refuses it)."""
    try:
        return env_switch(env, ENV_PREFIX + name, False)
    except ConfigError:
        return False


def parse(argv: Sequence[str], env: Mapping[str, str] | None = None) -> GatewayConfig:
    """GatewayConfig from the command line; SystemExit(2) with a message on bad arguments."""
    env = os.environ if env is None else env
    argv = list(argv)
    cmd: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, cmd = argv[:cut], argv[cut + 1:]
    parser = _parser(env)
    args, extra = parser.parse_known_args(argv)
    if extra:  # a plugin command given without '--' was only "unrecognized arguments"
        hint = (f"; put the plugin command after '--', for example `-- {' '.join(extra)}`"
                if not cmd and not extra[0].startswith("-") else "")
        parser.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    for switch in ("INSECURE", "MULTIPLEX"):  # =yes meant off, without a word
        try:
            env_switch(env, ENV_PREFIX + switch, False)
        except ConfigError as exc:
            parser.error(str(exc))
    if not cmd:
        parser.error("no plugin command: put it after '--', for example `-- ./kv-plugin`")
    key, sep, value = (args.cookie or "").partition("=")
    if not sep or not key or not value:
        parser.error(f"--cookie must be KEY=VALUE, the plugin's magic cookie (got {args.cookie!r}), for example"
                     " --cookie BASIC_PLUGIN=hello")
    try:
        versions = [int(v) for v in str(args.protocol_versions).split(",") if v.strip()]
    except ValueError:
        parser.error(f"--protocol-versions must be integers separated by commas (got {args.protocol_versions!r})")
    tls = [args.cert, args.key, args.client_ca]
    if not args.insecure and not all(tls):
        parser.error("mutual TLS needs --cert, --key and --client-ca (or PLUGBAY_GATEWAY_CERT/_KEY/_CLIENT_CA);"
                     " --insecure serves plaintext, for trusted test networks only")
    if args.insecure and args.multiplex:
        parser.error("--multiplex needs mutual TLS (--cert, --key, --client-ca); drop --insecure")
    if args.insecure and any(tls):
        parser.error("--insecure and --cert/--key/--client-ca exclude each other; drop --insecure to serve mTLS")
    if not math.isfinite(args.start_timeout) or args.start_timeout <= 0:
        parser.error(f"--start-timeout must be a positive number of seconds, the time the plugin has to start"
                     f" (got {args.start_timeout!r}), for example --start-timeout 30")
    try:
        keepalive = keepalive_figures(str(args.keepalive), "--keepalive")
    except ConfigError as exc:
        parser.error(str(exc))
    max_calls = _positive(parser, args.max_calls, "--max-calls", "the forwarded calls at once", "48")
    max_peer_calls = None if not str(args.max_peer_calls) else _positive(
        parser, args.max_peer_calls, "--max-peer-calls", "the forwarded calls at once from one peer address", "36")
    max_peer_sessions = _positive(parser, args.max_peer_sessions, "--max-peer-sessions", "the brokering sessions"
                                  " one peer address may hold", str(DEFAULT_MAX_PEER_SESSIONS), MAX_SESSIONS)
    max_child_starts = _positive(parser, args.max_child_starts, "--max-child-starts", "the brokering sessions'"
                                 " children starting at once", str(DEFAULT_MAX_CHILD_STARTS), 256)
    max_message = _positive(parser, args.max_message, "--max-message", "the bytes of one request message",
                            str(DEFAULT_MAX_MESSAGE), MAX_MAX_MESSAGE)
    return GatewayConfig(cmd=cmd, cookie=(key, value), listen=args.listen, cert_file=args.cert, key_file=args.key,
                         client_ca_file=args.client_ca, insecure=args.insecure, protocol_versions=versions,
                         plugins=[n for n in str(args.plugins).split(",") if n.strip()],
                         start_timeout=args.start_timeout, multiplex=args.multiplex, keepalive=keepalive,
                         max_calls=max_calls, max_peer_calls=max_peer_calls, max_message=max_message,
                         max_peer_sessions=max_peer_sessions, max_child_starts=max_child_starts,
                         trust_announced_address=args.trust_announced_address)


def _positive(parser: argparse.ArgumentParser, given: object, flag: str, what: str, example: str,
              maximum: int | None = None) -> int:
    """``given`` as a positive int (at most ``maximum``), or a usage error saying what ``flag`` takes."""
    text = str(given).strip()  # ASCII digits only: int() reads '١' as 1
    value = int(text) if text.isascii() and text.isdigit() and len(text) <= 10 else 0
    if value < 1:
        parser.error(f"{flag} must be a positive integer, {what} (got {given!r}), for example {flag} {example}")
    if maximum is not None and value > maximum:
        parser.error(f"{flag} must be at most {maximum}, {what} (got {given!r}), for example {flag} {example}")
    return value


def _start_unless_stopped(gateway: Gateway, stop: threading.Event) -> bool:
    """gateway.start() (its errors raised here), or False once ``stop`` is set while it runs.

    The start runs on a thread of its own: the signal handler only sets ``stop``, and this
    thread then stops the gateway, which ends a child still starting at once (a start waits
    up to --start-timeout for its child, as long as a pod's default termination grace).
    """
    failed: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            gateway.start()
        except BaseException as exc:  # raised on the caller's thread below
            failed.append(exc)
        finally:
            done.set()

    starter = threading.Thread(target=run, name="plugbay-gateway-start", daemon=True)
    starter.start()
    while not done.wait(0.1):
        if stop.is_set():
            gateway.stop()
            starter.join(_START_JOIN)
            return False
    if failed:
        if stop.is_set():
            return False
        raise failed[0]
    return True


def main(argv: list[str], level: int = logging.INFO) -> int:
    """Run the gateway until STOP_SIGNALS (logging at ``level``). Returns the process exit code."""
    try:
        config = parse(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    old: dict[int, object] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            old[signum] = signal.signal(signum, on_signal)
    # a server, as a plugin is: each stream a remote host opens costs descriptors (and a session admits
    # only the streams half the soft limit allows), so the limit is raised as serve() raises a plugin's
    raise_fd_limit()
    try:
        gateway = Gateway(config)
        try:
            if not _start_unless_stopped(gateway, stop):
                # a stop signal while the plugin started: a stop, not a failure (as a stop once it serves)
                print("gateway: stopped before the plugin started", file=sys.stderr, flush=True)
                return 0
            print(f"listening tcp {gateway.address}", flush=True)
            while not stop.wait(0.5):
                if gateway.failed.is_set():
                    print(f"gateway: error: {gateway.keeper.failure}", file=sys.stderr, flush=True)
                    return 1
            return 0
        finally:
            gateway.stop()
    except ConfigError as exc:  # the arguments cannot work (an address, a TLS file): as a usage error
        print(f"gateway: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except PlugbayError as exc:
        print(f"gateway: error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        for number, handler in old.items():
            signal.signal(number, handler)  # type: ignore[arg-type]
