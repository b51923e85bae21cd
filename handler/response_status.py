"""Which HTTP status each request of a batch gets, when the handler answers per item.

Normally TorchServe hands the handler one item per HTTP request, and a failed item's request gets that item's
status (context.set_response_status(code, phrase, index)). Behind a request envelope (config/kserve.properties:
service_envelope=kserve) one request's JSON document is unpacked into many items, {"instances": [a, b, c]}, while
the context still holds one request: setting a status for item 1 or 2 would raise IndexError and fail the
whole request with 503. There the one response answers for every instance, each prediction carrying its own
error object, so its status is 200 when any instance was scored and the first failure's when none was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from handler.verdict import STATUS_PHRASES

OK = 200


def request_statuses(item_statuses: Sequence[int], requests: int) -> dict[int, int]:
    """The status to set per request index, for the requests that do not answer 200.

    Args:
        item_statuses: the status of each item the handler answered, in order (200 for a scored one).
        requests: the HTTP requests the context holds.

    """
    if requests == len(item_statuses):  # one item per request: TorchServe's own batching
        return {index: status for index, status in enumerate(item_statuses) if status != OK}
    if requests == 1 and item_statuses and OK not in item_statuses:  # one envelope request, nothing scored
        return {0: item_statuses[0]}
    return {}


def report_statuses(context: Any, item_statuses: Sequence[int]) -> None:
    """Sets the HTTP status of each request of the batch on the TorchServe context (see request_statuses).

    A context without request processors (one built by hand) is taken to hold one request per item.
    """
    processors = getattr(context, "request_processor", None)
    requests = len(item_statuses) if processors is None else len(processors)
    for index, status in request_statuses(item_statuses, requests).items():
        context.set_response_status(status, STATUS_PHRASES.get(status, ""), index)
