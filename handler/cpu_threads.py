"""How many CPU threads one TorchServe worker may use, so that workers × threads ≈ cores.

Every worker is its own process with its own torch and OpenCV thread pools, each sized to all
cores by default: four workers on four cores would run sixteen busy threads and spend their time
switching. The arithmetic is pure (and tested as such); applying it is one small side-effecting step.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import torch

logger = logging.getLogger(__name__)


CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def _cgroup_paths(proc_cgroup: Path) -> dict[str, str]:
    """Maps each cgroup controller ("" for the unified v2 hierarchy) to this process's path in it."""
    paths: dict[str, str] = {}
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") or [""]:
            paths[controller] = path.lstrip("/")
    return paths


def _read(file: Path) -> str | None:
    try:
        return file.read_text().strip()
    except OSError:
        return None


def cpu_quota_cores(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> float | None:
    """The CPU time this process's cgroup may use, in cores (Kubernetes' limits.cpu, docker --cpus), or None.

    A CPU limit is a quota, not an affinity: a pod limited to 4 CPUs on a 64-core node still sees 64 cores in its
    affinity, and sizing thread pools to them makes the kernel throttle the worker most of each period. cgroup v2
    (cpu.max: "QUOTA PERIOD" or "max ...") is read first, then v1 (cpu.cfs_quota_us, -1 = none), each in this
    process's own cgroup and, where the container's cgroup namespace hides that path, at the root.
    """
    paths = _cgroup_paths(proc_cgroup)
    for folder in dict.fromkeys([cgroup_root / paths.get("", ""), cgroup_root]):
        fields = (_read(folder / "cpu.max") or "").split()
        if len(fields) == 2:
            return None if fields[0] == "max" else int(fields[0]) / int(fields[1])
    for folder in dict.fromkeys([cgroup_root / "cpu" / paths.get("cpu", ""), cgroup_root / "cpu"]):
        quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            return None if int(quota) <= 0 else int(quota) / int(period)
    return None


def available_cores() -> int:
    """Cores this process may keep busy, at least 1.

    Its CPU affinity (which taskset and cpusets narrow), capped by its cgroup's CPU quota (which container limits
    set), rounded down.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cpu_quota_cores()
    if quota is not None:
        cores = min(cores, int(quota))
    return max(1, cores)


def most_concurrent_workers(model_yaml_config: Mapping[str, Any] | None, cores: int) -> int:
    """The most workers of this model that can run at once: maxWorkers (never below minWorkers).

    Dividing by minWorkers would oversubscribe as soon as TorchServe scales up. Without either key
    TorchServe starts one worker per core on a CPU host, so that is the assumption then.
    """
    config = model_yaml_config or {}
    declared = [int(config[key]) for key in ("minWorkers", "maxWorkers") if config.get(key) is not None]
    return max(1, max(declared)) if declared else max(1, cores)


def threads_per_worker(cores: int, workers: int, configured: int = 0) -> int:
    """Threads for one worker: `configured` when set (> 0), else an equal share of the cores, at least 1."""
    if configured > 0:
        return configured
    return max(1, cores // max(1, workers))


def apply_cpu_threads(threads: int) -> None:
    """Sizes torch's and OpenCV's pools for this worker process.

    torch's inter-op pool (parallel TorchScript forks; one forward pass of a CNN does not use it) is set
    to 1 only while that is still allowed: torch raises once any parallel work has run in the process,
    and a worker that cannot shrink it is still correct, only less tidy.
    """
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    if torch.get_num_interop_threads() != 1:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError as error:
            logger.info("torch inter-op threads stay at %d: %s", torch.get_num_interop_threads(), error)
