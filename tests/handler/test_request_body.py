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


@pytest.mark.parametrize("body", [[1, 2], 42, None, True])
def test_json_body_that_is_not_an_object_is_refused(body):
    with pytest.raises(ImageDecodeError) as raised:
        image_bytes_from_row({"body": body})
    assert raised.value.code == "invalid_json" and '{"data": "<base64 image>"}' in str(raised.value)


@pytest.mark.parametrize("value", [123, None, ["aGk="], {"nested": "aGk="}])
def test_json_image_field_that_is_not_a_string_is_named(value):
    with pytest.raises(ImageDecodeError) as raised:
        image_bytes_from_row({"body": {"data": value}})
    assert raised.value.code == "invalid_json" and "'data'" in str(raised.value)


def test_wrapped_base64_and_data_urls_are_accepted():
    image = bytes(range(256)) * 4
    wrapped = base64.encodebytes(image).decode()  # 76-column lines, like the `base64` command writes
    assert "\n" in wrapped
    assert image_bytes_from_row({"body": {"data": wrapped}}) == image
    data_url = "data:image/png;base64," + base64.b64encode(image).decode()
    assert image_bytes_from_row({"body": {"image": data_url}}) == image


@pytest.mark.parametrize("row", [
    {"uncalibrated": bytearray(b"true")},  # a multipart form with the option and no file
    {"uncalibrated": b"1", "model_name": bytearray(b"deepfake")},  # /invocations?model_name=...&uncalibrated=1
    {"body": {"uncalibrated": True}},  # JSON with the option and no image
])
def test_options_and_routing_keys_are_never_taken_for_the_image(row):
    with pytest.raises(ImageDecodeError) as raised:
        image_bytes_from_row(row)
    assert raised.value.code == "missing_image"


def test_image_is_found_beside_options_in_any_key_order():
    row = {"uncalibrated": bytearray(b"true"), "model_name": bytearray(b"deepfake"), "upload": bytearray(b"img")}
    assert image_bytes_from_row(row) == b"img"
    assert image_bytes_from_row({"body": {"uncalibrated": "yes", "b64": base64.b64encode(b"x").decode()}}) == b"x"
