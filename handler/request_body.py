"""Finds the image bytes in one TorchServe request row, whatever way the client sent them, and says where.

TorchServe hands each request to the handler as a dict: a raw body arrives under "body" (bytes, or
str for a text/* content type); multipart form fields under their own names; a JSON body already
parsed (a dict, or a list/number/str when the client sent one); query parameters of the
/invocations and /{model}/predict routes as extra keys with bytes values. Only some of those keys
hold the image, so the option and routing keys are never taken for it.

The request's headers say more (measured on TorchServe 0.12, tests/handler/test_handler_served.py): next
to the HTTP headers, every row key has an entry {"content-type": ...}: the part's type for a multipart file
("application/octet-stream" when the client gave none), "" for a form field without a file name, a
URL-encoded field or a query parameter, and for the body the request's media type without parameters.
Fields without a file name still carry bytes intact (`curl -F "data=<face.jpg"`, a URL-encoded image), so
they stay candidates, after the file parts. A body declared as JSON that does not parse reaches the handler
as bytes, and a multipart body whose boundary is wrong as an empty row: with the headers, those get errors
that say so instead of "not an image".

Behind a request envelope (config/kserve.properties: service_envelope=kserve) a row is one instance of the JSON
document, {"data": "<base64>"} or {"image": {"b64": "<base64>"}}, whose keys TorchServe's headers do not describe:
a string under an image key is then base64 (docker/kserve/README.md).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from handler.forensics import ImageDecodeError, sniff_format
from handler.request_options import OPTION_NAMES

# Names tried first, in order, for multipart fields and JSON keys.
PREFERRED_FIELDS = ("data", "body", "file", "image", "b64")
BODY = "body"  # the row key of a raw (non-form) request body, and the field an error about the whole body names
# Where a missing image belongs: the field a client should fill in.
EXPECTED_FIELD = "data"
# Row keys that are never the image: request options, and the model name /invocations passes along.
NOT_IMAGE_FIELDS = frozenset({*OPTION_NAMES, "model_name"})
# Browsers produce data URLs ("data:image/png;base64,...."); the prefix is not part of the base64.
DATA_URL_PREFIX = re.compile(r"^data:[\w.+/-]*(;[\w=.+-]+)*;base64,", re.IGNORECASE)
WHITESPACE = re.compile(r"\s+")
JSON_EXAMPLE = '{"data": "<base64 image>"}'
INPUT_FORMS = "send the file as the raw body, as a multipart file field 'data', or as JSON {\"data\": \"<base64>\"}"
MULTIPART = "multipart/form-data"
CONTENT_TYPE = "content-type"


@dataclass(frozen=True)
class ImageBytes:
    """The image file of one request and where in the request it was found.

    Attributes:
        data: the file's bytes (never empty).
        field: "body" for a raw body, else the multipart field or JSON key that held it: what an error
            about these bytes names, so a client knows which part of its request to fix.

    """

    data: bytes
    field: str


def field_content_types(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """Each row key's content type as TorchServe records it in the headers ({} when they are not known)."""
    types: dict[str, str] = {}
    for name, value in (headers or {}).items():
        if isinstance(value, Mapping) and isinstance(value.get(CONTENT_TYPE), str):
            types[name] = value[CONTENT_TYPE].split(";")[0].strip().lower()
    return types


def request_media_type(headers: Mapping[str, Any] | None) -> str:
    """The request's Content-Type without parameters, lower case ("" when absent or unknown)."""
    for name, value in (headers or {}).items():
        if isinstance(name, str) and name.lower() == CONTENT_TYPE and isinstance(value, (str, bytes)):
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            return text.split(";")[0].strip().lower()
    return ""


def _where(name: str) -> str:
    return "the request body" if name == BODY else f"field '{name}'"


def _is_json(content_type: str | None) -> bool:
    return content_type is not None and (content_type == "application/json" or content_type.endswith("+json"))


def _non_empty(name: str, data: bytes, from_json: bool = False) -> ImageBytes:
    if data:
        return ImageBytes(data, name)
    if from_json:
        raise ImageDecodeError("empty_input", f"JSON field '{name}' holds no data (it decodes to 0 bytes)", name)
    if name == BODY:
        raise ImageDecodeError("empty_input", "the request body is empty; send the image file's bytes", name)
    raise ImageDecodeError("empty_input", f"the file in field '{name}' is empty (0 bytes)", name)


def _decode_base64(name: str, value: str) -> bytes:
    """Base64 text → bytes; line breaks (`base64` wraps at 76 columns) and a data-URL prefix are allowed."""
    text = WHITESPACE.sub("", DATA_URL_PREFIX.sub("", value.strip(), count=1))
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ImageDecodeError("bad_base64", f"JSON field '{name}' is not valid base64: {error}", name) from error


def _from_json(document: Mapping[str, Any]) -> ImageBytes:
    for name in PREFERRED_FIELDS:
        if name not in document:
            continue
        value = document[name]
        if not isinstance(value, str):
            raise ImageDecodeError(
                "invalid_json", f"JSON field '{name}' must be a base64 string, got {type(value).__name__}", name
            )
        return _non_empty(name, _decode_base64(name, value), from_json=True)
    raise ImageDecodeError(
        "missing_image",
        f"JSON body has no image; send {JSON_EXAMPLE} (accepted keys: {', '.join(PREFERRED_FIELDS)})",
        EXPECTED_FIELD,
    )


def _parse_declared_json(name: str, data: bytes) -> Any:
    """A body (or part) declared as JSON that TorchServe could not parse: parsed here, to name the fault."""
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ImageDecodeError("invalid_json", f"{_where(name)} is declared as JSON but does not parse: {error}",
                               name) from error


def _missing(row: Mapping[str, Any], media_type: str) -> ImageDecodeError:
    """The error for a request without image bytes, saying what the request looked like."""
    if media_type == MULTIPART and not row:
        return ImageDecodeError(
            "missing_image", "the multipart/form-data body has no part the server could read: check that the "
            "boundary in the Content-Type header is the one in the body, and that the body ends with --boundary--",
            BODY)
    return ImageDecodeError("missing_image", f"no image in the request; {INPUT_FORMS}", EXPECTED_FIELD)


def image_bytes_from_row(row: Mapping[str, Any], headers: Mapping[str, Any] | None = None) -> ImageBytes:
    """Returns the image bytes of one request and the field they came from.

    Args:
        row: the request as TorchServe hands it to the handler.
        headers: the request's headers as TorchServe hands them (context.get_all_request_header), with the
            per-field content types; without them (None) every bytes value may be the image and a body
            declared as JSON that does not parse is read as bytes.

    Raises:
        ImageDecodeError: the request carries no image bytes, empty ones, or a JSON body of the wrong shape;
            the message lists what is accepted and `field` names the part of the request at fault.

    """
    types = field_content_types(headers)
    candidates = [name for name in row if name not in NOT_IMAGE_FIELDS]

    def order(name: str) -> tuple[bool, int]:
        # A field TorchServe marks with no content type (no file name) comes after the file parts and the body.
        without_type = name != BODY and types.get(name) == ""
        rank = PREFERRED_FIELDS.index(name) if name in PREFERRED_FIELDS else len(PREFERRED_FIELDS)
        return without_type, rank

    for name in sorted(candidates, key=order):  # stable: other names keep the row's order
        value = row[name]
        kind = types.get(name)  # None: not known (a row built without TorchServe's headers)
        if isinstance(value, (bytes, bytearray)):
            if not (_is_json(kind) and value and sniff_format(bytes(value)) is None):
                return _non_empty(name, bytes(value))
            value = _parse_declared_json(name, bytes(value))  # image bytes labelled as JSON are still served
        if isinstance(value, Mapping):
            return _from_json(value)
        if isinstance(value, str) and kind is None and name in PREFERRED_FIELDS and name != BODY:
            # A string under an image key that TorchServe did not type is a value of a JSON document a request
            # envelope unpacked: KServe v1 {"instances": [{"data": "<base64>"}]} or v2 BYTES. Base64, as in a body.
            return _non_empty(name, _decode_base64(name, value), from_json=True)
        if kind is None and name not in (BODY, "data"):
            continue
        if isinstance(value, str) and not _is_json(kind):
            shown = f" ({kind})" if kind else ""
            raise ImageDecodeError("not_an_image", f"{_where(name)} is text{shown}, not image bytes", name)
        # A JSON body that parsed to a list, number, string, boolean or null.
        raise ImageDecodeError("invalid_json", f"the JSON in {_where(name)} must be an object like {JSON_EXAMPLE}, "
                               f"got {type(value).__name__}", name)
    raise _missing(row, request_media_type(headers))


def refuse_oversized(image: ImageBytes, max_bytes: int) -> ImageBytes:
    """The image unchanged when it is at most `max_bytes` long.

    Raises:
        ImageDecodeError: code "payload_too_large", naming the field and the limit; checked before decoding.

    """
    size = len(image.data)
    if size > max_bytes:
        raise ImageDecodeError(
            "payload_too_large", f"the image file in {_where(image.field)} is {size} bytes; the limit is "
            f"{max_bytes} bytes ({max_bytes / 2**20:g} MiB): compress or downscale it", image.field)
    return image
