"""Finds the image bytes in one TorchServe request row, whatever way the client sent them.

TorchServe hands each request to the handler as a dict: a raw body arrives under "body" (bytes, or
str for a text/* content type); multipart form fields under their own names; a JSON body already
parsed (a dict, or a list/number/str when the client sent one); query parameters of the
/invocations and /{model}/predict routes as extra keys with bytes values. Only some of those keys
hold the image, so the option and routing keys are never taken for it.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from handler.forensics import ImageDecodeError
from handler.request_options import OPTION_NAMES

# Names tried first, in order, for multipart fields and JSON keys.
PREFERRED_FIELDS = ("data", "body", "file", "image", "b64")
# Row keys that are never the image: request options, and the model name /invocations passes along.
NOT_IMAGE_FIELDS = frozenset({*OPTION_NAMES, "model_name"})
# Browsers produce data URLs ("data:image/png;base64,...."); the prefix is not part of the base64.
DATA_URL_PREFIX = re.compile(r"^data:[\w.+/-]*(;[\w=.+-]+)*;base64,", re.IGNORECASE)
WHITESPACE = re.compile(r"\s+")
JSON_EXAMPLE = '{"data": "<base64 image>"}'


def _decode_base64(name: str, value: str) -> bytes:
    """Base64 text → bytes; line breaks (`base64` wraps at 76 columns) and a data-URL prefix are allowed."""
    text = WHITESPACE.sub("", DATA_URL_PREFIX.sub("", value.strip(), count=1))
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ImageDecodeError("bad_base64", f"JSON field '{name}' is not valid base64: {error}") from error


def _from_json(document: dict[str, Any]) -> bytes:
    for name in PREFERRED_FIELDS:
        if name not in document:
            continue
        value = document[name]
        if not isinstance(value, str):
            raise ImageDecodeError(
                "invalid_json", f"JSON field '{name}' must be a base64 string, got {type(value).__name__}"
            )
        return _decode_base64(name, value)
    raise ImageDecodeError(
        "missing_image",
        f"JSON body has no image; send {JSON_EXAMPLE} (accepted keys: {', '.join(PREFERRED_FIELDS)})",
    )


def image_bytes_from_row(row: dict[str, Any]) -> bytes:
    """Returns the image bytes of one request.

    Raises:
        ImageDecodeError: the request carries no image bytes, or a JSON body of the wrong shape (the
            message lists what is accepted).

    """
    candidates = [name for name in row if name not in NOT_IMAGE_FIELDS]
    names = [name for name in PREFERRED_FIELDS if name in candidates]
    names += [name for name in candidates if name not in PREFERRED_FIELDS]
    for name in names:
        value = row[name]
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, dict):
            return _from_json(value)
        if name not in ("body", "data"):
            continue
        if isinstance(value, str):
            # A text body (e.g. Content-Type: text/plain) is never an image.
            raise ImageDecodeError("not_an_image", "the request body is text, not image bytes")
        # A JSON body that parsed to a list, number, boolean or null.
        kind = type(value).__name__
        raise ImageDecodeError("invalid_json", f"the JSON body must be an object like {JSON_EXAMPLE}, got {kind}")
    raise ImageDecodeError(
        "missing_image",
        "no image in the request; send the file as the raw body, as a multipart field 'data', "
        "or as JSON {\"data\": \"<base64>\"}",
    )
