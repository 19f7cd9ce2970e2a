"""Generate Python code from protos/ (or, with --check, fail when it is stale).

    python scripts/genproto.py          # regenerate
    python scripts/genproto.py --check  # exit 1 and list stale files

go-plugin's internal protos (protos/plugin, protos/grpc) go into the package at
src/plugbay/_proto; each example's protos go beside the example. grpc_tools
writes absolute imports ("from plugin import x_pb2"); they are rewritten to be
relative so the generated modules live inside packages.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]
import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"

# (proto files relative to protos/, include root, output dir)
TARGETS: list[tuple[list[str], Path, Path]] = [
    (["plugin/grpc_broker.proto", "plugin/grpc_controller.proto", "plugin/grpc_stdio.proto",
      "grpc/health/v1/health.proto", "plugbay/discovery.proto"], PROTOS, ROOT / "src/plugbay/_proto"),
]

# Example protos: protos/examples/<name>.proto -> examples/<name>/<name>proto/ (a package, so
# examples for several plugins can be imported in one process without clashing).
for _p in sorted((PROTOS / "examples").glob("*.proto")):
    TARGETS.append(([_p.name], PROTOS / "examples", ROOT / "examples" / _p.stem / f"{_p.stem}proto"))


def _fix_imports(path: Path, packages: set[str], example: bool) -> None:
    text = path.read_text()
    for pkg in sorted(packages, key=len, reverse=True):
        dotted = pkg.replace("/", ".")
        # "from plugin import x_pb2" -> relative to the module's own folder
        text = re.sub(rf"^from {re.escape(dotted)} import ", "from . import ", text, flags=re.M)
    if example:
        # example modules sit next to each other: "import kv_pb2 as" -> relative
        text = re.sub(r"^import (\w+_pb2) as ", r"from . import \1 as ", text, flags=re.M)
        # go-plugin's examples all use proto package "proto" (kv and counter both define
        # proto.GetRequest), so each self-contained example file gets its own descriptor
        # pool; the wire names are unchanged. A file that imports others needs the shared pool.
        if path.name.endswith("_pb2.py") and "_pb2 as " not in text:
            text = text.replace("_descriptor_pool.Default().AddSerializedFile(",
                                "_descriptor_pool.DescriptorPool().AddSerializedFile(")
    path.write_text(text)


def generate(out_root: Path) -> list[Path]:
    written: list[Path] = []
    well_known = str(Path(grpc_tools.__file__).parent / "_proto")
    for files, include, outdir in TARGETS:
        target = out_root / outdir.relative_to(ROOT)
        target.mkdir(parents=True, exist_ok=True)
        (target / "__init__.py").touch()
        args = ["protoc", f"-I{include}", f"-I{well_known}", f"--python_out={target}",
                f"--pyi_out={target}", f"--grpc_python_out={target}", *files]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed for {files}")
        pkgs = {str(Path(f).parent) for f in files if str(Path(f).parent) != "."}
        for f in files:
            stem = Path(f).with_suffix("")
            for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
                p = target / (str(stem) + suffix)
                if p.exists():
                    _fix_imports(p, pkgs, example=include != PROTOS)
                    written.append(p.relative_to(out_root))
    return written


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    if not args.check:
        generate(ROOT)
        return 0
    with tempfile.TemporaryDirectory(prefix="plugbay-genproto-") as tmp:
        stale = [rel for rel in generate(Path(tmp))
                 if not (ROOT / rel).exists() or not filecmp.cmp(Path(tmp) / rel, ROOT / rel, shallow=False)]
    for rel in stale:
        print(f"stale: {rel}")
    if stale:
        print("run: python scripts/genproto.py")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
