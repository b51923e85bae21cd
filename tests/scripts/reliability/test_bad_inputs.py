"""The corpus itself: enough distinct kinds, the same bytes every time, and each entry what its name says."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest
from PIL import Image

from handler.forensics import ImageDecodeError, decode_rgb, sniff_format
from handler.verdict import ERROR_STATUS
from scripts.reliability.bad_inputs import (
    CLAIMED_SIDE,
    PREDICTIONS,
    BadInput,
    CorpusLimits,
    bad_inputs,
    describe_request,
    good_variants,
    main,
    sample_jpeg,
)

REQUEST_KEYS = {"data", "files", "json", "headers"}
CATEGORIES = {"transport", "format", "size", "json", "form", "option", "served"}
# What the issue asks the corpus to hold, by entry name.
REQUIRED = ["empty_body", "multipart_empty_file", "random_bytes", "text_plain", "text_octet_stream", "html_page",
            "svg_image", "pdf_document", "truncated_jpeg", "truncated_png", "jpeg_header_garbage",
            "png_header_garbage", "png_bad_crc", "one_pixel", "one_by_5000", "png_bomb_20000", "png_claims_60000",
            "gif_claims_60000", "tiff_claims_60000", "jpeg_sof_claims_60000", "png_16_bit", "jpeg_cmyk",
            "png_palette_transparency", "gif_animated", "webp_animated", "exif_orientation_bogus",
            "png_huge_text_chunk", "png_sent_as_jpeg", "image_sent_as_json", "multipart_bad_boundary",
            "multipart_unterminated", "multipart_without_file", "json_bad_base64", "json_truncated", "json_list",
            "json_number", "json_null", "json_wrong_key", "json_data_not_string", "json_data_url_not_image",
            "json_base64_random", "raw_over_upload_limit", "json_over_upload_limit", "raw_over_request_limit",
            "multipart_emoji_filename", "multipart_rtl_filename", "option_query_invalid"]


@pytest.fixture(scope="module")
def good() -> bytes:
    return sample_jpeg()


@pytest.fixture(scope="module")
def corpus(good) -> dict[str, BadInput]:
    return {item.name: item for item in bad_inputs(good)}


def raw(item: BadInput) -> bytes:
    return item.request["data"]


def opened(data: bytes) -> Image.Image:
    """The image with only its header read; Pillow's bomb check is off meanwhile, so the bombs can be measured."""
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        return Image.open(io.BytesIO(data))
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def test_at_least_35_distinct_kinds_covering_the_issue(good, corpus):
    names = [item.name for item in bad_inputs(good)]
    assert len(names) == len(set(names)) == len(corpus) >= 35
    assert [name for name in REQUIRED if name not in corpus] == []
    assert {item.category for item in corpus.values()} == CATEGORIES


def test_the_same_good_image_gives_the_same_corpus_and_another_one_other_bytes(good):
    first, second = bad_inputs(good), bad_inputs(good)
    assert first == second  # every request, byte for byte
    other = bad_inputs(sample_jpeg(seed=1))
    assert [(i.name, i.status, i.code, i.field) for i in other] == [(i.name, i.status, i.code, i.field) for i in first]
    assert other != first  # derived from the image: the truncated and disguised entries follow it


def test_each_entry_is_well_formed(corpus):
    for name, item in corpus.items():
        assert name.isidentifier() and name == name.lower(), name
        assert item.description and item.category in CATEGORIES, name
        assert set(item.request) <= REQUEST_KEYS and set(item.request) & {"data", "files", "json"}, name
        assert item.path.startswith("/") and "{model}" in item.path, name
        if item.status == 200:
            assert item.code is None and item.field is None and not item.frontend, name
        elif item.frontend:
            assert item.code is None and item.field is None and item.status == 413, name
        else:
            assert item.code is not None and item.field, name
            assert ERROR_STATUS.get(item.code, 400) == item.status, name  # the handler's own status for the code
        assert item.url("http://h:1/", "m") == "http://h:1" + item.path.format(model="m")
    assert sum(item.status == 200 for item in corpus.values()) >= 10  # odd but real images are served


def test_describe_request_summarises_payloads(corpus):
    described = describe_request(corpus["multipart_emoji_filename"].request)
    assert described["files"]["data"][1].startswith("<") and described["files"]["data"][1].endswith(" bytes>")
    json.dumps([describe_request(item.request) for item in corpus.values()])  # all of it is JSON


def test_decompression_bombs_are_real_and_small(corpus):
    bomb = raw(corpus["png_bomb_20000"])
    assert len(bomb) < 100_000 and opened(bomb).size == (20_000, 20_000)
    # The IDAT really inflates to every row: 20000 rows of a filter byte and 2500 bytes of 1-bit pixels.
    idat_length = struct.unpack(">I", bomb[33:37])[0]
    assert bomb[37:41] == b"IDAT"
    inflater, inflated, data = zlib.decompressobj(), 0, bomb[41:41 + idat_length]
    while data:
        inflated += len(inflater.decompress(data, 2**22))
        data = inflater.unconsumed_tail
    assert inflated == 20_000 * 2501
    over = opened(raw(corpus["png_bomb_over_limit"]))
    assert CorpusLimits().max_image_pixels < over.width * over.height < Image.MAX_IMAGE_PIXELS * 2


@pytest.mark.parametrize(("name", "fmt"), [("png_claims_60000", "PNG"), ("gif_claims_60000", "GIF"),
                                           ("tiff_claims_60000", "TIFF"), ("jpeg_sof_claims_60000", "JPEG")])
def test_headers_claim_gigapixels_in_a_few_bytes(corpus, name, fmt):
    image = opened(raw(corpus[name]))
    assert image.format == fmt and image.size == (CLAIMED_SIDE, CLAIMED_SIDE)
    assert len(raw(corpus[name])) < 20_000


def test_odd_images_are_what_they_say(corpus):
    assert opened(raw(corpus["png_16_bit"])).mode.startswith("I")
    assert opened(raw(corpus["jpeg_cmyk"])).mode == "CMYK"
    palette = opened(raw(corpus["png_palette_transparency"]))
    assert palette.mode == "P" and "transparency" in palette.info
    for name, fmt in (("gif_animated", "GIF"), ("webp_animated", "WEBP")):
        animation = opened(raw(corpus[name]))
        assert animation.format == fmt and animation.n_frames == 3
    assert opened(raw(corpus["exif_orientation_bogus"])).getexif()[0x0112] == 9
    assert opened(raw(corpus["one_by_5000"])).size == (1, 5000)
    assert len(raw(corpus["png_huge_text_chunk"])) > 4 * 2**20
    assert opened(raw(corpus["png_sent_as_jpeg"])).format == "PNG"
    assert corpus["png_sent_as_jpeg"].request["headers"]["Content-Type"] == "image/jpeg"


def test_damaged_files_start_like_images_and_disguised_ones_do_not(corpus):
    for name in ("truncated_jpeg", "truncated_png", "jpeg_header_garbage", "png_header_garbage", "png_bad_crc",
                 "jpeg_without_scan"):
        assert sniff_format(raw(corpus[name])) in ("JPEG", "PNG"), name
    for name in ("random_bytes", "text_octet_stream", "svg_image", "pdf_document"):
        assert sniff_format(raw(corpus[name])) is None, name


def test_the_decoder_agrees_with_every_file_entry(corpus):
    # Entries whose answer depends on the file alone: the project's decoder must reach the same verdict. (How
    # the handler finds the file and names the field is checked against a real server in test_corpus_check.)
    checked = 0
    for item in corpus.values():
        data = item.request.get("data")
        file_alone = item.category in ("format", "served") and "headers" not in item.request
        if not (file_alone and isinstance(data, bytes) and data):
            continue
        if item.status == 200:
            assert decode_rgb(data).ndim == 3, item.name
        else:
            with pytest.raises(ImageDecodeError) as raised:
                decode_rgb(data)
            assert raised.value.code == item.code, item.name
        checked += 1
    assert checked >= 15


def test_size_entries_sit_on_the_right_side_of_each_limit(corpus):
    limits = CorpusLimits()
    assert limits.max_upload_bytes < len(raw(corpus["raw_over_upload_limit"])) < limits.max_request_size
    as_json = json.dumps(corpus["json_over_upload_limit"].request["json"]).encode()
    assert len(as_json) < limits.max_request_size
    assert len(base64.b64decode(corpus["json_over_upload_limit"].request["json"]["data"])) > limits.max_upload_bytes
    assert len(raw(corpus["raw_over_request_limit"])) > limits.max_request_size
    assert len(corpus["multipart_over_request_limit"].request["files"]["data"][1]) > limits.max_request_size
    smaller = {item.name: item for item in bad_inputs(sample_jpeg(), CorpusLimits(2**20, 2 * 2**20, 1_000_000))}
    assert 2**20 < len(raw(smaller["raw_over_upload_limit"])) < 2 * 2**20
    assert opened(raw(smaller["png_bomb_over_limit"])).width ** 2 > 1_000_000


@pytest.mark.parametrize(("limits", "match"), [
    (dict(max_upload_bytes=6 * 2**20, max_request_size=8 * 2**20), "cannot carry a base64 image"),
    (dict(max_image_pixels=400_000_000), "below 400 megapixels"),
])
def test_limits_that_cannot_be_tested_together_are_refused(limits, match):
    with pytest.raises(ValueError, match=match):
        CorpusLimits(**limits)


def test_transport_oddities_are_built_as_named(corpus, good):
    bad_boundary = corpus["multipart_bad_boundary"]
    assert b"announced-boundary" not in raw(bad_boundary) and "announced" in bad_boundary.request["headers"][
        "Content-Type"]
    assert not raw(corpus["multipart_unterminated"]).rstrip().endswith(b"--")
    emoji = corpus["multipart_emoji_filename"].request["files"]["data"][0]
    rtl = corpus["multipart_rtl_filename"].request["files"]["data"][0]
    assert any(ord(c) > 0xFFFF for c in emoji) and "\u202e" in rtl and "\x00" not in emoji + rtl
    assert corpus["option_query_invalid"].path.endswith("?uncalibrated=maybe")
    assert json.loads(raw(corpus["json_truncated"]).decode() + '"}')  # cut, not otherwise broken
    assert corpus["empty_body"].path == PREDICTIONS and raw(corpus["empty_body"]) == b""


def test_good_variants_are_different_valid_images(good):
    variants = good_variants(good)
    assert len(variants) == len(set(variants)) == 4 and variants[0] == good
    assert all(decode_rgb(variant).shape == decode_rgb(good).shape for variant in variants)


def test_a_good_image_that_is_not_a_jpeg_is_refused():
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    with pytest.raises(ValueError, match="no SOF0/1/2 marker"):
        bad_inputs(png.getvalue())


def test_main_lists_every_kind(good, tmp_path):
    image = tmp_path / "good.jpg"
    image.write_bytes(good)
    lines: list[str] = []
    main(["--image", str(image)], out=lines.append)
    assert len(lines) == len(bad_inputs(good)) + 1 and lines[-1] == f"{len(bad_inputs(good))} kinds"
    assert any(line.startswith("raw_over_request_limit") and "(frontend, empty body)" in line for line in lines)
