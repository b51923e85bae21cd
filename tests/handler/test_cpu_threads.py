import os

import cv2
import pytest
import torch

from handler.cpu_threads import apply_cpu_threads, available_cores, most_concurrent_workers, threads_per_worker


@pytest.mark.parametrize(("cores", "workers", "configured", "expected"), [
    (16, 4, 0, 4), (16, 3, 0, 5), (2, 1, 0, 2), (2, 4, 0, 1), (1, 1, 0, 1), (8, 0, 0, 8), (16, 4, 6, 6), (2, 2, 1, 1),
])
def test_threads_share_the_cores_between_workers(cores, workers, configured, expected):
    assert threads_per_worker(cores, workers, configured) == expected


@pytest.mark.parametrize(("model_config", "expected"), [
    ({"minWorkers": 1, "maxWorkers": 4}, 4),  # TorchServe may scale up to 4: divide by 4, not 1
    ({"minWorkers": 2, "maxWorkers": 2}, 2),
    ({"minWorkers": 3}, 3),
    ({"maxWorkers": 5}, 5),
    ({"minWorkers": 4, "maxWorkers": 2}, 4),  # a max below the min cannot hold fewer than min workers
    ({}, 12),  # TorchServe's own default on a CPU host: one worker per core
    (None, 12),
])
def test_most_concurrent_workers_is_the_maximum_that_can_run(model_config, expected):
    assert most_concurrent_workers(model_config, cores=12) == expected


def test_available_cores_is_the_affinity_of_this_process():
    # Linux: the CPUs this process may run on (what taskset and container cpusets narrow), not the machine's.
    assert available_cores() == len(os.sched_getaffinity(0)) >= 1


def test_apply_sizes_torch_and_opencv_and_never_raises_for_the_interop_pool():
    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        torch.ones(256, 256) @ torch.ones(256, 256)  # parallel work has run: set_num_interop_threads would raise
        apply_cpu_threads(1)
        assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
        apply_cpu_threads(2)  # a second call (a second handler in this process) is just as safe
        assert torch.get_num_threads() == 2 and cv2.getNumThreads() == 2
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
