"""The KV example host, drop-in for go-plugin's examples/grpc main.go.

    KV_PLUGIN="python examples/kv/plugin.py" python examples/kv/host.py put hello world
    KV_PLUGIN="python examples/kv/plugin.py" python examples/kv/host.py get hello     # prints: world
    python examples/kv/host.py --automtls get hello                                   # with AutoMTLS

KV_PLUGIN is a shell command, run with ``sh -c`` as the Go example does, so it
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

from plugbay import Client, ClientConfig, PlugbayError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="go-plugin's KV example host, in Python")
    parser.add_argument("--automtls", action="store_true", help="negotiate go-plugin AutoMTLS")
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
    if not command:
        print("Error: set KV_PLUGIN to the plugin command, e.g."
              " KV_PLUGIN='python examples/kv/plugin.py'", file=sys.stderr)
        return 1
    config = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                          cmd=["sh", "-c", command], auto_mtls=args.automtls, name="kv")
    try:
        with Client(config) as client:
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
