"""handler/response_status.py: per-item statuses mapped onto the requests of a batch, on a real ts Context."""

from __future__ import annotations

import pytest
from ts.context import Context, RequestProcessor

from handler.response_status import report_statuses, request_statuses


def context_with(requests: int) -> Context:
    context = Context("deepfake", "/tmp", {}, requests, None, "0.12.0")
    context.request_processor = [RequestProcessor({}) for _ in range(requests)]
    return context


@pytest.mark.parametrize(("statuses", "requests", "expected"), [
    ([200, 415, 200], 3, {1: 415}),             # TorchServe batching: one request per item
    ([200, 415, 200], 1, {}),                   # an envelope: one request, something scored
    ([415, 400], 1, {0: 415}),                  # an envelope whose every instance failed
    ([413], 1, {0: 413}),                       # one instance: the same either way
    ([200, 200], 1, {}),
    ([], 1, {}),
])
def test_request_statuses(statuses: list[int], requests: int, expected: dict[int, int]) -> None:
    assert request_statuses(statuses, requests) == expected


def test_an_envelope_batch_sets_only_the_one_request_it_has() -> None:
    context = context_with(1)
    report_statuses(context, [200, 415, 200])  # item 1 of a request with three instances: no IndexError
    assert context.get_response_status(0) == (200, None)
    report_statuses(context, [415, 400])
    assert context.get_response_status(0) == (415, "Unsupported Media Type")


def test_a_batch_of_requests_gets_each_failures_status() -> None:
    context = context_with(3)
    report_statuses(context, [200, 413, 400])
    assert [context.get_response_status(index)[0] for index in range(3)] == [200, 413, 400]


def test_a_context_without_request_processors_sets_nothing_it_cannot() -> None:
    context = Context("deepfake", "/tmp", {}, 2, None, "0.12.0")
    report_statuses(context, [200, 415])  # a Context built by hand: TorchServe's setter ignores it, nothing raises
    assert context.request_processor is None
