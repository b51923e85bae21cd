import base64

import pytest

from handler.forensics import ImageDecodeError
from handler.request_body import (
    ImageBytes,
    field_content_types,
    image_bytes_from_row,
    refuse_oversized,
    request_media_type,
)

JPEG_START = b"\xff\xd8\xff\xe0 a jpeg"


def refused(row, headers=None) -> ImageDecodeError:
    with pytest.raises(ImageDecodeError) as raised:
        image_bytes_from_row(row, headers)
    return raised.value


def torchserve_headers(content_type: str, **fields: str) -> dict:
    """Headers as TorchServe 0.12 hands them over: the HTTP ones plus {"content-type": ...} per row key."""
    return {"Content-Type": content_type, "Host": "127.0.0.1", **{name: {"content-type": kind}
                                                                  for name, kind in fields.items()}}


@pytest.mark.parametrize("key", ["body", "data", "file", "upload"])
def test_raw_and_multipart_bytes_are_found_with_their_field(key):
    assert image_bytes_from_row({key: bytearray(b"abc")}) == ImageBytes(b"abc", key)


def test_preferred_field_wins_over_others():
    assert image_bytes_from_row({"other": b"x", "data": b"y"}) == ImageBytes(b"y", "data")


def test_json_base64_is_decoded_and_names_its_key():
    payload = base64.b64encode(b"\xff\xd8 image").decode()
    assert image_bytes_from_row({"body": {"data": payload}}) == ImageBytes(b"\xff\xd8 image", "data")
    assert image_bytes_from_row({"body": {"b64": payload}}).field == "b64"


def test_bad_base64_names_the_field():
    error = refused({"body": {"image": "not base64!!"}})
    assert error.code == "bad_base64" and "'image'" in str(error) and error.field == "image"


@pytest.mark.parametrize(
    ("row", "code", "field"),
    [({"body": {"nothing": 1}}, "missing_image", "data"), ({}, "missing_image", "data"),
     ({"body": "hello"}, "not_an_image", "body")],
)
def test_requests_without_image_bytes_are_refused(row, code, field):
    error = refused(row)
    assert (error.code, error.field) == (code, field)


@pytest.mark.parametrize("body", [[1, 2], 42, None, True])
def test_json_body_that_is_not_an_object_is_refused(body):
    error = refused({"body": body})
    assert error.code == "invalid_json" and '{"data": "<base64 image>"}' in str(error) and error.field == "body"


@pytest.mark.parametrize("value", [123, None, ["aGk="], {"nested": "aGk="}])
def test_json_image_field_that_is_not_a_string_is_named(value):
    error = refused({"body": {"data": value}})
    assert error.code == "invalid_json" and "'data'" in str(error) and error.field == "data"


def test_wrapped_base64_and_data_urls_are_accepted():
    image = bytes(range(256)) * 4
    wrapped = base64.encodebytes(image).decode()  # 76-column lines, like the `base64` command writes
    assert "\n" in wrapped
    assert image_bytes_from_row({"body": {"data": wrapped}}).data == image
    data_url = "data:image/png;base64," + base64.b64encode(image).decode()
    assert image_bytes_from_row({"body": {"image": data_url}}) == ImageBytes(image, "image")


@pytest.mark.parametrize("row", [
    {"uncalibrated": bytearray(b"true")},  # a multipart form with the option and no file
    {"uncalibrated": b"1", "model_name": bytearray(b"deepfake")},  # /invocations?model_name=...&uncalibrated=1
    {"body": {"uncalibrated": True}},  # JSON with the option and no image
])
def test_options_and_routing_keys_are_never_taken_for_the_image(row):
    assert refused(row).code == "missing_image"


def test_image_is_found_beside_options_in_any_key_order():
    row = {"uncalibrated": bytearray(b"true"), "model_name": bytearray(b"deepfake"), "upload": bytearray(b"img")}
    assert image_bytes_from_row(row) == ImageBytes(b"img", "upload")
    assert image_bytes_from_row({"body": {"uncalibrated": "yes", "b64": base64.b64encode(b"x").decode()}}).data == b"x"


@pytest.mark.parametrize(("row", "field", "phrase"), [
    ({"body": bytearray()}, "body", "request body is empty"),
    ({"data": bytearray()}, "data", "file in field 'data' is empty"),
    ({"body": {"data": ""}}, "data", "JSON field 'data' holds no data"),
])
def test_empty_images_say_where_they_are_empty(row, field, phrase):
    error = refused(row)
    assert (error.code, error.field) == ("empty_input", field) and phrase in str(error)


# --- what the per-field content types TorchServe passes in the headers tell ----------------------------------


def test_header_helpers_read_torchserve_headers():
    headers = torchserve_headers("multipart/form-data; boundary=x", data="image/jpeg", other="")
    assert field_content_types(headers) == {"data": "image/jpeg", "other": ""}
    assert request_media_type(headers) == "multipart/form-data"
    assert request_media_type({"content-type": "Application/JSON; charset=utf-8"}) == "application/json"
    assert request_media_type(None) == "" and field_content_types(None) == {}


def test_fields_without_a_file_name_still_carry_the_image_but_file_parts_come_first():
    # curl -F "data=<face.jpg" and a URL-encoded form send the bytes intact in a field without a content type.
    multipart = torchserve_headers("multipart/form-data; boundary=x", data="")
    assert image_bytes_from_row({"data": bytearray(JPEG_START)}, multipart) == ImageBytes(JPEG_START, "data")
    urlencoded = torchserve_headers("application/x-www-form-urlencoded", data="")
    assert image_bytes_from_row({"data": bytearray(JPEG_START)}, urlencoded) == ImageBytes(JPEG_START, "data")
    # A caption in the preferred field 'data' no longer hides the file in another field...
    headers = torchserve_headers("multipart/form-data; boundary=x", data="", upload="application/octet-stream")
    row = {"data": bytearray(b"my caption"), "upload": bytearray(JPEG_START)}
    assert image_bytes_from_row(row, headers) == ImageBytes(JPEG_START, "upload")
    # ...and without TorchServe's headers the preferred name wins, as it always did.
    assert image_bytes_from_row(row) == ImageBytes(b"my caption", "data")


def test_a_multipart_body_without_readable_parts_names_the_boundary():
    error = refused({}, torchserve_headers("multipart/form-data; boundary=announced"))
    assert (error.code, error.field) == ("missing_image", "body") and "boundary" in str(error)


def test_a_body_declared_json_that_does_not_parse_is_invalid_json():
    headers = torchserve_headers("application/json", body="application/json")
    error = refused({"body": bytearray(b'{"data": "abc')}, headers)
    assert (error.code, error.field) == ("invalid_json", "body") and "does not parse" in str(error)
    # Image bytes labelled as JSON are still the image.
    assert image_bytes_from_row({"body": bytearray(JPEG_START)}, headers) == ImageBytes(JPEG_START, "body")


def test_a_json_string_body_is_invalid_json_but_a_text_body_is_not_an_image():
    json_string = refused({"body": "aGVsbG8="}, torchserve_headers("application/json", body="application/json"))
    assert (json_string.code, json_string.field) == ("invalid_json", "body") and "got str" in str(json_string)
    text = refused({"body": "hello"}, torchserve_headers("text/plain", body="text/plain"))
    assert (text.code, text.field) == ("not_an_image", "body") and "text/plain" in str(text)


def test_a_text_file_part_is_not_an_image_and_is_named():
    error = refused({"upload": "hello"}, torchserve_headers("multipart/form-data; boundary=x", upload="text/plain"))
    assert (error.code, error.field) == ("not_an_image", "upload")


def test_a_json_file_part_is_read_like_a_json_body():
    payload = base64.b64encode(JPEG_START).decode()
    headers = torchserve_headers("multipart/form-data; boundary=x", data="application/json")
    assert image_bytes_from_row({"data": {"image": payload}}, headers) == ImageBytes(JPEG_START, "image")


# --- the upload limit ------------------------------------------------------------------------------------------


def test_images_up_to_the_limit_pass_and_larger_ones_are_payload_too_large():
    image = ImageBytes(bytes(100), "data")
    assert refuse_oversized(image, 100) is image
    with pytest.raises(ImageDecodeError) as raised:
        refuse_oversized(image, 99)
    error = raised.value
    assert (error.code, error.field) == ("payload_too_large", "data")
    assert "100 bytes" in str(error) and "the limit is 99 bytes" in str(error) and "field 'data'" in str(error)
