"""scripts/reliability/fuzz.py: the mutators, the input generators, the per-input bounds, the report, and a fuzz run.

The fuzz tests run the same hypothesis strategies as the script through the real worker calls, a few
thousand inputs in all: one as a plain @given property (hypothesis shrinks what it finds), one through
`fuzz()` for the hang and memory bounds and the report.
"""

import io
import json
import signal
import struct
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import seed as hypothesis_seed
from PIL import Image

from handler.forensics import PreprocessConfig
from handler.scoring import REGION_WHOLE_IMAGE, ScoredRegions
from scripts.reliability.fuzz import (
    ALL_KINDS,
    CLAIMED_SIZES,
    CRASH,
    HANG,
    HEADER_SETTERS,
    JSON_NAME,
    MARKDOWN_NAME,
    OK,
    PIPELINES,
    REFUSED,
    REPRODUCERS_DIR,
    STRATEGY_NAMES,
    FuzzCase,
    FuzzConfig,
    InputHang,
    MemoryProbe,
    Payload,
    Pipeline,
    Recorder,
    build_report,
    contract_problems,
    delete_bytes,
    duplicate_range,
    encode_seed,
    exif_orientation_block,
    flip_bit,
    fuzz,
    fuzz_cases,
    insert_bytes,
    jpeg_segment_spans,
    overwrite,
    png_chunk_spans,
    run_case,
    set_bmp_size,
    set_gif_frame_size,
    set_gif_screen_size,
    set_ico_size,
    set_jpeg_size,
    set_png_size,
    set_tiff_size,
    set_webp_size,
    shipped_max_image_pixels,
    splice,
    time_limit,
    truncate,
    write_report,
)

DATA = bytes(range(256)) * 2
IN_RANGE_SIZES = [(1, 1), (300, 200), (6324, 6324), (65535, 1)]


def pillow_size(data: bytes) -> tuple[int, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data)) as image:
            return image.size


def case(data: bytes, pipeline: Pipeline = PIPELINES[0], strategy: str = "valid_images") -> FuzzCase:
    return FuzzCase(Payload(strategy, "", "test input", data), "raw_body", {"body": data}, None, pipeline)


# ---------------------------------------------------------------------------------------------------------------
# Byte mutators
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("position", [0, 7, 511, 512, 10_000])
@pytest.mark.parametrize("bit", [0, 3, 7])
def test_flip_bit_changes_exactly_one_bit_at_the_wrapped_position(position: int, bit: int) -> None:
    flipped = flip_bit(DATA, position, bit)
    difference = np.frombuffer(flipped, np.uint8) ^ np.frombuffer(DATA, np.uint8)
    assert len(flipped) == len(DATA)
    assert np.flatnonzero(difference).tolist() == [position % len(DATA)]
    assert difference[position % len(DATA)] == 1 << bit


def test_overwrite_insert_delete_truncate_change_the_bytes_as_named() -> None:
    written = overwrite(DATA, 10, b"\xff\xff\xff")
    assert len(written) == len(DATA) and written[10:13] == b"\xff\xff\xff" and written[13:] == DATA[13:]
    assert overwrite(DATA, len(DATA) - 1, b"abc") == DATA[:-1] + b"a"  # cut at the end, never longer
    inserted = insert_bytes(DATA, 5, b"XYZ")
    assert inserted == DATA[:5] + b"XYZ" + DATA[5:]
    deleted = delete_bytes(DATA, 5, 20)
    assert deleted == DATA[:5] + DATA[25:] and len(deleted) == len(DATA) - 20
    for length in (0, 1, 100, len(DATA) - 1, len(DATA), 5 * len(DATA)):
        cut = truncate(DATA, length)
        assert len(cut) < len(DATA) and DATA.startswith(cut)
    assert flip_bit(b"", 3, 1) == b"" and delete_bytes(b"", 0, 1) == b""


def test_splice_joins_the_head_of_one_file_to_the_tail_of_another() -> None:
    png, jpeg = encode_seed("png_rgb8", 8, 8, "noise", 1), encode_seed("jpeg_baseline", 8, 8, "noise", 1)
    spliced = splice(png, jpeg, 33, 20)
    assert spliced == png[:33] + jpeg[20:]
    assert splice(png, jpeg, len(png), len(jpeg)) == png  # cuts wrap into [0, len]


def test_duplicate_range_repeats_a_piece_after_itself_or_at_a_given_offset() -> None:
    assert duplicate_range(DATA, 10, 4, copies=3) == DATA[:14] + DATA[10:14] * 3 + DATA[14:]
    assert duplicate_range(DATA, 10, 4, at=0) == DATA[10:14] + DATA


def test_png_chunk_and_jpeg_segment_spans_cover_the_files_structure() -> None:
    png = encode_seed("png_palette_trns", 20, 10, "smooth", 3)
    spans = png_chunk_spans(png)
    kinds = [png[start + 4: start + 8] for start, _ in spans]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"PLTE" in kinds and b"tRNS" in kinds
    assert spans[0][0] == 8 and spans[-1][1] == len(png)
    assert all(end == next_start for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False))

    jpeg = encode_seed("jpeg_progressive", 40, 30, "noise", 3)
    markers = [jpeg[start + 1] for start, _ in jpeg_segment_spans(jpeg)]
    assert 0xC2 in markers and 0xC4 in markers and markers.count(0xDA) > 1  # progressive: SOF2, DHT, many scans
    assert jpeg_segment_spans(jpeg)[-1][1] == len(jpeg) - 2  # everything up to EOI


# ---------------------------------------------------------------------------------------------------------------
# Header mutators: the claimed size is what a reader of the format then reports
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", IN_RANGE_SIZES)
@pytest.mark.parametrize("kind", ["png_rgb8", "png_grey16", "png_palette_trns"])
def test_png_ihdr_claims_the_size_with_a_valid_crc(kind: str, size: tuple[int, int]) -> None:
    assert pillow_size(set_png_size(encode_seed(kind, 9, 5, "noise", 0), *size)) == size  # Pillow checks the CRC


@pytest.mark.parametrize("size", IN_RANGE_SIZES)
@pytest.mark.parametrize("kind", ["jpeg_baseline", "jpeg_progressive", "jpeg_cmyk"])
def test_jpeg_sof_claims_the_size(kind: str, size: tuple[int, int]) -> None:
    assert pillow_size(set_jpeg_size(encode_seed(kind, 9, 5, "noise", 0), *size)) == size


@pytest.mark.parametrize("size", [*IN_RANGE_SIZES, (70_000, 3), (2**31 - 1, 2)])
@pytest.mark.parametrize("kind", ["tiff_raw", "tiff_lzw", "tiff_grey16"])
def test_tiff_tags_claim_the_size_and_widen_short_fields(kind: str, size: tuple[int, int]) -> None:
    data = set_tiff_size(encode_seed(kind, 9, 5, "noise", 0), *size)
    if size[0] * size[1] < Image.MAX_IMAGE_PIXELS * 2:
        assert pillow_size(data) == size
    else:  # Pillow reports the size through its bomb error
        with pytest.raises(Image.DecompressionBombError, match=f"{size[0] * size[1]} pixels"):
            pillow_size(data)


@pytest.mark.parametrize("size", [*IN_RANGE_SIZES, (-1, -64)])
def test_bmp_claims_signed_sizes(size: tuple[int, int]) -> None:
    data = set_bmp_size(encode_seed("bmp_rgb", 9, 5, "noise", 0), *size)
    assert struct.unpack("<ii", data[18:26]) == size
    if size[0] > 0:
        assert pillow_size(data) == (size[0], abs(size[1]))


@pytest.mark.parametrize("size", IN_RANGE_SIZES)
def test_gif_screen_and_frame_claim_the_size(size: tuple[int, int]) -> None:
    original = encode_seed("gif_transparent", 9, 5, "noise", 0)
    screen = set_gif_screen_size(original, *size)
    assert struct.unpack("<HH", screen[6:10]) == size and len(screen) == len(original)
    assert pillow_size(screen) == (max(size[0], 9), max(size[1], 5))  # Pillow grows the canvas to hold the frame
    frame = set_gif_frame_size(original, *size)
    descriptor = frame.index(b"\x2c\x00\x00\x00\x00")  # the frame at (0, 0)
    assert struct.unpack("<HH", frame[descriptor + 5: descriptor + 9]) == size
    assert pillow_size(frame) == size


@pytest.mark.parametrize("kind", ["webp_lossy", "webp_lossless", "webp_alpha", "webp_animated"])
def test_webp_claims_the_size_in_its_first_chunk(kind: str) -> None:
    original = encode_seed(kind, 9, 5, "noise", 0)
    data = set_webp_size(original, 300, 200)
    assert data != original and len(data) == len(original)
    chunk = data[12:16]
    if chunk == b"VP8X":
        assert (int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1) == (300, 200)
    else:
        assert pillow_size(data) == (300, 200)


def test_ico_entry_and_embedded_png_claim_the_size() -> None:
    data = set_ico_size(encode_seed("ico", 16, 16, "noise", 0), 300, 200)
    assert data[6:8] == bytes([300 % 256, 200])
    offset = int.from_bytes(data[18:22], "little")
    assert data[offset: offset + 8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[offset + 16: offset + 24]) == (300, 200)


def test_claims_wrap_like_a_c_cast_and_include_the_limit_edges() -> None:
    png = set_png_size(encode_seed("png_rgb8", 4, 4, "flat", 0), -1, -1)
    assert png[16:24] == b"\xff" * 8
    assert (6324, 6324) in CLAIMED_SIZES and (6325, 6325) in CLAIMED_SIZES  # just under and over 40 Mpx
    assert 6324**2 <= shipped_max_image_pixels() < 6325**2


@pytest.mark.parametrize("value", [1, 6, 8, 9, 0, 65535])
@pytest.mark.parametrize("big_endian", [True, False])
def test_exif_orientation_block_is_read_back_by_pillow(value: int, big_endian: bool) -> None:
    block = exif_orientation_block(value, big_endian=big_endian)
    image = Image.new("RGB", (4, 4))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=block)
    with Image.open(io.BytesIO(buffer.getvalue())) as reread:
        assert reread.getexif().get(0x0112) == value


@pytest.mark.parametrize("kind", sorted(ALL_KINDS))
def test_every_seed_kind_encodes_a_file_of_its_format_at_any_size(kind: str) -> None:
    for width, height in [(1, 1), (17, 3), (min(64, ALL_KINDS[kind].max_side), 40)]:
        data = encode_seed(kind, width, height, "face", 5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                assert image.format == ALL_KINDS[kind].container
                if image.format != "ICO":
                    assert image.size == (width, height)
    assert encode_seed(kind, 20, 20, "noise", 9) == encode_seed(kind, 20, 20, "noise", 9)  # deterministic


# ---------------------------------------------------------------------------------------------------------------
# One input: outcomes, the contract, the time limit, the memory probe
# ---------------------------------------------------------------------------------------------------------------


def test_run_case_accepts_valid_images_and_names_refusals() -> None:
    jpeg = encode_seed("jpeg_baseline", 500, 400, "face", 0)
    for pipeline in PIPELINES:
        assert run_case(case(jpeg, pipeline), 10.0).kind == OK
    refused = run_case(case(b"hello, not an image"), 10.0)
    assert (refused.kind, refused.label) == (REFUSED, "refused:not_an_image")
    empty = FuzzCase(Payload("request_rows", "", "empty row", b""), "arbitrary", {}, None, PIPELINES[0])
    assert run_case(empty, 10.0).label == "refused:missing_image"


def test_run_case_records_an_exception_other_than_a_refusal_as_a_crash() -> None:
    # A real misconfiguration: OpenCV cannot resize to 0x0, and the worker code does not expect it to.
    broken = Pipeline("broken", PreprocessConfig(input_size=(0, 0)), None)
    outcome = run_case(case(encode_seed("png_rgb8", 8, 8, "noise", 0), broken), 10.0)
    assert outcome.kind == CRASH and outcome.code == "error"
    assert outcome.where.startswith("handler/forensics.py:")


def test_an_input_past_the_time_limit_is_a_hang() -> None:
    big = encode_seed("png_rgb8", 700, 700, "noise", 0)
    outcome = run_case(case(big, PIPELINES[3]), 0.0005)
    assert outcome.kind == HANG and outcome.seconds >= 0.0005


def test_time_limit_interrupts_python_code_and_rearms_an_outer_alarm() -> None:
    fired: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        with pytest.raises(InputHang), time_limit(0.05):
            while True:
                time.sleep(0.001)
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 29.0 < remaining < 30.0  # the outer alarm goes on with what was left of it
        assert signal.getsignal(signal.SIGALRM) is not None and not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_contract_problems_name_what_the_worker_could_not_use() -> None:
    pipeline = PIPELINES[0]
    size = pipeline.preprocess.input_size
    rgb = np.zeros((10, 10, 3), np.uint8)
    good = ScoredRegions(REGION_WHOLE_IMAGE, (), (torch.zeros(4, *size),))
    assert contract_problems(rgb, good, pipeline) == []
    non_finite = torch.zeros(4, *size)
    non_finite[0, 0, 0] = float("nan")
    cases = {
        "non-finite": ScoredRegions(REGION_WHOLE_IMAGE, (), (non_finite,)),
        "not float32": ScoredRegions(REGION_WHOLE_IMAGE, (), (torch.zeros(4, *size, dtype=torch.float64),)),
        "not float32 (4,": ScoredRegions(REGION_WHOLE_IMAGE, (), (torch.zeros(3, *size),)),
        "no model input": ScoredRegions(REGION_WHOLE_IMAGE, (), ()),
    }
    for phrase, regions in cases.items():
        assert any(phrase in problem for problem in contract_problems(rgb, regions, pipeline)), phrase
    assert "not uint8" in contract_problems(rgb.astype(np.float32), good, pipeline)[0]
    limit = pipeline.preprocess.max_image_pixels
    too_many = np.lib.stride_tricks.as_strided(rgb, (limit + 1, 1, 3), (0, 0, 1))  # no memory behind it
    assert "limit" in contract_problems(too_many, good, pipeline)[0]


def test_memory_probe_sees_a_transient_allocation_and_resets() -> None:
    probe = MemoryProbe()
    assert probe.exact_peaks  # Linux: /proc/self/clear_refs resets the high-water mark
    probe.reset_peak()
    before = probe.rss()
    buffer = np.ones(300 * 2**20, np.uint8)  # 300 MiB, touched
    del buffer
    assert probe.peak() >= before + 290 * 2**20
    assert probe.rss() < before + 100 * 2**20
    probe.reset_peak()
    assert probe.peak() < before + 100 * 2**20


# ---------------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------------


def test_failures_are_saved_as_reproducers_and_fail_the_report(tmp_path: Path) -> None:
    config = FuzzConfig(examples=3, output_dir=tmp_path, rss_allowance_bytes=1)
    probe = MemoryProbe()
    recorder = Recorder(config, probe, baseline_rss=0)  # a bound of 1 byte: every input goes over it
    crashing = case(encode_seed("gif_transparent", 5, 5, "noise", 0),
                    Pipeline("broken", PreprocessConfig(input_size=(0, 0)), None), strategy="header_claims")
    assert recorder.run(crashing).kind == CRASH
    assert recorder.run(case(b"\x00" * 10)).kind == REFUSED
    assert recorder.run(case(encode_seed("png_rgba", 30, 30, "noise", 0))).kind == OK

    report = build_report(recorder, config, wall_seconds=1.0, final_rss=probe.rss())
    results = report.results
    assert not report.passed
    assert results["failed_because"][0] == "1 crash(es)" and "over the bound" in results["failed_because"][-1]
    crash = results["crashes"][0]
    assert crash["hex_prefix"] == crashing.payload.data[:48].hex() and crash["strategy"] == "header_claims"
    saved = tmp_path / crash["reproducer"]
    assert saved.read_bytes() == crashing.payload.data
    row = json.loads(saved.with_suffix(".json").read_text())
    assert row["row"]["body"]["type"] == "bytes" and row["pipeline"] == "broken"
    assert len(results["over_memory_bound"]) == 3
    assert results["examples"]["by_strategy"] == {"header_claims": 1, "valid_images": 2}
    assert results["outcomes"] == {"crash": 1, "refused:not_an_image": 1, "ok": 1}
    assert len(list((tmp_path / REPRODUCERS_DIR).glob("*.bin"))) == 4

    json_path, markdown_path = write_report(report, tmp_path)
    assert json.loads(json_path.read_text())["passed"] is False
    text = markdown_path.read_text()
    assert "**FAILED**: 1 crash(es)" in text and "## Crashes: 1" in text and "| header_claims | 1 |" in text
    assert (json_path.name, markdown_path.name) == (JSON_NAME, MARKDOWN_NAME)


def test_fuzz_refuses_unknown_strategies(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown strategies"):
        fuzz(FuzzConfig(examples=1, output_dir=tmp_path, strategies=("no_such",)))


# ---------------------------------------------------------------------------------------------------------------
# Fuzzing: no crash, no hang, bounded memory
# ---------------------------------------------------------------------------------------------------------------


def claiming(kind: str, setter: str, size: tuple[int, int]) -> FuzzCase:
    """A small valid file whose header claims `size`, through the face pipeline (full decode, detection, crops)."""
    data = HEADER_SETTERS[setter].apply(encode_seed(kind, 16, 16, "noise", 1), *size)
    payload = Payload("header_claims", kind, f"{kind} | {setter}={size[0]}x{size[1]}", data)
    return FuzzCase(payload, "raw_body", {"body": data}, None, PIPELINES[-1])


# The costliest inputs the fuzzer met: tiny files that decode to a filled canvas at the 40 Mpx limit.
AT_THE_LIMIT = [
    claiming("gif_transparent", "gif_screen", (8000, 5000)),  # 45-byte GIF → transparent 40 Mpx canvas
    claiming("gif_animated", "gif_screen", (65535, 610)),
    claiming("webp_animated", "webp_canvas", (8000, 5000)),
    claiming("tiff_group4", "tiff_tags", (40_000_000, 1)),
    claiming("jpeg_cmyk", "jpeg_sof", (8000, 5000)),
    claiming("png_rgb16", "png_ihdr", (40_000_000, 1)),
    claiming("png_rgba", "png_ihdr", (6324, 6324)),
]
PROBE = MemoryProbe()


def at_the_limit(test: Callable[..., None]) -> Callable[..., None]:
    """Adds AT_THE_LIMIT as explicit hypothesis examples: they run first, whatever the generated ones reach."""
    for request in AT_THE_LIMIT:
        test = example(request=request)(test)
    return test


@hypothesis_seed(7)
@settings(max_examples=1500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(request=fuzz_cases())
@at_the_limit
def test_every_request_is_scored_or_refused_in_bounded_time_and_memory(request: FuzzCase) -> None:
    PROBE.reset_peak()
    before = PROBE.rss()
    outcome = run_case(request, 10.0)
    rise = PROBE.peak() - before
    where = (f"{request.payload.description} ({request.layout}, {request.pipeline.name}), first bytes "
             f"{request.payload.data[:48].hex()}")
    assert outcome.kind in (OK, REFUSED), f"{outcome.kind}: {outcome.message} at {outcome.where} on {where}"
    assert rise <= FuzzConfig().allowance(), f"RSS rose {rise / 2**20:.0f} MiB on {where}"


def test_fuzz_run_has_no_crash_no_hang_and_bounded_memory(tmp_path: Path) -> None:
    report = fuzz(FuzzConfig(examples=1000, seed=3, output_dir=tmp_path))
    results = report.results
    assert report.passed, (results["failed_because"], results["crashes"][:3], results["hangs"][:3],
                           results["over_memory_bound"][:3])
    assert results["examples"]["total"] == 1000
    assert set(results["examples"]["by_strategy"]) == set(STRATEGY_NAMES)
    assert set(results["examples"]["by_pipeline"]) == {pipeline.name for pipeline in PIPELINES}
    outcomes = results["outcomes"]
    assert outcomes.get("ok", 0) > 100  # the fuzzer reaches the model input, not only the decoders' errors
    assert {"refused:corrupt_image", "refused:not_an_image", "refused:image_too_large"} <= set(outcomes)
    memory = results["memory"]
    assert memory["baseline_rss_mib"] <= memory["peak_rss_mib"] <= memory["bound_mib"]
    assert 0 < results["seconds_per_input"]["p50"] <= results["seconds_per_input"]["max"] < 10.0
