"""Shared parts of the resilience tests: the fault-switch KV plugin, bounded waits, a network namespace."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import ClientConfig, ProcessRunner  # noqa: E402

PY = sys.executable
FAULTY = str(REPO / "tests" / "plugins" / "resilience_kv.py")
KV_EXAMPLE = str(REPO / "examples" / "kv" / "plugin.py")
PLUGINS = {PLUGIN_NAME: KVPlugin()}

__all__ = ["HANDSHAKE", "PLUGIN_NAME", "PLUGINS", "PY", "FAULTY", "KV_EXAMPLE", "faulty_config",
           "wait_until", "NetNS"]


def faulty_config(cwd: Path, *, cmd: list[str] | None = None, env: Mapping[str, str] | None = None,
                  trusted_networks: tuple[str, ...] = (), **kw: Any) -> ClientConfig:
    """A fresh config (with a fresh runner) for the fault-switch plugin, run in ``cwd``."""
    runner = ProcessRunner(cmd or [PY, FAULTY], env=env, cwd=cwd, trusted_networks=trusted_networks)
    kw.setdefault("start_timeout", 30.0)
    return ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, runner=runner, **kw)


def run_resilience_doc_example(tmp_path: Path, heading: str) -> subprocess.CompletedProcess[str]:
    """The first Python block after ``heading`` in docs/resilience.md, run as written (in tmp_path:
    the KV plugin writes kv_<key> files, not into the checkout); asserts it exited 0."""
    import re

    text = (REPO / "docs" / "resilience.md").read_text()
    code = re.search(r"```python\n(.*?)```", text[text.index(heading):], flags=re.S)
    assert code is not None
    for name in ("examples", "src"):
        (tmp_path / name).symlink_to(REPO / name)
    done = subprocess.run([sys.executable, "-c", code.group(1)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def wait_until(predicate: Callable[[], Any], timeout: float, step: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


_seq = itertools.count(1)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


class NetNS:
    """A private network namespace joined to the host by a veth pair on a /30 of 10.231.0.0/16.

    ``host_ip`` is the host's end, ``plugin_ip`` the namespace's. Faults:
    ``partition()`` / ``heal()`` take the host's veth down / up; ``reject()`` /
    ``accept()`` add / remove an iptables REJECT rule inside the namespace
    (when iptables works there). ``delete()`` removes everything.
    """

    def __init__(self) -> None:
        n = next(_seq)
        tag = f"{os.getpid() % 100000}{n}"
        self.name = f"pbres-{tag}"
        self.host_if = f"pbh{tag}"[:15]
        self.plugin_if = f"pbp{tag}"[:15]
        self.host_ip, self.plugin_ip = self._free_subnet()
        self._rules: list[list[str]] = []
        try:
            _ip("netns", "add", self.name)
        except (subprocess.CalledProcessError, FileNotFoundError, PermissionError) as exc:
            err = getattr(exc, "stderr", "") or str(exc)
            pytest.skip(f"network namespaces are not available here (ip netns add: {err.strip()})")
        try:
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.plugin_if)
            _ip("link", "set", self.plugin_if, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            self.exec_ip("addr", "add", f"{self.plugin_ip}/30", "dev", self.plugin_if)
            self.exec_ip("link", "set", self.plugin_if, "up")
            self.exec_ip("link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise

    @staticmethod
    def _free_subnet() -> tuple[str, str]:
        used = _ip("-o", "-4", "addr", "show").stdout
        start = os.getpid() % 16000
        for i in range(16000):
            k = (start + i) % 16000
            third, fourth = divmod(k * 4, 256)
            base = f"10.231.{third}."
            if f"{base}{fourth + 1}/" not in used and f"{base}{fourth + 2}/" not in used:
                return f"{base}{fourth + 1}", f"{base}{fourth + 2}"
        raise RuntimeError("no free /30 in 10.231.0.0/16")

    def exec_ip(self, *args: str) -> None:
        _ip("netns", "exec", self.name, "ip", *args)

    def command(self, *cmd: str) -> list[str]:
        """``cmd`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *cmd]

    def partition(self) -> None:
        _ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def iptables_works(self) -> bool:
        try:
            res = subprocess.run(self.command("iptables", "-L", "INPUT", "-n"), capture_output=True,
                                 timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return res.returncode == 0

    def reject(self, port: int) -> None:
        rule = ["INPUT", "-p", "tcp", "--dport", str(port), "-j", "REJECT", "--reject-with", "tcp-reset"]
        subprocess.run(self.command("iptables", "-I", *rule), check=True, capture_output=True, timeout=10)
        self._rules.append(rule)

    def accept(self) -> None:
        while self._rules:
            rule = self._rules.pop()
            subprocess.run(self.command("iptables", "-D", *rule), capture_output=True, timeout=10)

    def delete(self) -> None:
        """Remove the namespace, its rules and both veth ends; safe to call twice."""
        self.accept()
        _ip("netns", "del", self.name, check=False)
        _ip("link", "del", self.host_if, check=False)  # usually gone with the namespace


E = TypeVar("E", bound=BaseException)


def failed_start(client: Any, error: type[E]) -> tuple[E, float]:
    """``client.start()``, which must raise ``error``: (that error, the seconds it took); the client is
    killed after, whatever happened."""
    began = time.monotonic()
    try:
        with pytest.raises(error) as info:
            client.start()
        took = time.monotonic() - began
    finally:
        client.kill()
    return info.value, took
