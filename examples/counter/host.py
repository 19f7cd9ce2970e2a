"""The counter example host, drop-in for go-plugin's examples/bidirectional main.go.

    export COUNTER_PLUGIN="python examples/counter/plugin.py"
    python examples/counter/host.py put hello 5      # the plugin calls back into this host to add
    python examples/counter/host.py put hello 2
    python examples/counter/host.py get hello        # prints: 7
    python examples/counter/host.py --automtls get hello
    python examples/counter/host.py --multiplex put hello 1   # brokered streams share one connection

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

from plugbay import Client, ClientConfig, PlugbayError  # noqa: E402


class Adder:
    """The host's AddHelper: the plugin calls it through the broker."""

    def sum(self, a: int, b: int) -> int:
        return a + b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="go-plugin's bidirectional (counter) example host, in Python")
    parser.add_argument("--automtls", action="store_true", help="negotiate go-plugin AutoMTLS")
    parser.add_argument("--multiplex", action="store_true",
                        help="multiplexed broker (PLUGIN_MULTIPLEX_GRPC): one connection for everything")
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
    if not command:
        print("Error: set COUNTER_PLUGIN to the plugin command, e.g."
              " COUNTER_PLUGIN='python examples/counter/plugin.py'", file=sys.stderr)
        return 1
    config = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                          cmd=["sh", "-c", command], auto_mtls=args.automtls,
                          multiplex_broker=args.multiplex, name="counter")
    try:
        with Client(config) as client:
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
