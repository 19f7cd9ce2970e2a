"""The package's shape: imports point down the layers only, no two files import each other in a circle,
and a plugin process loads no host, runner, resilience or network code."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# What each part of the package may import from plugbay (besides itself and plugbay._proto).
ALLOWED: dict[str, tuple[str, ...]] = {
    "plugbay._calltyping": (),  # for type checkers only: the call errors' bases
    "plugbay._text": (),  # the text helpers error messages use (re-exported by plugbay.errors)
    "plugbay._errorroot": (),  # PlugbayError and ConfigError (re-exported by plugbay.errors)
    "plugbay._errormessages": ("plugbay._text",),  # the messages of the errors built from parts (plugbay.errors')
    "plugbay.errors": ("plugbay._calltyping", "plugbay._text", "plugbay._errorroot", "plugbay._errormessages"),
    "plugbay.core.protocol": ("plugbay.errors",),
    "plugbay.core.transport": ("plugbay.errors", "plugbay.core.protocol"),
    "plugbay.core.broker": ("plugbay.errors", "plugbay.core.protocol", "plugbay.core.transport"),
    "plugbay.core.plugin": ("plugbay.errors", "plugbay.core.protocol", "plugbay.core.transport",
                            "plugbay.core.broker"),
    # the host starts plugins: the Runner interface, and the process runner as go-plugin's default
    "plugbay.core.host": ("plugbay.errors", "plugbay.core.protocol", "plugbay.core.transport",
                          "plugbay.core.broker", "plugbay.runners.base", "plugbay.runners.process",
                          "plugbay.runners.session"),
    "plugbay.core.resilience": ("plugbay.errors", "plugbay.core.protocol", "plugbay.core.transport",
                                "plugbay.core.broker", "plugbay.core.host", "plugbay.runners.base",
                                "plugbay.runners.session"),
    "plugbay.runners": ("plugbay.errors", "plugbay.core.protocol", "plugbay.core.transport", "plugbay.runners"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py") if "_proto" not in p.parts}


def _imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """Every plugbay module ``path`` imports, at any depth of the file (TYPE_CHECKING too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # "from pkg import mod" imports the submodule when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t.startswith("plugbay") and not t.startswith("plugbay._proto"))
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(path, name, known) for name, path in known.items()}


def _part(name: str) -> str | None:
    return max((p for p in ALLOWED if name == p or name.startswith(p + ".")), key=len, default=None)


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for name, targets in _graph().items():
        part = _part(name)
        if part is None:
            continue  # the top: plugbay, plugbay.network, plugbay.testing, plugbay.images, the CLI
        allowed = (part, *ALLOWED[part])
        for target in sorted(targets):
            if target != "plugbay" and not any(target == a or target.startswith(a + ".") for a in allowed):
                wrong.append(f"{name} imports {target}")
            elif target == "plugbay":
                wrong.append(f"{name} imports the top-level package (import the module that defines the name)")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def test_no_import_circles() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


def test_the_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    # the checker itself must be able to fail: an import of the host side from the protocol layer
    bad = tmp_path / "bad.py"
    bad.write_text("from plugbay.core.host.client import Client\nfrom plugbay.core import transport\n")
    found = _imports(bad, "plugbay.core.protocol.bad", _modules())
    assert "plugbay.core.host.client" in found and "plugbay.core.transport" in found
    assert _part("plugbay.core.protocol.bad") == "plugbay.core.protocol"


def _private_names_taken(path: Path, name: str, known: dict[str, Path]) -> list[str]:
    """The private names ``path`` imports from another plugbay module (relative imports too); a private module
    imported by name (from plugbay import _text) is a module, not a name taken from one."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    wrong = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = node.module or ""
        if node.level:
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
        if not base.startswith("plugbay"):
            continue
        wrong += [f"{name} imports {base}.{a.name}" for a in node.names
                  if a.name.startswith("_") and not a.name.startswith("__") and f"{base}.{a.name}" not in known]
    return wrong


def test_runner_modules_import_no_other_modules_private_names() -> None:
    # a helper one runner module shares with another gets a public name where it is defined, so a reader of
    # the defining module sees it is used elsewhere (podaddress once took pods' _obj and _objs)
    known = _modules()
    wrong = [line for name, path in known.items() if name.startswith("plugbay.runners.")
             for line in _private_names_taken(path, name, known)]
    assert not wrong, "private names taken from another module:\n" + "\n".join(wrong)


def test_the_private_name_check_sees_relative_imports_and_lets_private_modules_be(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from .pods import _obj\nfrom ..kubernetes.pods import _objs\nfrom plugbay import _text\n"
                   "from plugbay.runners.kubernetes.pods import json_object\n")
    found = _private_names_taken(bad, "plugbay.runners.kubernetes.bad", _modules())
    assert found == ["plugbay.runners.kubernetes.bad imports plugbay.runners.kubernetes.pods._obj",
                     "plugbay.runners.kubernetes.bad imports plugbay.runners.kubernetes.pods._objs"]


def test_a_plugin_process_loads_no_host_runner_resilience_or_network_code() -> None:
    code = (
        "import sys, json\n"
        "sys.path[:0] = ['examples/kv']\n"
        "from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin\n"
        "from plugbay import ServeConfig, serve, GRPCPlugin, GRPCBroker, HandshakeConfig, PlugbayError\n"
        "import plugbay.core.plugin.server\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('plugbay'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=SRC.parent, check=True).stdout
    loaded = json.loads(out)
    assert "plugbay.core.plugin.server" in loaded
    banned = [m for m in loaded if m.startswith(("plugbay.core.host", "plugbay.core.resilience",
                                                  "plugbay.runners", "plugbay.network", "plugbay.cli",
                                                  "plugbay.testing"))]
    assert banned == []


def test_the_export_table_is_exactly_the_type_checking_imports() -> None:
    # plugbay/__init__.py reads its TYPE_CHECKING block line by line (no ast at a plugin's start);
    # what it reads must be what Python (and mypy) see there, every name resolving at run time.
    import plugbay

    tree = ast.parse((SRC / "plugbay" / "__init__.py").read_text())
    expected: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module, ast.dump(imp)
                expected.update((alias.asname or alias.name, imp.module) for alias in imp.names)
    assert len(expected) > 40
    assert plugbay._EXPORTS == expected
    assert plugbay.__all__ == sorted(expected) + ["__version__"]
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        getattr(plugbay, "NoSuchName")


@pytest.mark.parametrize("package", ["core", "core/protocol", "core/transport", "core/broker", "core/host",
                                     "core/plugin", "core/resilience", "runners", "runners/docker",
                                     "runners/kubernetes", "network"])
def test_each_layer_says_what_it_holds_and_may_import(package: str) -> None:
    doc = ast.get_docstring(ast.parse((SRC / "plugbay" / package / "__init__.py").read_text()))
    assert doc and "Imports" in doc or doc and "import" in doc, f"{package}/__init__.py needs its docstring"


_SERVE_AND_LIST_MODULES = (
    "import json, sys\n"
    "sys.path[:0] = ['examples/kv']\n"
    "from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin\n"
    "from plugbay import ServeConfig, serve\n"
    "class Mem:\n"
    "    data = {}\n"
    "    def put(self, key, value): self.data[key] = value\n"
    "    def get(self, key): return self.data[key]\n"
    "serve(ServeConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin(Mem())}))\n"
    "with open(sys.argv[1], 'w') as f: json.dump(sorted(sys.modules), f)\n"
)


def _served_modules(tmp_path: Path, client_cert: str | None) -> list[str]:
    """Serve the KV plugin (a Put and a Get when plaintext), stop it; the modules it had loaded."""
    import os
    import signal

    import grpc

    sys.path.insert(0, str(SRC.parent / "examples" / "kv"))
    from kvproto import kv_pb2, kv_pb2_grpc

    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGIN_")}
    env.update(BASIC_PLUGIN="hello", PLUGIN_PROTOCOL_VERSIONS="1", PYTHONPATH=str(SRC))
    if client_cert is not None:
        env["PLUGIN_CLIENT_CERT"] = client_cert
    report = tmp_path / "modules.json"
    proc = subprocess.Popen([sys.executable, "-c", _SERVE_AND_LIST_MODULES, str(report)], cwd=SRC.parent,
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        parts = proc.stdout.readline().strip().split("|")
        assert parts[2:5] == ["unix", parts[3], "grpc"], parts
        if client_cert is None:
            with grpc.insecure_channel(f"unix:{parts[3]}") as channel:
                stub = kv_pb2_grpc.KVStub(channel)
                stub.Put(kv_pb2.PutRequest(key="k", value=b"v"), timeout=10)
                assert stub.Get(kv_pb2.GetRequest(key="k"), timeout=10).value == b"v"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    return list(json.loads(report.read_text()))


def test_a_plugin_without_a_client_cert_never_loads_cryptography(tmp_path: Path) -> None:
    # cryptography is the plugin side's largest import; only AutoMTLS needs it.
    loaded = _served_modules(tmp_path, None)
    assert "plugbay.core.plugin.server" in loaded
    assert [m for m in loaded if m.split(".")[0] == "cryptography"] == []


def test_a_plaintext_plugin_loads_no_tls_relay_multiplexer_or_network_front(tmp_path: Path) -> None:
    # A plugin its host launches without AutoMTLS or multiplexing needs none of these; importing
    # them where they are used keeps its start close to a bare grpcio server's.
    loaded = _served_modules(tmp_path, None)
    assert "plugbay.core.plugin.server" in loaded
    unused = ("plugbay.core.transport.relay", "plugbay.core.transport.mux", "plugbay.core.transport.yamux",
              "plugbay.core.transport.muxsession", "plugbay.core.transport.muxplugin",
              "plugbay.core.transport.muxhost", "plugbay.core.transport.muxbridge",
              "plugbay.core.transport.admit", "plugbay.core.transport.certfiles", "plugbay.core.plugin.netmux",
              "plugbay.core.plugin.frontsession",
              "plugbay.core.plugin.network", "plugbay._proto.plugbay.discovery_pb2",
              # TLS and the brokered connections' code: only AutoMTLS and a first brokered connection
              "plugbay.core.plugin.automtls", "plugbay.core.transport.secure", "plugbay.core.protocol.tls",
              "plugbay.core.protocol.der",
              "plugbay.core.broker.channels", "plugbay.core.transport.channels",
              # generated code of the services a go-plugin host may never call: loaded at their first call
              "plugbay._proto.grpc.health.v1.health_pb2", "plugbay._proto.plugin.grpc_controller_pb2",
              "plugbay._proto.plugin.grpc_stdio_pb2", "google.protobuf.empty_pb2")
    assert [m for m in unused if m in loaded] == []
    # nor the dataclasses machinery: the start path's value classes are plain (core/protocol/records.py)
    assert "dataclasses" not in loaded
    # nor secrets, whose hmac and hashlib (OpenSSL's digests set up) cost a start ~8M instructions: random
    # names come from os.urandom, and only a network host's pool compares tokens (core/protocol/notsent.py)
    assert [m for m in ("secrets", "hmac", "hashlib") if m in loaded] == []


@pytest.mark.parametrize("curve", ["p256", "p521"])
def test_a_plugin_given_a_client_cert_makes_its_key_with_ssls_libcrypto(tmp_path: Path, curve: str) -> None:
    # AutoMTLS behind grpcio's TLS (a Python host's P-256 cert) and behind the relay (a Go host's
    # P-521): the plugin's key and signature come from the libcrypto ssl already loaded, through
    # ctypes (core/protocol/libcrypto.py); cryptography stays out of the plugin process.
    from cryptography.hazmat.primitives.asymmetric import ec

    from plugbay.core.protocol import libcrypto
    from plugbay.core.protocol.tls import generate_cert

    if not libcrypto.mapped_libcrypto():
        pytest.skip("this Python's ssl has OpenSSL linked in statically: the plugin uses cryptography")
    client = generate_cert(ec.SECP521R1() if curve == "p521" else None)
    loaded = _served_modules(tmp_path, client.cert_pem.decode())
    assert "plugbay.core.protocol.libcrypto" in loaded and "ctypes" in loaded
    assert [m for m in loaded if m.split(".")[0] == "cryptography"] == []
    assert ("plugbay.core.transport.relay" in loaded) == (curve == "p521")
    # and the AutoMTLS value classes (CertKey, MutualTLS, SecureChannel) are plain classes too
    assert "dataclasses" not in loaded


def test_without_libcrypto_cryptography_makes_the_key_but_not_its_x509_package() -> None:
    # The fallback (a Python with OpenSSL linked in statically): only cryptography's ``ec`` module;
    # the certificate is plugbay's own DER (core/protocol/der.py), so the x509 package (the bulk
    # of cryptography's import) stays out.
    probe = ("import sys\n"
             "from plugbay.core.protocol import der, tls\n"
             "own = tls.make_cert('1.2.840.10045.3.1.7', None)\n"
             "assert der.certificate_key(tls.pem_to_der(own.cert_pem))[1] == '1.2.840.10045.3.1.7'\n"
             "print(' '.join(sorted(m for m in sys.modules if m.startswith(('cryptography', 'ctypes')))))\n")
    out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": str(SRC)},
                         capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert "cryptography.hazmat.primitives.asymmetric.ec" in out
    assert [m for m in out if m.startswith("cryptography.x509")] == []
    assert "ctypes" not in out  # nothing looked for libcrypto on this path
