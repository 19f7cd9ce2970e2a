"""mypy --strict on a user's program that imports the KV example (kv_plugin_def, on the path as a user's own
module), as tests/test_public_typing.py and tests/test_typed_api.py run it: the plugbay under test, and the
example's generated code and grpc (which ship no types) followed no further."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import plugbay

REPO = Path(__file__).resolve().parent.parent
KV_USER_INI = ("[mypy]\nstrict = True\n"
               "[mypy-kvproto.*,grpc.*]\nfollow_imports = skip\n"
               "follow_imports_for_stubs = True\nignore_missing_imports = True\n"
               # the example's servicer subclasses generated code, Any without stubs
               "[mypy-kv_plugin_def]\ndisallow_subclassing_any = False\n")


def mypy_kv_user(folder: Path, *targets: str, more_ini: str = "") -> subprocess.CompletedProcess[str]:
    """mypy run in ``folder`` (its mypy.ini: KV_USER_INI and ``more_ini``) on ``targets``."""
    (folder / "mypy.ini").write_text(KV_USER_INI + more_ini)
    src = str(Path(plugbay.__file__).resolve().parent.parent)  # the plugbay under test, not another checkout
    env = {**os.environ, "PYTHONPATH": src, "MYPYPATH": os.pathsep.join([src, str(REPO / "examples" / "kv")])}
    return subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(folder / "cache"), *targets],
                          cwd=folder, capture_output=True, text=True, timeout=300, env=env)
