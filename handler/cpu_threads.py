"""How many CPU threads one TorchServe worker may use, so that workers × threads ≈ cores.

Every worker is its own process with its own torch and OpenCV thread pools, each sized to all
cores by default: four workers on four cores would run sixteen busy threads and spend their time
switching. The arithmetic is pure (and tested as such); applying it is one small side-effecting step.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import cv2
import torch

logger = logging.getLogger(__name__)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


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
