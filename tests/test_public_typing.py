"""What a user's type checker sees of the public API, in strict mode.

The package ships py.typed. Its top-level names are imported lazily at run time
(plugbay/__init__.py's export table), so they must also be explicit re-exports for
mypy --strict (no implicit re-export), or every ``from plugbay import Client`` in a
strictly checked program is an error.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import plugbay
import plugbay.network

PROGRAM = '''
from plugbay import {names}
from plugbay.network import {network}

def start(config: ClientConfig) -> Client:
    return Client(config)

remote: RemoteClient = connect("static:///127.0.0.1:1", handshake=HandshakeConfig(1, "K", "V"))
'''


def test_every_public_name_type_checks_under_mypy_strict(tmp_path: Path) -> None:
    names = sorted(n for n in plugbay.__all__ if n != "__version__")
    network = sorted(plugbay.network._NAMES)
    (tmp_path / "user.py").write_text(PROGRAM.format(names=", ".join(names), network=", ".join(network)))
    (tmp_path / "mypy.ini").write_text("[mypy]\nstrict = True\n")
    out = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), "user.py"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success" in out.stdout
