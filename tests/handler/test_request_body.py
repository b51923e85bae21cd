import base64

import pytest

from handler.forensics import ImageDecodeError
from handler.request_body import image_bytes_from_row


@pytest.mark.parametrize("key", ["body", "data", "file", "upload"])
def test_raw_and_multipart_bytes_are_found(key):
    assert image_bytes_from_row({key: bytearray(b"abc")}) == b"abc"


def test_preferred_field_wins_over_others():
    assert image_bytes_from_row({"other": b"x", "data": b"y"}) == b"y"


def test_json_base64_is_decoded():
    payload = base64.b64encode(b"\xff\xd8 image").decode()
    assert image_bytes_from_row({"body": {"data": payload}}) == b"\xff\xd8 image"


def test_bad_base64_names_the_field():
    with pytest.raises(ImageDecodeError) as raised:
        image_bytes_from_row({"body": {"image": "not base64!!"}})
    assert raised.value.code == "bad_base64" and "'image'" in str(raised.value)


@pytest.mark.parametrize(
    ("row", "code"),
    [({"body": {"nothing": 1}}, "missing_image"), ({}, "missing_image"), ({"body": "hello"}, "not_an_image")],
)
def test_requests_without_image_bytes_are_refused(row, code):
    with pytest.raises(ImageDecodeError) as raised:
        image_bytes_from_row(row)
    assert raised.value.code == code
