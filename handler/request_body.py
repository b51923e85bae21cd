"""Finds the image bytes in one TorchServe request row, whatever way the client sent them.

TorchServe hands each request to the handler as a dict: a raw body arrives under "body" or
"data"; multipart form fields under their own names; a JSON body already parsed into a dict.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from handler.forensics import ImageDecodeError

# Names tried first, in order, for multipart fields and JSON keys.
PREFERRED_FIELDS = ("data", "body", "file", "image", "b64")


def _from_json(document: dict[str, Any]) -> bytes:
    for name in PREFERRED_FIELDS:
        value = document.get(name)
        if isinstance(value, str):
            try:
                return base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as error:
                raise ImageDecodeError(
                    "bad_base64", f"JSON field '{name}' is not valid base64: {error}"
                ) from error
    raise ImageDecodeError(
        "missing_image",
        f"JSON body has no image; send {{\"data\": \"<base64 image>\"}} (accepted keys: {', '.join(PREFERRED_FIELDS)})",
    )


def image_bytes_from_row(row: dict[str, Any]) -> bytes:
    """Returns the image bytes of one request.

    Raises:
        ImageDecodeError: the request carries no image bytes (the message lists what is accepted).

    """
    names = [name for name in PREFERRED_FIELDS if name in row] + [name for name in row if name not in PREFERRED_FIELDS]
    for name in names:
        value = row[name]
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, dict):
            return _from_json(value)
        if isinstance(value, str) and name in ("body", "data"):
            # A text body (e.g. Content-Type: text/plain) is never an image.
            raise ImageDecodeError("not_an_image", "the request body is text, not image bytes")
    raise ImageDecodeError(
        "missing_image",
        "no image in the request; send the file as the raw body, as a multipart field 'data', "
        "or as JSON {\"data\": \"<base64>\"}",
    )
