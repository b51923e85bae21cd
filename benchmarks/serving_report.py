"""The serving benchmark's report: serving.json (everything), serving.md (tables, ratios, targets), a latency plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

JSON_NAME, MARKDOWN_NAME, PLOT_NAME = "serving.json", "serving.md", "serving_latency.png"
TARGET_TEXT = {
    "deployment_over_limit_c16": "TorchServe throughput at c=16 ≥ {:g} × in-process limit",
    "deployment_over_naive_c16": "TorchServe throughput at c=16 ≥ {:g} × naive Flask server",
    "p50_c1_over_in_process": "TorchServe p50 at c=1 ≤ {:g} × in-process decode+preprocess+forward",
    "cold_start_seconds": "cold start to READY ≤ {:g} s",
}


def _servers(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every measured server by display name, TorchServe first."""
    servers = {"TorchServe": results["torchserve"]}
    for optimization, section in results.get("naive", {}).items():
        model = "plain TorchScript" if optimization == "none" else f"{optimization.replace('_', ' ')} model"
        servers[f"naive Flask ({model})"] = section
    return servers


def limit_lines(limit: dict[str, Any]) -> list[str]:
    """The in-process section: forward images/s per layout and batch size, the limit, the one-image latency."""
    batches = next(iter(limit["forward_images_per_second"].values()))
    lines = ["## In-process limit", "", "| layout | " + " | ".join(f"batch {batch}" for batch in batches) + " |",
             "|---|" + "---|" * len(batches)]
    for layout, rates in limit["forward_images_per_second"].items():
        lines.append(f"| {layout} (images/s) | " + " | ".join(f"{rate:.1f}" for rate in rates.values()) + " |")
    latency = limit["pipeline_latency_ms_batch1"]
    return lines + [
        "",
        f"- Limit: **{limit['limit_images_per_second']:.1f} images/s** ({limit['limit_layout']}, batch "
        f"{limit['limit_batch_size']}), forward passes on ready-made inputs.",
        f"- Decode + preprocess + forward in process: {limit['pipeline_images_per_second']:.1f} images/s "
        f"({limit.get('pipeline_layout', 'one_process')}, batch {limit['pipeline_batch_size']}); one image alone, "
        f"every core on it: p50 **{latency['p50']:.2f} ms**, "
        f"p95 {latency['p95']:.2f} ms.",
        "",
    ]


def markdown(results: dict[str, Any]) -> str:
    """serving.md: machine, settings, the limit, each server per concurrency, ratios and targets."""
    machine, limit, deployment = results["machine"], results.get("limit"), results["deployment"]
    serving = results["config"]["serving"]
    lines = [
        "# Serving benchmark",
        "",
        f"Machine: {machine['cpu']} ({', '.join(machine['cpu_features']) or 'no AVX2'}), {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB, GPU: {machine['gpu'] or 'none'}; Python {machine['python']}, torch "
        f"{machine['torch']}, TorchServe {machine['torchserve']}; {machine['date']}.",
        f"Requests: {results['images']['count']} images from `{results['images']['folder']}` "
        f"(mean {results['images']['mean_bytes'] / 1000:.0f} kB), device {results['config']['device']}, model "
        f"prepared `{serving['optimization']}` in {serving['precision']}.",
        f"TorchServe: {deployment['minWorkers']} worker(s), batchSize {deployment['batchSize']}, maxBatchDelay "
        f"{deployment['maxBatchDelay']} ms, handler settings {json.dumps(deployment['handler'], sort_keys=True)}.",
        "",
    ]
    if limit:
        lines += limit_lines(limit)
    lines += [
        "## Servers (closed-loop clients on the same machine)",
        "",
        "| server | concurrency | requests/s | p50 ms | p95 ms | p99 ms | errors | mean batch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, section in _servers(results).items():
        for level in section["levels"]:
            latency_ms = level["latency_ms"]
            batch = "" if level["mean_batch_size"] is None else f"{level['mean_batch_size']:.1f}"
            lines.append(f"| {name} | {level['concurrency']} | {level['throughput_rps']:.1f} | "
                         f"{latency_ms['p50']:.1f} | {latency_ms['p95']:.1f} | {latency_ms['p99']:.1f} | "
                         f"{level['errors']} | {batch} |")
    memory = results["torchserve"]["memory_mb"]
    lines += [
        "",
        "| server | cold start to ready (s) | memory (RSS MB) |",
        "|---|---|---|",
        f"| TorchServe | {', '.join(f'{s:.2f}' for s in results['torchserve']['cold_start_seconds'])} | frontend "
        f"{memory['frontend']}, workers {', '.join(str(w) for w in memory['workers'])} |",
    ]
    for name, section in _servers(results).items():
        if name != "TorchServe":
            lines.append(f"| {name} | {section['cold_start_seconds'][0]:.2f} | {section['memory_mb']['process']} |")
    lines += ["", "## Ratios and targets", "", "| measure | value | target | met |", "|---|---|---|---|"]
    bounds, met = results["targets"]["bounds"], results["targets"]["met"]
    for key, value in results["ratios"].items():
        target = TARGET_TEXT[key].format(bounds[key]) if key in bounds else "(context)"
        verdict = {True: "yes", False: "**no**", None: "not measured"}[met.get(key)] if key in bounds else ""
        lines.append(f"| {key} | {'' if value is None else f'{value:g}'} | {target} | {verdict} |")
    lines += ["", f"![latency and throughput per concurrency]({PLOT_NAME})", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Latency percentiles and throughput against concurrency for every server, the in-process limit as a line."""
    figure, (latency_axis, throughput_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (name, section), colour in zip(_servers(results).items(), ("tab:blue", "tab:red", "tab:orange"), strict=False):
        levels = section["levels"]
        concurrency = [level["concurrency"] for level in levels]
        for percentile, style in (("p50", "-"), ("p99", ":")):
            latency_axis.plot(concurrency, [level["latency_ms"][percentile] for level in levels], style, marker="o",
                              color=colour, label=f"{name} {percentile}")
        throughput_axis.plot(concurrency, [level["throughput_rps"] for level in levels], marker="o", color=colour,
                             label=name)
    limit = results.get("limit")
    if limit:
        throughput_axis.axhline(limit["limit_images_per_second"], color="black", linestyle="--",
                                label="in-process limit (forward only)")
        throughput_axis.axhline(limit["pipeline_images_per_second"], color="grey", linestyle="-.",
                                label="in-process decode+preprocess+forward")
        latency_axis.axhline(limit["pipeline_latency_ms_batch1"]["p50"], color="black", linestyle="--",
                             label="in-process, one image")
    for axis, label in ((latency_axis, "latency (ms)"), (throughput_axis, "requests/s")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    latency_axis.set_yscale("log")
    figure.suptitle(f"{results['machine']['cpu']}, {results['machine']['cores']} cores, "
                    f"GPU {results['machine']['gpu'] or 'none'}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(results: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Writes serving.json, serving.md and serving_latency.png into `folder`; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / JSON_NAME, "markdown": folder / MARKDOWN_NAME, "plot": folder / PLOT_NAME}
    paths["json"].write_text(json.dumps(results, indent=2, default=str) + "\n")
    paths["markdown"].write_text(markdown(results))
    plot(results, paths["plot"])
    return paths
