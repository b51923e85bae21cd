"""scripts/grpc_stubs.py: stubs generated from the installed TorchServe jar, regenerated only when needed."""

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from scripts.grpc_stubs import GENERATED_FILES, STAMP_FILENAME, generate, server_jar

REPO_ROOT = Path(__file__).resolve().parents[2]


def file_identities(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) per generated file: a rewrite (os.replace of a new file) changes the inode."""
    return {name: ((folder / name).stat().st_ino, (folder / name).stat().st_mtime_ns) for name in GENERATED_FILES}


def import_in_subprocess(out_dir: Path) -> dict:
    """Loads the stubs in a fresh interpreter (the names are top-level modules, so one process imports one copy)."""
    code = f"""
import json
from pathlib import Path
from scripts.grpc_stubs import load_stubs
stubs = load_stubs(Path({str(out_dir)!r}))
request = stubs["inference_pb2"].PredictionsRequest(model_name="m", model_version="2", input={{"data": b"x"}})
scale = stubs["management_pb2"].ScaleWorkerRequest(model_name="m", min_worker=2, synchronous=True)
print(json.dumps({{
    "files": {{name: module.__file__ for name, module in stubs.items()}},
    "inference_stub": hasattr(stubs["inference_pb2_grpc"], "InferenceAPIsServiceStub"),
    "management_stub": hasattr(stubs["management_pb2_grpc"], "ManagementAPIsServiceStub"),
    "inference_methods": sorted(stubs["inference_pb2"].DESCRIPTOR.services_by_name["InferenceAPIsService"]
                                .methods_by_name),
    "management_methods": sorted(stubs["management_pb2"].DESCRIPTOR.services_by_name["ManagementAPIsService"]
                                 .methods_by_name),
    "request_roundtrip": stubs["inference_pb2"].PredictionsRequest.FromString(request.SerializeToString()) == request,
    "scale_synchronous": scale.synchronous,
}}))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def stubs_dir(tmp_path: Path) -> Path:
    return generate(tmp_path / "stubs")


def test_generates_every_module_stamped_with_the_jar_digest(stubs_dir):
    assert sorted(path.name for path in stubs_dir.iterdir()) == sorted([*GENERATED_FILES, STAMP_FILENAME])
    assert (stubs_dir / STAMP_FILENAME).read_text().strip() == hashlib.sha256(server_jar().read_bytes()).hexdigest()
    with zipfile.ZipFile(server_jar()) as archive:  # the stubs carry the jar's services, not a copy kept elsewhere
        assert "rpc Predictions(PredictionsRequest)" in archive.read("proto/inference.proto").decode()
    assert "def Predictions(" in (stubs_dir / "inference_pb2_grpc.py").read_text()


def test_generated_modules_import_and_expose_both_service_stubs(stubs_dir):
    loaded = import_in_subprocess(stubs_dir)
    assert {Path(file).parent for file in loaded["files"].values()} == {stubs_dir}
    assert loaded["inference_stub"] and loaded["management_stub"]
    assert loaded["inference_methods"] == ["Ping", "Predictions", "StreamPredictions", "StreamPredictions2"]
    assert {"DescribeModel", "ListModels", "ScaleWorker"} <= set(loaded["management_methods"])
    assert loaded["request_roundtrip"] and loaded["scale_synchronous"]


def test_up_to_date_stubs_are_left_alone_and_force_rewrites_them(stubs_dir):
    before = file_identities(stubs_dir)
    assert generate(stubs_dir) == stubs_dir
    assert file_identities(stubs_dir) == before
    generate(stubs_dir, force=True)
    after = file_identities(stubs_dir)
    assert all(after[name][0] != before[name][0] for name in GENERATED_FILES)


@pytest.mark.parametrize("damage", ["missing_module", "stale_stamp", "missing_stamp"])
def test_missing_or_stale_stubs_are_regenerated(stubs_dir, damage):
    reference = {name: (stubs_dir / name).read_bytes() for name in GENERATED_FILES}
    digest = (stubs_dir / STAMP_FILENAME).read_text()
    if damage == "missing_module":
        (stubs_dir / "management_pb2_grpc.py").unlink()
    elif damage == "stale_stamp":
        (stubs_dir / STAMP_FILENAME).write_text("0" * 64 + "\n")  # stubs of another torchserve version
    else:
        (stubs_dir / STAMP_FILENAME).unlink()
    before = {name: (stubs_dir / name).stat().st_ino for name in GENERATED_FILES if (stubs_dir / name).exists()}
    generate(stubs_dir)
    assert {name: (stubs_dir / name).read_bytes() for name in GENERATED_FILES} == reference
    assert (stubs_dir / STAMP_FILENAME).read_text() == digest
    assert all((stubs_dir / name).stat().st_ino != inode for name, inode in before.items())  # rewritten, not kept
    assert not [path for path in stubs_dir.iterdir() if path.name.startswith(".protoc-")]  # scratch removed


def test_load_stubs_generates_into_an_empty_folder(tmp_path):
    loaded = import_in_subprocess(tmp_path / "fresh")
    assert loaded["inference_stub"] and (tmp_path / "fresh" / STAMP_FILENAME).is_file()


def test_cli_generates_and_has_help(tmp_path):
    help_run = subprocess.run([sys.executable, "-m", "scripts.grpc_stubs", "--help"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=60)
    assert help_run.returncode == 0 and "--force" in help_run.stdout
    run = subprocess.run([sys.executable, "-m", "scripts.grpc_stubs", "--out", str(tmp_path / "cli")], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"in {tmp_path / 'cli'}" in run.stdout
    assert all((tmp_path / "cli" / name).is_file() for name in GENERATED_FILES)
