"""The counter example host, drop-in for go-plugin's examples/bidirectional main.go.

    export COUNTER_PLUGIN="python examples/counter/plugin.py"
    python examples/counter/host.py put hello 5      # the plugin calls back into this host to add
    python examples/counter/host.py put hello 2
    python examples/counter/host.py get hello        # prints: 7
    python examples/counter/host.py --automtls get hello
    python examples/counter/host.py --multiplex put hello 1   # brokered streams share one connection
    python examples/counter/host.py --target static:///10.0.0.5:7001 \
        --cert host.crt --key host.key --ca ca.crt get hello     # a plugin served on the network

With --target, no plugin is launched: the host connects to a remote plugin
(network mode, see docs/network-host.md). ``put`` needs the broker (the plugin
calls back into the host): it works when the plugin multiplexes brokered
connections over TLS (the counter plugin served with PLUGBAY_NETWORK_*, see
docs/network.md); a plugin that serves plain gRPC only (or --insecure) ends
with a BrokerError saying so. ``--multiplex`` with --target insists on
brokering (a plugin that cannot is an error at connect). Without --target,
COUNTER_PLUGIN is a shell command, run with ``sh -c`` as the Go example does
(so it may name go-plugin's own Go counter plugin). The plugin stores each key
in the file ``kv_<key>`` in the current directory.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))  # counter_plugin_def and counterproto
if (_HERE.parent.parent / "src" / "plugbay").is_dir():  # a source checkout: no install needed
    sys.path.insert(0, str(_HERE.parent.parent / "src"))

from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin  # noqa: E402

from plugbay import (  # noqa: E402
    Client,
    ClientConfig,
    NetworkTLS,
    PlugbayError,
    RemoteClient,
    RemoteConfig,
)


class Adder:
    """The host's AddHelper: the plugin calls it through the broker."""

    def sum(self, a: int, b: int) -> int:
        return a + b


def make_client(args: argparse.Namespace, command: str | None) -> Client:
    """A RemoteClient for --target, else a Client that launches the plugin command."""
    if args.target:
        tls = None if args.insecure else NetworkTLS(args.cert, args.key_file, args.ca,
                                                    server_name=args.server_name)
        return RemoteClient(RemoteConfig(target=args.target, handshake=HANDSHAKE,
                                         plugins={PLUGIN_NAME: CounterPlugin()}, tls=tls, insecure=args.insecure,
                                         dns_server=args.dns_server, allow_loopback=args.allow_loopback,
                                         name="counter", multiplex=args.multiplex))
    config = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                          cmd=["sh", "-c", str(command)], auto_mtls=args.automtls,
                          multiplex_broker=args.multiplex, name="counter")
    return Client(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="go-plugin's bidirectional (counter) example host, in Python")
    parser.add_argument("--automtls", action="store_true", help="negotiate go-plugin AutoMTLS")
    parser.add_argument("--multiplex", action="store_true",
                        help="multiplexed broker (PLUGIN_MULTIPLEX_GRPC): one connection for everything")
    parser.add_argument("--target", help="use a remote plugin served on the network instead of launching"
                        " one, e.g. static:///10.0.0.5:7001 or dns:///kv.example.internal:7001")
    parser.add_argument("--cert", help="with --target: this host's client certificate (PEM)")
    parser.add_argument("--key", dest="key_file", help="with --target: the key of --cert (PEM)")
    parser.add_argument("--ca", help="with --target: the CA that signed the plugin's certificate (PEM)")
    parser.add_argument("--server-name", help="with --target: the name in the plugin's certificate")
    parser.add_argument("--insecure", action="store_true", help="with --target: plaintext, no TLS")
    parser.add_argument("--dns-server", help="with a dns target: ask this DNS server (IP:PORT)")
    parser.add_argument("--allow-loopback", action="store_true", help="with a dns or kubernetes target: take"
                        " loopback addresses from its answers (refused by default)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the plugin's log lines")
    parser.add_argument("command", choices=["get", "put"])
    parser.add_argument("key")
    parser.add_argument("value", nargs="?", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(name)s %(levelname)s %(message)s")
    if args.command == "put" and args.value is None:
        parser.error("put needs KEY and a whole number N")
    command = os.environ.get("COUNTER_PLUGIN")
    if args.target:
        if args.automtls:
            parser.error("--automtls is for launched plugins; a --target plugin uses --cert/--key/--ca")
        if not args.insecure and not (args.cert and args.key_file and args.ca):
            parser.error("--target needs --cert, --key and --ca (or --insecure for plaintext)")
        if args.multiplex and args.insecure:
            parser.error("--multiplex with --target needs TLS (--cert/--key/--ca), not --insecure")
    elif any((args.cert, args.key_file, args.ca, args.server_name, args.insecure, args.dns_server,
              args.allow_loopback)):
        parser.error("--cert/--key/--ca/--server-name/--insecure/--dns-server/--allow-loopback go with --target")
    elif not command:
        print("Error: set COUNTER_PLUGIN to the plugin command, e.g."
              " COUNTER_PLUGIN='python examples/counter/plugin.py'", file=sys.stderr)
        return 1
    try:
        with make_client(args, command) as client:
            counter = client.dispense(PLUGIN_NAME)
            if args.command == "get":
                print(counter.get(args.key))
            else:
                counter.put(args.key, args.value, Adder())
    except PlugbayError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a failed call: grpc.RpcError carries the plugin's message
        details = getattr(exc, "details", None)
        print(f"Error: {details() if callable(details) else exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
