"""benchmarks/serving.py: ratios and targets, deployment settings, image selection, the command line, a full run."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks.naive_server import NAIVE_OPTIMIZATION
from benchmarks.serving import (
    TARGETS,
    ServingBenchConfig,
    deployment_settings,
    parse_args,
    ratios,
    request_images,
    run_benchmark,
    targets_met,
)
from benchmarks.serving_report import JSON_NAME, MARKDOWN_NAME, PLOT_NAME
from handler.torchscript import ServingOptions
from scripts.package_model import DEFAULT_MODEL_CONFIG

AT_MOST = {"p50_c1_over_in_process", "cold_start_seconds"}  # the targets that are upper bounds


def level(concurrency: int, throughput_rps: float, p50: float) -> dict[str, Any]:
    return {"concurrency": concurrency, "throughput_rps": throughput_rps, "latency_ms": {"p50": p50}}


def results(**parts: Any) -> dict[str, Any]:
    """A measured run: TorchServe at c=1 and c=16, the limit, the naive server at c=16; `parts` replace sections."""
    measured = {
        "torchserve": {"cold_start_seconds": [4.1, 2.9, 3.3],
                       "levels": [level(1, 70.0, 14.2), level(16, 118.0, 131.0)]},
        "limit": {"limit_images_per_second": 131.4, "pipeline_images_per_second": 96.3,
                  "pipeline_latency_ms_batch1": {"p50": 11.8}},
        "naive": {NAIVE_OPTIMIZATION: {"levels": [level(1, 40.0, 24.0), level(16, 35.5, 450.0)]}},
    }
    measured.update(parts)
    return {key: value for key, value in measured.items() if value is not None}


# --- ratios and targets ------------------------------------------------------------------------------------------

def test_ratios_divide_the_measured_figures():
    run = results()
    c1, c16 = run["torchserve"]["levels"]
    limit, naive_c16 = run["limit"], run["naive"][NAIVE_OPTIMIZATION]["levels"][1]
    assert ratios(run) == {
        "deployment_over_limit_c16": round(c16["throughput_rps"] / limit["limit_images_per_second"], 3),
        "deployment_over_pipeline_c16": round(c16["throughput_rps"] / limit["pipeline_images_per_second"], 3),
        "deployment_over_naive_c16": round(c16["throughput_rps"] / naive_c16["throughput_rps"], 3),
        "p50_c1_over_in_process": round(c1["latency_ms"]["p50"] / limit["pipeline_latency_ms_batch1"]["p50"], 3),
        "cold_start_seconds": sorted(run["torchserve"]["cold_start_seconds"])[1],  # the median of three
    }


def test_ratios_are_none_where_the_limit_was_not_measured():
    values = ratios(results(limit=None))
    assert values["deployment_over_limit_c16"] is None
    assert values["deployment_over_pipeline_c16"] is None
    assert values["p50_c1_over_in_process"] is None
    assert values["deployment_over_naive_c16"] is not None and values["cold_start_seconds"] is not None


@pytest.mark.parametrize("naive", [None, {}, {"frozen_channels_last": {"levels": [level(16, 50.0, 300.0)]}},
                                   {NAIVE_OPTIMIZATION: {"levels": [level(1, 40.0, 24.0)]}}],
                         ids=["no naive section", "no naive server", "only the optimised naive", "naive without c16"])
def test_the_naive_ratio_is_none_without_the_plain_naive_server_at_c16(naive):
    values = ratios(results(naive=naive))
    assert values["deployment_over_naive_c16"] is None
    assert values["deployment_over_limit_c16"] is not None


def test_ratios_are_none_for_concurrencies_that_were_not_measured():
    only_c4 = {"cold_start_seconds": [2.5], "levels": [level(4, 90.0, 40.0)]}
    values = ratios(results(torchserve=only_c4))
    assert {key for key, value in values.items() if value is None} == {
        "deployment_over_limit_c16", "deployment_over_pipeline_c16", "deployment_over_naive_c16",
        "p50_c1_over_in_process"}
    assert values["cold_start_seconds"] == 2.5


def test_a_measured_zero_throughput_is_a_missed_target_not_an_unmeasured_one():
    # TorchServe failed every request at c=16: that was measured, and it misses the targets.
    failing = {"cold_start_seconds": [3.0], "levels": [level(1, 70.0, 14.2), level(16, 0.0, float("nan"))]}
    values = ratios(results(torchserve=failing))
    assert values["deployment_over_limit_c16"] == 0.0 and values["deployment_over_naive_c16"] == 0.0
    met = targets_met(values)
    assert met["deployment_over_limit_c16"] is False and met["deployment_over_naive_c16"] is False


def test_targets_are_met_at_their_bounds_and_missed_just_past_them():
    assert targets_met(dict(TARGETS)) == {key: True for key in TARGETS}
    past = {key: bound * (1.001 if key in AT_MOST else 0.999) for key, bound in TARGETS.items()}
    assert targets_met(past) == {key: False for key in TARGETS}
    inside = {key: bound * (0.5 if key in AT_MOST else 2.0) for key, bound in TARGETS.items()}
    assert targets_met(inside) == {key: True for key in TARGETS}


def test_targets_not_measured_are_none():
    partial = {"deployment_over_limit_c16": None, "cold_start_seconds": 1.0}
    assert targets_met(partial) == {"deployment_over_limit_c16": None, "deployment_over_naive_c16": None,
                                    "p50_c1_over_in_process": None, "cold_start_seconds": True}


# --- deployment settings -------------------------------------------------------------------------------------------

def test_deployment_settings_keep_the_shipped_model_config_and_set_the_model_preparation():
    shipped_text = DEFAULT_MODEL_CONFIG.read_text()
    shipped = yaml.safe_load(shipped_text)
    config = ServingBenchConfig(device="cpu", serving=ServingOptions("frozen", "bf16"))
    settings = deployment_settings(config)
    assert {key: value for key, value in settings.items() if key not in ("deviceType", "handler")} == \
        {key: value for key, value in shipped.items() if key not in ("deviceType", "handler")}
    assert settings["deviceType"] == "cpu"
    assert settings["handler"] == {**shipped["handler"], "optimization": "frozen", "precision": "bf16"}
    assert DEFAULT_MODEL_CONFIG.read_text() == shipped_text  # read, never written


def test_deployment_settings_apply_the_overrides():
    shipped = yaml.safe_load(DEFAULT_MODEL_CONFIG.read_text())
    config = ServingBenchConfig(workers=3, torch_threads=1, batch_size=4, max_batch_delay=25, device="cuda",
                                serving=ServingOptions("none", "fp16"))
    settings = deployment_settings(config)
    assert (settings["minWorkers"], settings["maxWorkers"], settings["batchSize"], settings["maxBatchDelay"]) == \
        (3, 3, 4, 25)
    assert settings["deviceType"] == "gpu"
    assert settings["handler"] == {**shipped["handler"], "torch_threads": 1, "optimization": "none",
                                   "precision": "fp16"}
    untouched = set(shipped) - {"minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "deviceType", "handler"}
    assert untouched and all(settings[key] == shipped[key] for key in untouched)


def test_zero_torch_threads_is_an_override_not_a_default():
    settings = deployment_settings(ServingBenchConfig(torch_threads=0, device="cpu"))
    assert settings["handler"]["torch_threads"] == 0


# --- request images ------------------------------------------------------------------------------------------------

def image_folder(root: Path, count: int) -> Path:
    """`count` image files in two sub-folders with mixed suffixes, plus files that are not images."""
    suffixes = (".jpg", ".JPEG", ".png", ".webp")
    for index in range(count):
        folder = root / ("fake" if index % 2 else "real")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img_{index:03d}{suffixes[index % len(suffixes)]}").write_bytes(b"pixels")
    (root / "real" / "notes.txt").write_text("not an image")
    (root / "labels.csv").write_text("path,label\n")
    return root


@pytest.mark.parametrize(("files", "count"), [(20, 5), (24, 8), (23, 5), (12, 8)])
def test_request_images_are_an_evenly_spread_sorted_fixed_selection(tmp_path, files, count):
    folder = image_folder(tmp_path / "images", files)
    config = ServingBenchConfig(images=folder, image_count=count)
    found, selection = request_images(config)
    everything = sorted(path for path in folder.rglob("*") if path.suffix.lower() in (".jpg", ".jpeg", ".png",
                                                                                       ".webp"))
    assert found == folder and len(everything) == files
    assert len(selection) == count and selection == sorted(selection) and len(set(selection)) == count
    indices = [everything.index(path) for path in selection]
    assert indices[0] == 0
    # Evenly spread: the files left out after the last one picked are fewer than one spacing's worth.
    assert files - 1 - indices[-1] < -(-files // count)
    assert request_images(config) == (found, selection)  # the same files every run


def test_request_images_take_every_image_when_fewer_than_asked(tmp_path):
    folder = image_folder(tmp_path / "images", 6)
    _, selection = request_images(ServingBenchConfig(images=folder, image_count=64))
    assert len(selection) == 6 and all(path.suffix.lower() != ".txt" for path in selection)


def test_request_images_without_images_name_the_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("no pictures here")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        request_images(ServingBenchConfig(images=tmp_path))


# --- command line --------------------------------------------------------------------------------------------------

def test_parse_args_without_flags_gives_the_defaults():
    assert parse_args([]) == ServingBenchConfig()


def test_parse_args_maps_every_flag(tmp_path):
    config = parse_args([
        "--export-dir", str(tmp_path / "export"), "--images", str(tmp_path / "faces"), "--image-count", "12",
        "--concurrency", "2", "8", "--requests", "50", "--warmup", "6", "--cold-starts", "2", "--workers", "2",
        "--torch-threads", "1", "--batch-size", "4", "--max-batch-delay", "15", "--optimization", "frozen",
        "--precision", "bf16", "--device", "cpu", "--no-naive", "--no-limit", "--output-dir", str(tmp_path / "out"),
        "--config", "dev", "--server-warmup", "30", "--no-naive-optimized", "--limit-batch-sizes", "1", "4",
        "--limit-seconds", "0.5", "--limit-repeats", "2",
    ])
    assert config == replace(
        ServingBenchConfig(), export_dir=tmp_path / "export", images=tmp_path / "faces", image_count=12,
        concurrencies=(2, 8), requests=50, warmup=6, cold_starts=2, workers=2, torch_threads=1, batch_size=4,
        max_batch_delay=15, serving=ServingOptions("frozen", "bf16"), device="cpu", naive=False, limit=False,
        output_dir=tmp_path / "out", properties="dev", server_warmup=30, naive_optimized=False,
        limit_batch_sizes=(1, 4), limit_seconds=0.5, limit_repeats=2)


# --- the whole benchmark -------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.e2e
def test_run_benchmark_measures_every_server_and_writes_a_consistent_report(tiny_export, tiny_dataset, tmp_path):
    config = ServingBenchConfig(export_dir=tiny_export, images=tiny_dataset, image_count=8, concurrencies=(1, 4),
                                requests=16, warmup=4, server_warmup=16, cold_starts=1, workers=1, device="cpu",
                                limit_batch_sizes=(1, 2), limit_seconds=0.05, limit_repeats=1,
                                output_dir=tmp_path / "report")
    returned = run_benchmark(config)

    for name in (JSON_NAME, MARKDOWN_NAME, PLOT_NAME):
        assert (config.output_dir / name).is_file(), name
    saved = json.loads((config.output_dir / JSON_NAME).read_text())
    assert saved["ratios"] == returned["ratios"]
    assert saved["images"]["count"] == 8

    # Both servers measured, at every concurrency, with every request answered.
    assert set(saved["naive"]) == {NAIVE_OPTIMIZATION, config.serving.optimization}
    sections = {"torchserve": saved["torchserve"], **{f"naive {key}": value for key, value in saved["naive"].items()}}
    for name, section in sections.items():
        assert [level["concurrency"] for level in section["levels"]] == list(config.concurrencies), name
        for level in section["levels"]:
            expected = max(config.requests, 8 * level["concurrency"])
            assert level["requests"] == level["ok"] == expected, (name, level)
            assert level["errors"] == 0 and level["statuses"] == {"200": expected}, (name, level)
            assert level["throughput_rps"] > 0 and level["latency_ms"]["p50"] > 0, (name, level)
    assert all(level["mean_batch_size"] == 1.0 for section in saved["naive"].values() for level in section["levels"])
    assert all(level["mean_batch_size"] >= 1.0 for level in saved["torchserve"]["levels"])
    assert len(saved["torchserve"]["cold_start_seconds"]) == 1 and saved["torchserve"]["cold_start_seconds"][0] > 0
    assert saved["torchserve"]["memory_mb"]["frontend"] > 0 and len(saved["torchserve"]["memory_mb"]["workers"]) == 1
    assert saved["deployment"]["minWorkers"] == saved["deployment"]["maxWorkers"] == 1

    # The limit was measured with the small settings, and the ratios follow from the saved numbers.
    limit = saved["limit"]
    assert set(limit["forward_images_per_second"]["one_process"]) == {"1", "2"}
    assert limit["limit_images_per_second"] == max(rate for rates in limit["forward_images_per_second"].values()
                                                   for rate in rates.values())
    c1 = saved["torchserve"]["levels"][0]
    assert saved["ratios"]["p50_c1_over_in_process"] == pytest.approx(
        round(c1["latency_ms"]["p50"] / limit["pipeline_latency_ms_batch1"]["p50"], 3))
    assert saved["ratios"]["cold_start_seconds"] == pytest.approx(
        round(saved["torchserve"]["cold_start_seconds"][0], 3))
    # No level at c=16 was run, so the c=16 ratios and their targets are "not measured", not made up.
    for key in ("deployment_over_limit_c16", "deployment_over_pipeline_c16", "deployment_over_naive_c16"):
        assert saved["ratios"][key] is None
    assert saved["targets"]["met"] == targets_met(saved["ratios"])
    assert saved["targets"]["met"]["deployment_over_limit_c16"] is None

    text = (config.output_dir / MARKDOWN_NAME).read_text()
    assert "| TorchServe | 1 |" in text and "| naive Flask (plain TorchScript) | 4 |" in text


@pytest.mark.parametrize("field", ["cold_starts", "image_count"])
def test_a_run_needs_a_server_start_and_an_image(field):
    with pytest.raises(ValueError, match="must be >= 1"):
        ServingBenchConfig(**{field: 0})
