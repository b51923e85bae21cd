"""Fixtures shared by the benchmark tests."""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import pytest
import torch


@pytest.fixture
def restore_thread_counts() -> Iterator[None]:
    """The measurements set torch's and OpenCV's process-wide thread counts; later tests must not inherit them."""
    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    yield
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv2_threads)
