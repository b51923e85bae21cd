"""benchmarks/inprocess.py on the tiny export: every measurement runs and gives sane, positive figures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.inprocess import (
    InProcessConfig,
    forward_throughput,
    per_core_pipeline_throughput,
    per_core_throughput,
    pipeline_latency_ms,
    pipeline_throughput,
)

pytestmark = pytest.mark.usefixtures("restore_thread_counts")


@pytest.fixture(scope="module")
def config(tiny_export) -> InProcessConfig:
    return InProcessConfig(tiny_export, batch_sizes=(1, 2), seconds=0.05, repeats=1, cores=2)


@pytest.fixture(scope="module")
def images(tiny_dataset) -> list[bytes]:
    files = sorted((tiny_dataset / "real").glob("*.jpg"))[:2] + sorted((tiny_dataset / "fake").glob("*.jpg"))[:2]
    return [Path(path).read_bytes() for path in files]


def test_forward_throughput_gives_a_positive_rate_per_batch_size(config):
    rates = forward_throughput(config, threads=1)
    assert list(rates) == list(config.batch_sizes)
    assert all(rate > 0 for rate in rates.values())
    assert torch.get_num_threads() == 1  # measured with the threads asked for


def test_per_core_throughput_runs_one_process_per_core(config):
    rates = per_core_throughput(config)
    assert list(rates) == list(config.batch_sizes)
    assert all(rate > 0 for rate in rates.values())


def test_pipeline_latency_is_positive_with_p50_at_most_p95(config, images):
    latency = pipeline_latency_ms(config, images, passes=2)
    assert set(latency) == {"p50", "p95", "mean"}
    assert 0 < latency["p50"] <= latency["p95"]
    assert latency["mean"] > 0


def test_pipeline_throughput_is_positive(config, images):
    assert pipeline_throughput(config, images, batch_size=2) > 0


def test_per_core_pipeline_throughput_is_positive(config, images):
    assert per_core_pipeline_throughput(config, images, batch_size=2) > 0
