"""Generates TorchServe's gRPC Python stubs from the protos inside the installed torchserve wheel.

The wheel ships no generated code, but `ts/frontend/model-server.jar` carries `inference.proto` and
`management.proto` (and `google/rpc/status.proto`, whose Python module comes from
googleapis-common-protos). Generating from the jar of the installed server keeps the stubs in step
with the server they talk to. The output is a build artefact (build/grpc_stubs/, gitignored),
recreated by `make setup` or on first use.

Usage:
    python -m scripts.grpc_stubs [--out build/grpc_stubs] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import os
import sys
import tempfile
import zipfile
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STUB_DIR = REPO_ROOT / "build" / "grpc_stubs"
PROTOS = ("inference.proto", "management.proto")
STAMP_FILENAME = "jar.sha256"
GENERATED_FILES = tuple(f"{Path(name).stem}{suffix}" for name in PROTOS for suffix in ("_pb2.py", "_pb2_grpc.py"))


def server_jar() -> Path:
    """The frontend jar of the torchserve package this interpreter imports."""
    import ts

    jar = Path(ts.__file__).parent / "frontend" / "model-server.jar"
    if not jar.is_file():
        raise FileNotFoundError(f"{jar} not found; is torchserve installed in this environment?")
    return jar


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def generate(out_dir: Path = DEFAULT_STUB_DIR, force: bool = False) -> Path:
    """Writes inference_pb2(_grpc).py and management_pb2(_grpc).py into out_dir; returns out_dir.

    Skipped when out_dir already holds stubs generated from the same jar (by SHA-256). protoc writes
    into a scratch folder inside out_dir and each file is then renamed into place, stamp last, so a
    process importing the stubs while another regenerates them (a CLI started by a test, say) never
    reads a half-written module.

    Raises:
        RuntimeError: protoc reported an error.

    """
    from grpc_tools import protoc

    jar = server_jar()
    digest = _sha256(jar)
    stamp = out_dir / STAMP_FILENAME
    if not force and is_up_to_date(out_dir, digest):
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".protoc-", dir=out_dir) as scratch, zipfile.ZipFile(jar) as archive:
        proto_dir = Path(scratch) / "protos"
        generated = Path(scratch) / "generated"
        (proto_dir / "google" / "rpc").mkdir(parents=True)
        generated.mkdir()
        for name in PROTOS:
            (proto_dir / name).write_bytes(archive.read(f"proto/{name}"))
        (proto_dir / "google" / "rpc" / "status.proto").write_bytes(archive.read("google/rpc/status.proto"))
        well_known = Path(protoc.__file__).parent / "_proto"  # google/protobuf/empty.proto and friends
        arguments = ["grpc_tools.protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={generated}",
                     f"--grpc_python_out={generated}", *(str(proto_dir / name) for name in PROTOS)]
        if protoc.main(arguments) != 0:
            raise RuntimeError(f"grpc_tools.protoc failed on {', '.join(PROTOS)} from {jar}")
        stamp.unlink(missing_ok=True)
        for name in GENERATED_FILES:
            os.replace(generated / name, out_dir / name)
        (generated / STAMP_FILENAME).write_text(digest + "\n")
        os.replace(generated / STAMP_FILENAME, stamp)
    return out_dir


def is_up_to_date(out_dir: Path, digest: str) -> bool:
    """True when out_dir holds every generated module and its stamp names the jar with this SHA-256."""
    try:
        stamped = (out_dir / STAMP_FILENAME).read_text().strip()
    except FileNotFoundError:  # never generated, or another process is regenerating right now
        return False
    return stamped == digest and all((out_dir / name).is_file() for name in GENERATED_FILES)


def load_stubs(out_dir: Path = DEFAULT_STUB_DIR) -> dict[str, ModuleType]:
    """Imports the generated modules (generating them first if needed).

    Returns:
        {"inference_pb2", "inference_pb2_grpc", "management_pb2", "management_pb2_grpc"} → module.

    """
    generate(out_dir)
    if str(out_dir) not in sys.path:
        sys.path.insert(0, str(out_dir))  # the generated *_grpc modules import their *_pb2 siblings top-level
    names = [f"{Path(name).stem}{suffix}" for name in PROTOS for suffix in ("_pb2", "_pb2_grpc")]
    return {name: importlib.import_module(name) for name in names}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_STUB_DIR)
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args(argv)
    out = generate(args.out, force=args.force)
    print(f"gRPC stubs for torchserve {importlib.metadata.version('torchserve')} in {out}")


if __name__ == "__main__":
    main()
