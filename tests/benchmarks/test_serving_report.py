"""benchmarks/serving_report.py: serving.json round-trips, serving.md shows the numbers, the plot is a real PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from benchmarks.load_client import LoadResult
from benchmarks.serving import TARGETS
from benchmarks.serving_report import JSON_NAME, MARKDOWN_NAME, PLOT_NAME, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHOWN_TO_ONE_DECIMAL = 0.05 + 1e-9  # a figure printed with one decimal is within half a unit


def level(concurrency: int, latencies_ms: list[float], wall_seconds: float, batch: int | None) -> dict[str, Any]:
    """A concurrency level as the load client summarises it."""
    count = len(latencies_ms)
    return LoadResult(concurrency, count, wall_seconds, latencies_ms, {200: count},
                      [batch] * count if batch else []).to_dict()


def synthetic_results(with_limit: bool = True) -> dict[str, Any]:
    """Everything run_benchmark produces, with made-up but plausible figures."""
    torchserve_levels = [level(1, [11.0, 12.5, 13.0, 30.0], 0.07, 1), level(4, [20.0, 21.0, 22.5, 40.0], 0.03, 3),
                         level(16, [60.0, 64.0, 70.0, 90.0, 95.0], 0.041, 7)]
    naive_levels = [level(1, [9.0, 10.0, 11.0, 12.0], 0.045, 1), level(16, [20.0, 21.0, 22.0, 23.0], 0.05, 1)]
    results: dict[str, Any] = {
        "machine": {"cpu": "Example CPU @ 2.1GHz", "cpu_features": ["avx2", "avx512f"], "cores": 2,
                    "memory_gib": 7.8, "gpu": None, "python": "3.11.9", "torch": "2.15.0", "torchserve": "0.12.0",
                    "date": "2025-01-02T03:04:05+00:00"},
        "config": {"export_dir": "/exports/demo", "image_count": 8, "concurrencies": [1, 4, 16], "device": "cpu",
                   "serving": {"optimization": "frozen_channels_last", "precision": "fp32"}},
        "deployment": {"minWorkers": 2, "maxWorkers": 2, "batchSize": 8, "maxBatchDelay": 10, "deviceType": "cpu",
                       "handler": {"optimization": "frozen_channels_last", "precision": "fp32", "torch_threads": 0}},
        "images": {"count": 8, "folder": "/data/faces", "mean_bytes": 48_213},
        "torchserve": {"cold_start_seconds": [3.41, 2.96, 3.12], "levels": torchserve_levels,
                       "memory_mb": {"frontend": 412.5, "workers": [301.2, 305.9]}},
        "naive": {"none": {"optimization": "none", "cold_start_seconds": [4.37], "levels": naive_levels,
                           "memory_mb": {"process": 350.1}}},
    }
    if with_limit:
        results["limit"] = {
            "forward_images_per_second": {"one_process": {"1": 80.25, "2": 101.5},
                                          "per_core_processes": {"1": 95.75, "2": 131.4}},
            "limit_images_per_second": 131.4, "limit_layout": "per_core_processes", "limit_batch_size": 2,
            "pipeline_latency_ms_batch1": {"p50": 9.876, "p95": 12.345, "mean": 10.2},
            "pipeline_images_per_second": 88.8, "pipeline_batch_size": 2,
        }
    c16 = torchserve_levels[2]["throughput_rps"]
    results["ratios"] = {
        "deployment_over_limit_c16": round(c16 / 131.4, 3) if with_limit else None,
        "deployment_over_pipeline_c16": round(c16 / 88.8, 3) if with_limit else None,
        "deployment_over_naive_c16": round(c16 / naive_levels[1]["throughput_rps"], 3),
        "p50_c1_over_in_process": round(torchserve_levels[0]["latency_ms"]["p50"] / 9.876, 3) if with_limit else None,
        "cold_start_seconds": sorted(results["torchserve"]["cold_start_seconds"])[1],
    }
    met = {key: None if results["ratios"][key] is None else
           (results["ratios"][key] <= bound if key in {"p50_c1_over_in_process", "cold_start_seconds"}
            else results["ratios"][key] >= bound) for key, bound in TARGETS.items()}
    results["targets"] = {"bounds": dict(TARGETS), "met": met}
    return results


def table_rows(markdown: str, header_start: str) -> list[list[str]]:
    """Cells of the rows of the table whose header row starts with `header_start`."""
    lines = markdown.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.fixture(params=[True, False], ids=["with limit", "without limit"])
def report(request, tmp_path) -> tuple[dict[str, Any], dict[str, Path]]:
    results = synthetic_results(with_limit=request.param)
    return results, write_report(results, tmp_path / "report")


def test_the_three_files_are_written_into_the_folder(report, tmp_path):
    _, paths = report
    assert {key: path.name for key, path in paths.items()} == {"json": JSON_NAME, "markdown": MARKDOWN_NAME,
                                                               "plot": PLOT_NAME}
    assert all(path.parent == tmp_path / "report" and path.is_file() for path in paths.values())


def test_json_round_trips(report):
    results, paths = report
    assert json.loads(paths["json"].read_text()) == results


def test_markdown_server_table_holds_every_measured_level(report):
    results, paths = report
    rows = table_rows(paths["markdown"].read_text(), "| server | concurrency |")
    sections = [("TorchServe", results["torchserve"]), ("naive Flask (plain TorchScript)", results["naive"]["none"])]
    expected = [(name, level) for name, section in sections for level in section["levels"]]
    assert len(rows) == len(expected)
    for cells, (name, level) in zip(rows, expected, strict=True):
        assert cells[0] == name and int(cells[1]) == level["concurrency"]
        assert float(cells[2]) == pytest.approx(level["throughput_rps"], abs=SHOWN_TO_ONE_DECIMAL)
        assert float(cells[3]) == pytest.approx(level["latency_ms"]["p50"], abs=SHOWN_TO_ONE_DECIMAL)
        assert float(cells[5]) == pytest.approx(level["latency_ms"]["p99"], abs=SHOWN_TO_ONE_DECIMAL)
        assert int(cells[6]) == level["errors"]
        assert float(cells[7]) == pytest.approx(level["mean_batch_size"], abs=SHOWN_TO_ONE_DECIMAL)


def test_markdown_ratio_table_shows_each_value_and_verdict(report):
    results, paths = report
    rows = {cells[0]: cells for cells in table_rows(paths["markdown"].read_text(), "| measure | value |")}
    assert set(rows) == set(results["ratios"])
    verdicts = {True: "yes", False: "**no**", None: "not measured"}
    for key, value in results["ratios"].items():
        cells = rows[key]
        assert (float(cells[1]) == pytest.approx(value, rel=1e-5)) if value is not None else cells[1] == ""
        if key in TARGETS:
            assert f"{TARGETS[key]:g}" in cells[2]
            assert cells[3] == verdicts[results["targets"]["met"][key]]
        else:
            assert cells[2] == "(context)" and cells[3] == ""
    shown = {cells[3] for key, cells in rows.items() if key in TARGETS}
    assert {"yes", "**no**"} <= shown  # the synthetic figures meet some targets and miss others


def test_markdown_shows_the_limit_only_when_measured(report):
    results, paths = report
    text = paths["markdown"].read_text()
    limit = results.get("limit")
    assert ("## In-process limit" in text) == (limit is not None)
    if limit:
        assert f"**{limit['limit_images_per_second']:.1f} images/s**" in text
        assert f"p50 **{limit['pipeline_latency_ms_batch1']['p50']:.2f} ms**" in text
        rows = {cells[0]: cells[1:] for cells in table_rows(text, "| layout |")}
        for layout, rates in limit["forward_images_per_second"].items():
            shown = [float(cell) for cell in rows[f"{layout} (images/s)"]]
            assert shown == pytest.approx(list(rates.values()), abs=SHOWN_TO_ONE_DECIMAL)
    else:
        assert all(results["ratios"][key] is None for key in ("deployment_over_limit_c16", "p50_c1_over_in_process"))


def test_markdown_names_the_machine_and_the_cold_starts(report):
    results, paths = report
    text = paths["markdown"].read_text()
    assert results["machine"]["cpu"] in text and "avx512f" in text
    rows = {cells[0]: cells for cells in table_rows(text, "| server | cold start")}
    assert [float(s) for s in rows["TorchServe"][1].split(",")] == results["torchserve"]["cold_start_seconds"]
    assert float(rows["naive Flask (plain TorchScript)"][1]) == results["naive"]["none"]["cold_start_seconds"][0]


def test_plot_is_a_non_trivial_png(report):
    _, paths = report
    data = paths["plot"].read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    with Image.open(paths["plot"]) as image:
        width, height = image.size
    assert width > height > 200  # two panels side by side
