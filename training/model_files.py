"""Writing model files so that a full disk is an ordinary Python error and never leaves half a file.

torch.jit.save to a path aborts the whole process when a write fails: PyTorchStreamWriter throws from its
destructor and C++ calls std::terminate ("terminate called after throwing an instance of 'c10::Error'"),
which no `except` can catch. Serialising into memory first (the same bytes) and writing those with Python's
file I/O turns ENOSPC into an OSError that names the file. Writing to a sibling and renaming it into place
means a failed write keeps the previous file: the last good checkpoint survives a full disk at epoch 7.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from handler.torchscript import torchscript_deprecation_silenced

PARTIAL_SUFFIX = ".partial"


def write_atomically(path: Path, data: bytes) -> None:
    """Writes `data` to path via path + PARTIAL_SUFFIX and a rename; on any error nothing at `path` changes.

    Raises:
        OSError: the write failed (ENOSPC, EFBIG, EACCES...); the message names the file and its size.

    """
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        with partial.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())  # a rename must not publish data still in the page cache after a crash
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise OSError(error.errno, f"could not write {path} ({len(data) / 1e6:.1f} MB): {error.strerror}; "
                                   f"the previous file, if any, is unchanged") from error
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def torchscript_bytes(module: torch.jit.ScriptModule) -> bytes:
    """The bytes torch.jit.save would write for `module`."""
    buffer = io.BytesIO()
    with torchscript_deprecation_silenced():
        torch.jit.save(module, buffer)
    return buffer.getvalue()


def save_torchscript(module: torch.jit.ScriptModule, path: Path) -> None:
    """torch.jit.save(module, path), except that a failed write raises OSError instead of aborting."""
    write_atomically(path, torchscript_bytes(module))


def save_checkpoint(checkpoint: dict[str, Any], path: Path) -> None:
    """torch.save(checkpoint, path), written atomically (the previous checkpoint survives a failed write)."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    write_atomically(path, buffer.getvalue())
