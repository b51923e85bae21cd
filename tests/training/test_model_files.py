"""training/model_files.py: model files written whole or not at all, and a failed write is an OSError, not an abort.

A failing write is made real with RLIMIT_FSIZE in a child process: the kernel refuses every byte past the
limit (EFBIG), as a full disk refuses them (ENOSPC), and torch's own writer reacts to both the same way.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from handler.torchscript import load_torchscript, torchscript_deprecation_silenced
from training.model_files import PARTIAL_SUFFIX, save_checkpoint, save_torchscript, write_atomically

REPO_ROOT = Path(__file__).resolve().parents[2]
LIMIT_BYTES = 1 << 20  # the model below is 4 MB

WRITE_UNDER_A_FILE_SIZE_LIMIT = f"""
import json, resource, signal, sys, warnings
from pathlib import Path
import torch
from training.model_files import save_checkpoint, save_torchscript
warnings.simplefilter("ignore", FutureWarning)
how, path = sys.argv[1], Path(sys.argv[2])
module = torch.jit.trace(torch.nn.Linear(1000, 1000), torch.zeros(1, 1000))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit write() fails with EFBIG instead of a signal
resource.setrlimit(resource.RLIMIT_FSIZE, ({LIMIT_BYTES}, {LIMIT_BYTES}))
try:
    if how == "torch.jit.save":
        torch.jit.save(module, str(path))
    elif how == "save_torchscript":
        save_torchscript(module, path)
    else:
        save_checkpoint({{"state_dict": module.state_dict()}}, path)
except OSError as error:
    print(json.dumps({{"errno": error.errno, "message": str(error)}}))
"""


def write_under_limit(how: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WRITE_UNDER_A_FILE_SIZE_LIMIT, how, str(path)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_torch_jit_save_to_a_path_kills_the_process_when_the_write_fails(tmp_path):
    # Why the module exists: this abort took a whole CI run down, with nothing said about which test.
    run = write_under_limit("torch.jit.save", tmp_path / "model.pt")
    assert run.returncode == -signal.SIGABRT, run.stderr[-2000:]
    assert "terminate called" in run.stderr


@pytest.mark.parametrize("how", ["save_torchscript", "save_checkpoint"])
def test_a_failed_write_is_an_oserror_naming_the_file_and_the_old_file_survives(how, tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"the last good file")
    run = write_under_limit(how, path)
    assert run.returncode == 0, run.stderr[-2000:]
    error = json.loads(run.stdout)
    assert error["errno"] == 27  # EFBIG; a full disk gives ENOSPC through the same path
    assert str(path) in error["message"] and re.search(r"\(\d+\.\d MB\)", error["message"])
    assert path.read_bytes() == b"the last good file"
    assert sorted(tmp_path.iterdir()) == [path]  # no partial file left behind


def test_saved_torchscript_loads_and_computes_what_the_module_computes(tmp_path):
    torch.manual_seed(0)
    with torchscript_deprecation_silenced():
        module = torch.jit.trace(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()), torch.zeros(1, 8))
    path = tmp_path / "model.torchscript.pt"
    save_torchscript(module, path)
    inputs = torch.randn(5, 8)
    assert torch.equal(load_torchscript(path, torch.device("cpu"))(inputs), module(inputs))


def test_saved_checkpoint_loads_with_weights_only(tmp_path):
    state = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 7, "metrics": {"roc_auc": 0.9}}
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(state, path)
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(loaded["state_dict"]["w"], state["state_dict"]["w"])
    assert (loaded["epoch"], loaded["metrics"]) == (7, {"roc_auc": 0.9})


def test_write_atomically_replaces_the_file_and_leaves_no_partial(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")
    write_atomically(path, b"new contents")
    assert path.read_bytes() == b"new contents"
    assert not path.with_name(path.name + PARTIAL_SUFFIX).exists()


def test_a_folder_that_cannot_be_written_is_an_oserror_naming_the_file(tmp_path):
    missing = tmp_path / "no such folder" / "model.pt"
    with pytest.raises(OSError, match=re.escape(str(missing))):
        write_atomically(missing, b"x")


def test_training_writes_model_files_only_through_this_module():
    # torch.save / torch.jit.save straight to a path would bring the abort back.
    offenders = [f"{path.relative_to(REPO_ROOT)}:{number}"
                 for folder in ("training", "scripts", "handler")
                 for path in sorted((REPO_ROOT / folder).rglob("*.py")) if path.name != "model_files.py"
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"\btorch\.(jit\.)?save\(", line)]
    assert offenders == []
