import pytest

from handler.forensics import ImageDecodeError
from handler.request_options import RequestOptions, parse_flag, request_options


@pytest.mark.parametrize(("value", "expected"), [
    (True, True), (False, False), (1, True), (0, False),
    ("true", True), ("TRUE", True), (" Yes ", True), ("1", True), ("false", False), ("no", False), ("0", False),
    (b"true", True), (bytearray(b"yes"), True), (bytearray(b"0"), False),
])
def test_accepted_spellings(value, expected):
    assert parse_flag("uncalibrated", value) is expected


@pytest.mark.parametrize("value", ["ture", "", "2", b"\xff\xfe", 2, 0.5, [True], {"a": 1}])
def test_anything_else_is_refused_with_the_option_named(value):
    with pytest.raises(ImageDecodeError) as raised:
        parse_flag("uncalibrated", value)
    assert raised.value.code == "invalid_option"
    assert "'uncalibrated'" in str(raised.value) and "true, 1, yes" in str(raised.value)


def test_default_is_calibrated_only():
    assert request_options({"body": bytearray(b"jpeg")}) == RequestOptions(uncalibrated=False)
    assert request_options({"body": {"data": "aGk="}}, {"Accept": "*/*"}) == RequestOptions(uncalibrated=False)


@pytest.mark.parametrize(("row", "headers"), [
    ({"body": bytearray(b"jpeg"), "uncalibrated": bytearray(b"true")}, {}),  # form field or query parameter
    ({"body": {"data": "aGk=", "uncalibrated": True}}, {}),  # JSON key
    ({"body": bytearray(b"jpeg")}, {"X-Uncalibrated": "yes"}),  # header, as TorchServe spells it
    ({"body": bytearray(b"jpeg")}, {"x-uncalibrated": "1"}),  # header names are case-insensitive
])
def test_every_transport_can_ask(row, headers):
    assert request_options(row, headers).uncalibrated is True


def test_per_field_header_dicts_are_not_mistaken_for_the_header():
    # TorchServe puts {"content-type": ...} per form field into the same headers mapping, keyed by field name.
    headers = {"uncalibrated": {"content-type": ""}, "body": {"content-type": "image/jpeg"}}
    assert request_options({"body": bytearray(b"jpeg")}, headers).uncalibrated is False


def test_on_when_any_source_says_so_and_a_bad_value_anywhere_is_refused():
    row = {"body": {"data": "aGk=", "uncalibrated": False}}
    assert request_options(row, {"X-Uncalibrated": "true"}).uncalibrated is True
    with pytest.raises(ImageDecodeError):
        request_options(row, {"X-Uncalibrated": "maybe"})
