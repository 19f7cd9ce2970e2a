"""plugbay's demo: go-plugin's KV example on the process runner, across languages, in a container.

    python examples/demo.py

1. Python host -> Python KV plugin (a local process), then again with AutoMTLS.
2. Python host -> go-plugin's KV plugin written in Go (built from Debian's
   go-plugin sources) with AutoMTLS, when Go is installed.
3. The same from asyncio (AsyncClient): calls awaited, several at once.
4. The Python KV plugin in a Docker container, when a Docker engine is up.

Each step prints what it does; the demo exits 0 when every step that could
run succeeded (steps whose parts are missing say so and are skipped).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import AsyncClient, Client, ClientConfig  # noqa: E402
from plugbay import Runner  # noqa: E402

PLUGINS = {PLUGIN_NAME: KVPlugin()}


def say(text: str) -> None:
    print(text, flush=True)


def kv_session(title: str, config: ClientConfig) -> None:
    say(f"\n== {title}")
    started = time.monotonic()
    with Client(config) as client:
        info = client.handshake
        say(f"   started {client.name!r} via {type(client.runner).__name__}; handshake: core"
            f" {info.core_version}, app v{client.negotiated_version}, {info.network}"
            f" {info.address}, {info.protocol}, server cert: {'yes' if info.server_cert else 'no'}")
        say(f"   connection: {client.connection_mode}")
        kv = client.dispense(PLUGIN_NAME)
        kv.put("greeting", f"hello from {title}".encode())
        say("   put greeting")
        value = kv.get("greeting")
        say(f"   get greeting -> {value.decode()!r}")
        assert value == f"hello from {title}".encode()
    say(f"   killed and cleaned up ({time.monotonic() - started:.2f}s in all)")


def kv_session_async(title: str, config: ClientConfig) -> None:
    say(f"\n== {title}")
    started = time.monotonic()

    async def session() -> None:
        async with AsyncClient(config) as client:
            say(f"   started {client.name!r}; connection: {client.connection_mode}")
            kv = await client.dispense(PLUGIN_NAME)
            keys = [f"async-{n}" for n in range(3)]
            await asyncio.gather(*(kv.put(key, f"{key} from asyncio".encode()) for key in keys))
            values = await asyncio.gather(*(kv.get(key) for key in keys))
            say(f"   3 puts and 3 gets at once -> {[v.decode() for v in values]!r}")
            assert values == [f"{key} from asyncio".encode() for key in keys]

    asyncio.run(session())
    say(f"   killed and cleaned up ({time.monotonic() - started:.2f}s in all)")


def go_plugin() -> str | None:
    try:
        from tests import gobuild
    except ImportError:
        return None
    reason = gobuild.go_missing_reason()
    if reason is not None:
        say(f"\n== Python host -> Go plugin: skipped ({reason})")
        return None
    say("\n   building go-plugin's KV plugin in Go (cached after the first build)...")
    return str(gobuild.build_go("kv_plugin"))


def docker_runner() -> Runner | None:
    try:
        from plugbay.images import docker_client, ensure_example
        from plugbay.runners.docker import DockerRunner
    except ImportError as exc:
        say(f"\n== KV plugin in a container: skipped (no Docker support: {exc})")
        return None
    try:
        docker_client().ping()
    except Exception as exc:
        say(f"\n== KV plugin in a container: skipped (no Docker engine: {exc})")
        return None
    say("\n   building the KV plugin image (cached after the first build)...")
    tag = ensure_example("kv", progress=lambda line: say(f"   | {line}"))
    return DockerRunner(tag, writable_dirs=("/tmp", "/data"))  # KV writes in /data


def main() -> int:
    python = sys.executable
    plugin_py = str(REPO / "examples" / "kv" / "plugin.py")
    say("plugbay demo: HashiCorp go-plugin's KV example, hosted from Python")
    with tempfile.TemporaryDirectory(prefix="plugbay-demo-") as workdir:
        os.chdir(workdir)  # the KV plugins store kv_<key> files in their working directory
        kv_session("Python host -> Python plugin",
                   ClientConfig(HANDSHAKE, plugins=PLUGINS, cmd=[python, plugin_py]))
        kv_session("Python host -> Python plugin, AutoMTLS",
                   ClientConfig(HANDSHAKE, plugins=PLUGINS, cmd=[python, plugin_py], auto_mtls=True))
        binary = go_plugin()
        if binary is not None:
            kv_session("Python host -> Go plugin (go-plugin 1.0.1), AutoMTLS",
                       ClientConfig(HANDSHAKE, plugins=PLUGINS, cmd=[binary], auto_mtls=True))
        kv_session_async("Python host on asyncio -> " + ("Go" if binary else "Python") + " plugin, AutoMTLS",
                         ClientConfig(HANDSHAKE, plugins=PLUGINS, cmd=[binary] if binary else [python, plugin_py],
                                      auto_mtls=True))
        runner = docker_runner()
        if runner is not None:
            kv_session("Python host -> Python plugin in a Docker container",
                       ClientConfig(HANDSHAKE, plugins=PLUGINS, runner=runner))
        say(f"\nfiles the plugins wrote in {workdir}: {sorted(os.listdir(workdir))}")
        os.chdir(REPO)
    say("\ndemo finished: every step that could run succeeded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
