"""The streaming example host.

    python examples/streaming/host.py generate 1000 65536   # server stream: 1000 chunks of 64 KiB
    python examples/streaming/host.py echo 1000 4096        # bidirectional: each chunk comes back
    python examples/streaming/host.py stats                 # the plugin's counters

It starts examples/streaming/plugin.py (or STREAMING_PLUGIN, a shell command)
and prints what it received and the throughput.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
if (_HERE.parent.parent / "src" / "plugbay").is_dir():
    sys.path.insert(0, str(_HERE.parent.parent / "src"))

from streaming_plugin_def import HANDSHAKE, PLUGIN_NAME, StreamerPlugin  # noqa: E402
from streamingproto import streaming_pb2  # noqa: E402

from plugbay import Client, ClientConfig, PlugbayError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="plugbay streaming example host")
    parser.add_argument("--automtls", action="store_true")
    parser.add_argument("command", choices=["generate", "echo", "stats"])
    parser.add_argument("count", nargs="?", type=int, default=100)
    parser.add_argument("size", nargs="?", type=int, default=64 * 1024)
    args = parser.parse_args(argv)
    if args.count < 1 or args.size < 0:
        # count 0 asks the plugin for an endless stream: this host would never finish
        parser.error("COUNT must be at least 1 and SIZE at least 0")
    command = os.environ.get("STREAMING_PLUGIN") or f"{sys.executable} {_HERE / 'plugin.py'}"
    config = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: StreamerPlugin()},
                          cmd=["sh", "-c", command], auto_mtls=args.automtls, name="streamer",
                          call_timeout=None)
    try:
        with Client(config) as client:
            streamer = client.dispense(PLUGIN_NAME)
            start = time.perf_counter()
            got = 0
            if args.command == "generate":
                for chunk in streamer.generate(args.count, args.size):
                    got += len(chunk.data)
            elif args.command == "echo":
                payload = b"e" * args.size

                def chunks() -> Iterator[streaming_pb2.Chunk]:
                    for i in range(args.count):
                        yield streaming_pb2.Chunk(seq=i, data=payload)

                for chunk in streamer.echo(chunks()):
                    got += len(chunk.data)
            else:
                print(streamer.stats())
                return 0
            took = time.perf_counter() - start
            print(f"{args.command}: {got} bytes in {took:.3f}s = {got / took / 1e6:.1f} MB/s")
    except PlugbayError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:  # a failed call carries the plugin's message
        print(f"Error: the {args.command} call failed: {exc.details()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
