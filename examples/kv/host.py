"""The KV example host, drop-in for go-plugin's examples/grpc main.go.

    KV_PLUGIN="python examples/kv/plugin.py" python examples/kv/host.py put hello world
    KV_PLUGIN="python examples/kv/plugin.py" python examples/kv/host.py get hello     # prints: world
    python examples/kv/host.py --automtls get hello                                   # with AutoMTLS
    python examples/kv/host.py --target static:///10.0.0.5:7001 \
        --cert host.crt --key host.key --ca ca.crt get hello       # a plugin served on the network

With --target, no plugin is launched: the host connects to a remote plugin
(network mode, see docs/network-host.md) over mTLS with the given files
(or --insecure for plaintext). Without it, KV_PLUGIN is a shell command, run
with ``sh -c`` as the Go example does, so it
may hold arguments (or name go-plugin's own Go KV plugin). The plugin runs in
the current directory and stores each key in the file ``kv_<key>`` there.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))  # kv_plugin_def and kvproto
if (_HERE.parent.parent / "src" / "plugbay").is_dir():  # a source checkout: no install needed
    sys.path.insert(0, str(_HERE.parent.parent / "src"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import (  # noqa: E402
    Client,
    ClientConfig,
    NetworkTLS,
    PlugbayError,
    RemoteClient,
    RemoteConfig,
)


def make_client(args: argparse.Namespace, command: str | None) -> Client:
    """A RemoteClient for --target, else a Client that launches the plugin command."""
    if args.target:
        tls = None if args.insecure else NetworkTLS(args.cert, args.key_file, args.ca,
                                                    server_name=args.server_name)
        return RemoteClient(RemoteConfig(target=args.target, handshake=HANDSHAKE,
                                         plugins={PLUGIN_NAME: KVPlugin()}, tls=tls, insecure=args.insecure,
                                         dns_server=args.dns_server, allow_loopback=args.allow_loopback, name="kv"))
    config = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                          cmd=["sh", "-c", str(command)], auto_mtls=args.automtls, name="kv")
    return Client(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="go-plugin's KV example host, in Python")
    parser.add_argument("--automtls", action="store_true", help="negotiate go-plugin AutoMTLS")
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
    parser.add_argument("value", nargs="?")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(name)s %(levelname)s %(message)s")
    if args.command == "put" and args.value is None:
        parser.error("put needs KEY and VALUE")
    command = os.environ.get("KV_PLUGIN")
    if args.target:
        if args.automtls:
            parser.error("--automtls is for launched plugins; a --target plugin uses --cert/--key/--ca")
        if not args.insecure and not (args.cert and args.key_file and args.ca):
            parser.error("--target needs --cert, --key and --ca (or --insecure for plaintext)")
    elif any((args.cert, args.key_file, args.ca, args.server_name, args.insecure, args.dns_server,
              args.allow_loopback)):
        parser.error("--cert/--key/--ca/--server-name/--insecure/--dns-server/--allow-loopback go with --target")
    elif not command:
        print("Error: set KV_PLUGIN to the plugin command, e.g."
              " KV_PLUGIN='python examples/kv/plugin.py'", file=sys.stderr)
        return 1
    try:
        with make_client(args, command) as client:
            kv = client.dispense(PLUGIN_NAME)
            if args.command == "get":
                sys.stdout.buffer.write(kv.get(args.key) + b"\n")
            else:
                kv.put(args.key, args.value.encode())
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
