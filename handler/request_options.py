"""Per-request options a client may set next to the image: today only `uncalibrated`.

Where TorchServe 0.12 delivers them (measured on a real server, see tests/handler/test_handler_served.py):
- multipart form field `uncalibrated=true`: a row key, bytes;
- JSON body `{"data": "<base64>", "uncalibrated": true}`: a key of the parsed dict (bool, number or str);
- query parameter on `POST /invocations?model_name=deepfake&uncalibrated=true` or
  `POST /deepfake/predict?uncalibrated=true`: a row key, bytes;
- request header `X-Uncalibrated: true`: the request's headers (names case-insensitive).
`POST /predictions/deepfake?uncalibrated=true` does NOT reach the handler: that route hands the worker
no query parameters at all, so clients of /predictions use the header, a form field or the JSON key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from handler.forensics import ImageDecodeError

UNCALIBRATED = "uncalibrated"
UNCALIBRATED_HEADER = "x-uncalibrated"
UNCALIBRATED_HEADER_NAME = "X-Uncalibrated"  # as error messages name it
OPTION_NAMES = (UNCALIBRATED,)
TRUE_WORDS = frozenset({"true", "1", "yes"})
FALSE_WORDS = frozenset({"false", "0", "no"})


@dataclass(frozen=True)
class RequestOptions:
    """What one request asked for besides its verdict.

    Attributes:
        uncalibrated: also return the model's raw softmax, before calibration. The label, confidence
            and borderline flag stay calibrated, because the threshold was chosen on calibrated scores.

    """

    uncalibrated: bool = False


def parse_flag(name: str, value: Any, field: str | None = None) -> bool:
    """A yes/no option from any transport: bool, 0/1, or true/1/yes/false/0/no as text or bytes (any case).

    Args:
        name: the option.
        value: what the request carried.
        field: where the request carried it, when not under the option's own name (the X-Uncalibrated header).

    Raises:
        ImageDecodeError: code "invalid_option", naming the option, where it was set and the accepted values.

    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    shown = repr(value[:40]) if isinstance(value, str) else f"a value of type {type(value).__name__}"
    where = f" (header {field})" if field and field != name else ""
    raise ImageDecodeError("invalid_option", f"option '{name}'{where} must be one of true, 1, yes, false, 0, no; "
                           f"got {shown}", field or name)


def _header(headers: Mapping[str, Any], name: str) -> Any:
    """A request header by case-insensitive name; TorchServe also keys per-field dicts in there, which are skipped."""
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name and isinstance(value, (str, bytes, bytearray)):
            return value
    return None


def request_options(row: Mapping[str, Any], headers: Mapping[str, Any] | None = None) -> RequestOptions:
    """The options of one request, from its row (form field, query parameter, JSON key) and its headers.

    An option set in several places is on when any of them says so; a value that is not a yes/no word
    anywhere is refused, so a typo such as `uncalibrated=ture` never passes silently.

    Raises:
        ImageDecodeError: code "invalid_option".

    """
    if not isinstance(row, Mapping):  # not something TorchServe sends; the image lookup will refuse the item
        return RequestOptions()
    sources = [(UNCALIBRATED, row.get(UNCALIBRATED))]  # (where the request set it, the value)
    body = row.get("body")
    if isinstance(body, Mapping):
        sources.append((UNCALIBRATED, body.get(UNCALIBRATED)))
    sources.append((UNCALIBRATED_HEADER_NAME, _header(headers or {}, UNCALIBRATED_HEADER)))
    flags = [parse_flag(UNCALIBRATED, value, field) for field, value in sources if value is not None]
    return RequestOptions(uncalibrated=any(flags))
