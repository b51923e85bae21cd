import os
from pathlib import Path

import cv2
import pytest
import torch

from handler.cpu_threads import (
    apply_cpu_threads,
    available_cores,
    cpu_quota_cores,
    most_concurrent_workers,
    threads_per_worker,
)


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


def test_available_cores_is_the_affinity_of_this_process_capped_by_its_cpu_quota():
    # Linux: the CPUs this process may run on (what taskset and container cpusets narrow), not the machine's,
    # and no more than its cgroup's quota (none on the CI machine: there this is the affinity).
    quota = cpu_quota_cores()
    expected = len(os.sched_getaffinity(0)) if quota is None else min(len(os.sched_getaffinity(0)), int(quota))
    assert available_cores() == max(1, expected) >= 1


def write_files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


@pytest.mark.parametrize(("files", "proc_cgroup", "expected"), [
    ({"cpu.max": "400000 100000\n"}, "0::/\n", 4.0),  # cgroup v2, a container with limits.cpu: 4
    ({"cpu.max": "max 100000\n"}, "0::/\n", None),  # v2 without a limit
    ({"kubepods/pod1/cpu.max": "150000 100000\n", "cpu.max": "max 100000\n"}, "0::/kubepods/pod1\n", 1.5),
    ({"cpu.max": "200000 100000\n"}, "0::/hidden/by/namespace\n", 2.0),  # path not visible: the root's
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, "3:cpu,cpuacct:/\n", 3.0),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "3:cpu,cpuacct:/\n", None),
    ({"cpu/docker/abc/cpu.cfs_quota_us": "50000\n", "cpu/docker/abc/cpu.cfs_period_us": "100000\n"},
     "3:cpu,cpuacct:/docker/abc\n", 0.5),
    ({}, "0::/\n", None),  # no cgroup files at all (not Linux, or not mounted)
])
def test_cpu_quota_is_read_from_cgroup_v2_then_v1(tmp_path, files, proc_cgroup, expected):
    write_files(tmp_path / "cgroup", files)
    (tmp_path / "proc_cgroup").write_text(proc_cgroup)
    assert cpu_quota_cores(tmp_path / "cgroup", tmp_path / "proc_cgroup") == expected


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
