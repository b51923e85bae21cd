"""Shows what a training checkpoint, an export folder or a .mar holds, without serving it.

Engineers tell models apart by architecture, input, threshold, calibration, metrics and file hashes; this
prints all of them from the artefact alone. Checkpoints are read with torch's weights-only unpickler and a
.mar is read in place with zipfile, so inspecting a file of unknown origin runs none of its code (--verify
is the exception: it loads the TorchScript model and runs one zero input through it).

Usage:
    python -m training.inspect build/demo/run/checkpoint.pt
    python -m training.inspect build/demo/run/export --verify
    python -m training.inspect model_store/deepfake.mar --json

Run it with -m: `python training/inspect.py` would put training/ first on sys.path, where this file
shadows the standard library's inspect module.

Exit status: 0 the artefact is complete; 1 the report lists problems (e.g. a missing metadata.json);
2 the path is not an artefact this command knows, or could not be read safely.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import re
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
import yaml

from handler.calibration import CALIBRATION_FILENAME, Calibration
from handler.metadata import EXPLAIN_FILENAME, METADATA_FILENAME, METRICS_FILENAME, MODEL_FILENAME, ModelMetadata
from handler.torchscript import load_torchscript

MANIFEST_MEMBER = "MAR-INF/MANIFEST.json"
CHECKPOINT_SUFFIXES = (".pt", ".pth")
# State dicts hold BatchNorm statistics beside the weights; they are buffers, not learned parameters.
BATCHNORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
# Quality measures worth a line in the summary wherever they sit in a nested metrics dict; counts, losses,
# learning rates and throughput stay in the files themselves.
KEY_METRICS = ("roc_auc", "auc", "average_precision", "eer", "accuracy", "balanced_accuracy", "precision", "recall",
               "f1", "ece", "brier")
MODEL_CONFIG_KEYS = ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout")
EXPECTED = "an export folder, a .mar (zip with MAR-INF/MANIFEST.json) or a .pt/.pth training checkpoint"


class InspectError(Exception):
    """The path is not an artefact this command knows, or cannot be read without running its code."""


def inspect_path(path: Path, verify: bool = False) -> dict[str, Any]:
    """Reports on any of the three artefact kinds, telling them apart by content rather than by name.

    Args:
        path: a checkpoint file, an export folder or a .mar.
        verify: also load the TorchScript model (export folder, .mar) and run a zero input through it.

    Returns:
        A JSON-friendly dict; "kind" says which artefact it was, "problems" lists what is missing or broken.

    Raises:
        InspectError: the path is none of the three kinds, the checkpoint is not weights-only loadable, or the
            .mar is damaged.

    """
    kind = detect_kind(path)
    if kind == "export":
        return inspect_export(path, verify)
    if kind == "checkpoint":
        return inspect_checkpoint(path)
    try:
        return inspect_mar(path, verify)
    except (zipfile.BadZipFile, zlib.error) as error:  # a member fails to inflate or its CRC: damaged after packaging
        raise InspectError(f"{path} is a damaged .mar ({error}); rebuild it with scripts/package_model.py") from error


def detect_kind(path: Path) -> str:
    """Returns "export", "mar" or "checkpoint"; torch.save files are zips too, so the MAR manifest decides."""
    if path.is_dir():
        return "export"
    if not path.is_file():
        raise InspectError(f"{path} does not exist; expected {EXPECTED}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if MANIFEST_MEMBER in names:
            return "mar"
        records = {name.split("/", 1)[-1] for name in names}
        if "constants.pkl" in records:
            raise InspectError(f"{path} is a TorchScript model, not a training checkpoint; "
                               f"inspect the export folder or .mar that holds it instead")
        if "data.pkl" in records:
            return "checkpoint"
    if path.suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    raise InspectError(f"{path} is not {EXPECTED}")


def inspect_checkpoint(path: Path) -> dict[str, Any]:
    """Summarises a training checkpoint (state_dict, config, epoch, optional metrics)."""
    checkpoint = load_checkpoint(path)
    problems: list[str] = []
    if not isinstance(checkpoint, dict):
        checkpoint = {}
        problems.append("the file does not hold a dict; expected state_dict, config and epoch")
    elif checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        checkpoint = {"state_dict": checkpoint}  # a bare model.state_dict(): weights without config
    state_dict = checkpoint.get("state_dict")
    if not isinstance(state_dict, dict):
        problems.append("no 'state_dict' in the checkpoint")
        state_dict = {}
    config = checkpoint.get("config")
    if not isinstance(config, dict):
        problems.append("no 'config' in the checkpoint; architecture and input size are unknown")
        config = {}
    tensors = {name: value for name, value in state_dict.items() if isinstance(value, torch.Tensor)}
    first_conv = next((value for value in tensors.values() if value.ndim == 4), None)
    return {
        "kind": "checkpoint",
        "path": str(path),
        "architecture": config.get("model_name"),
        "input": {"channels": None if first_conv is None else int(first_conv.shape[1]),
                  "size": square_size(config.get("input_size"))},
        "parameters": sum(value.numel() for name, value in tensors.items() if not name.endswith(BATCHNORM_BUFFERS)),
        "epoch": checkpoint.get("epoch"),
        "metrics": {"checkpoint": key_metrics(checkpoint.get("metrics") or {})},
        "config": json.loads(json.dumps(config, default=str)),
        "files": [file_digest(path.name, path.open("rb"))],
        "problems": problems,
    }


def load_checkpoint(path: Path) -> Any:
    """Loads with torch's weights-only unpickler, so a crafted checkpoint cannot run code on load.

    Raises:
        InspectError: the file holds objects outside the allowlist, or is not a torch file at all.

    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused_global = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if refused_global:
            raise InspectError(f"{path} holds an object outside torch's weights-only allowlist "
                               f"({refused_global.group(1)}); refused, since unpickling it could run arbitrary code. "
                               f"A checkpoint should hold only tensors and plain values (dicts, lists, numbers, "
                               f"strings)") from error
        found = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
        reason = found.group(1) if found else str(error).splitlines()[0]
        raise InspectError(f"{path} could not be read as a torch checkpoint (weights-only loader: {reason}); "
                           f"expected {EXPECTED}") from error
    except Exception as error:  # torch raises KeyError, RuntimeError, EOFError… for files that are not its own
        raise InspectError(f"{path} could not be read as a torch checkpoint ({type(error).__name__}: {error}); "
                           f"expected {EXPECTED}") from error


def inspect_export(path: Path, verify: bool = False) -> dict[str, Any]:
    """Summarises an export folder: metadata, calibration, metrics and every file's hash."""
    files = sorted(item for item in path.rglob("*") if item.is_file())

    def read_text(name: str) -> str | None:
        member = path / name
        return member.read_text(errors="replace") if member.is_file() else None

    report = {"kind": "export", "path": str(path), **summarise_model_files(read_text)}
    report["explanations"] = summarise_explanations(read_text, (path / EXPLAIN_FILENAME).is_file(), report["problems"])
    if not (path / MODEL_FILENAME).is_file():
        report["problems"].append(f"{MODEL_FILENAME} is missing")
    elif verify:
        report["verify"] = verify_model(path / MODEL_FILENAME, report)
    report["files"] = [file_digest(str(item.relative_to(path)), item.open("rb")) for item in files]
    return report


def inspect_mar(path: Path, verify: bool = False) -> dict[str, Any]:
    """Summarises a .mar read in place: manifest, model-config.yaml, the export files inside, member hashes."""
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())

        def read_text(name: str) -> str | None:
            return archive.read(name).decode("utf-8", errors="replace") if name in names else None

        problems: list[str] = []
        manifest = parse_json_object(MANIFEST_MEMBER, read_text(MANIFEST_MEMBER), problems) or {}
        model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
        serialized = model.get("serializedFile")
        config_name = model.get("configFile")
        report = {
            "kind": "mar",
            "path": str(path),
            "manifest": {"model_name": model.get("modelName"), "version": model.get("modelVersion"),
                         "handler": model.get("handler"), "serialized_file": serialized,
                         "config_file": config_name, "archiver_version": manifest.get("archiverVersion"),
                         "created_on": manifest.get("createdOn")},
            **summarise_model_files(read_text),
        }
        report["problems"] = problems + report["problems"]
        report["explanations"] = summarise_explanations(read_text, EXPLAIN_FILENAME in names, report["problems"])
        if config_name:
            report["model_config"] = summarise_model_config(config_name, read_text(config_name), report["problems"])
        if serialized not in names:
            report["problems"].append(f"the serialized file {serialized!r} named by the manifest is not in the archive")
        elif verify:
            with tempfile.TemporaryDirectory(prefix="inspect-") as scratch:
                model_path = Path(scratch) / MODEL_FILENAME
                model_path.write_bytes(archive.read(serialized))
                report["verify"] = verify_model(model_path, report)
        report["files"] = [file_digest(info.filename, archive.open(info))
                           for info in archive.infolist() if not info.is_dir()]
    report["archive"] = file_digest(path.name, path.open("rb"))
    return report


def summarise_model_files(read_text: Callable[[str], str | None]) -> dict[str, Any]:
    """What metadata.json, calibration.json and metrics.json say; shared by export folders and .mar files.

    Args:
        read_text: a file's text by name, or None when the artefact lacks it.

    """
    problems: list[str] = []
    metadata = parse_json_object(METADATA_FILENAME, read_text(METADATA_FILENAME), problems) or {}
    if metadata:
        try:
            ModelMetadata.from_dict(metadata)
        except (KeyError, TypeError, ValueError) as error:
            problems.append(f"{METADATA_FILENAME} would be refused by the handler: {error}")
    preprocessing = metadata.get("preprocessing") if isinstance(metadata.get("preprocessing"), dict) else {}
    channels = preprocessing.get("channels") or preprocessing.get("mean")
    calibration = parse_json_object(CALIBRATION_FILENAME, read_text(CALIBRATION_FILENAME), problems)
    if calibration is not None:
        try:
            Calibration.from_dict(calibration)
        except ValueError as error:
            problems.append(f"{CALIBRATION_FILENAME} would be refused by the handler: {error}")
    metrics_file = parse_json_object(METRICS_FILENAME, read_text(METRICS_FILENAME), problems)
    # metrics.json is the run's full report; metadata.json's training section repeats part of it for older exports.
    if metrics_file is not None:
        metrics = {METRICS_FILENAME: key_metrics(metrics_file)}
    else:
        metrics = {METADATA_FILENAME: key_metrics(metadata.get("training"))}
    return {
        "architecture": metadata.get("architecture"),
        "class_names": metadata.get("class_names"),
        "threshold": metadata.get("threshold"),
        "input": {"channels": len(channels) if isinstance(channels, list) else None,
                  "channel_names": preprocessing.get("channels"),
                  "size": square_size(preprocessing.get("input_size")),
                  "mean": preprocessing.get("mean"), "std": preprocessing.get("std")},
        "calibration": None if calibration is None else summarise_calibration(calibration),
        "metrics": metrics,
        "problems": problems,
    }


def summarise_explanations(read_text: Callable[[str], str | None], has_explain_model: bool,
                           problems: list[str]) -> dict[str, Any]:
    """Whether a server of this artefact answers /explanations (it needs model.explain.pt), and why not.

    Args:
        read_text: a file's text by name, or None when the artefact lacks it.
        has_explain_model: the artefact holds model.explain.pt.
        problems: gets a line when metadata.json names the explain model but the artefact lacks it.

    """
    try:
        metadata = json.loads(read_text(METADATA_FILENAME) or "{}")
    except json.JSONDecodeError:
        metadata = {}  # summarise_model_files reports the broken file
    explain = metadata.get("explain") if isinstance(metadata, dict) else None
    explain = explain if isinstance(explain, dict) else {}
    if has_explain_model:
        return {"available": True, "method": explain.get("method", "grad-cam"), "layer": explain.get("layer"),
                "reason": None}
    if explain.get("file"):
        problems.append(f"{METADATA_FILENAME} names {explain['file']} but it is missing: explanations will answer "
                        f"501; re-package the whole export folder")
        reason = f"{EXPLAIN_FILENAME} is missing"
    else:
        reason = explain.get("reason") or "exported before explanations existed; re-export to add them"
    return {"available": False, "method": None, "layer": None, "reason": reason}


def parse_json_object(name: str, text: str | None, problems: list[str]) -> dict[str, Any] | None:
    """Parses a JSON object; records what is wrong in `problems` instead of raising, so one bad file still reports."""
    if text is None:
        if name in (METADATA_FILENAME, MANIFEST_MEMBER):
            problems.append(f"{name} is missing")
        return None
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        problems.append(f"{name} is not valid JSON: {error}")
        return None
    if not isinstance(values, dict):
        problems.append(f"{name} holds a {type(values).__name__}, expected a JSON object")
        return None
    return values


def summarise_calibration(calibration: dict[str, Any]) -> dict[str, Any]:
    """Method and scalar settings; knot lists (isotonic "x"/"y") are reduced to their length."""
    summary = {key: value for key, value in calibration.items()
               if isinstance(value, str | int | float | bool) and key != "schema_version"}
    if summary.get("fake_logit_offset") == 0:  # a no-op, shown only when training used class weights
        del summary["fake_logit_offset"]
    summary.setdefault("method", None)
    if isinstance(calibration.get("x"), list):
        summary["knots"] = len(calibration["x"])
    return summary


def summarise_model_config(name: str, text: str | None, problems: list[str]) -> dict[str, Any] | None:
    """TorchServe's worker and batching settings and the handler: section of model-config.yaml."""
    if text is None:
        problems.append(f"{name} (the manifest's configFile) is not in the archive")
        return None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        problems.append(f"{name} is not valid YAML: {error}")
        return None
    if not isinstance(values, dict):
        problems.append(f"{name} holds a {type(values).__name__}, expected a mapping")
        return None
    return {**{key: values.get(key) for key in MODEL_CONFIG_KEYS}, "handler": values.get("handler")}


def key_metrics(values: Any, prefix: str = "") -> dict[str, float]:
    """Top-level numbers and nested KEY_METRICS of a free-form metrics dict, keyed by dotted path.

    E.g. {"best_epoch": 3, "validation": {"roc_auc": 0.9, "images": 60}} gives
    {"best_epoch": 3, "validation.roc_auc": 0.9}.
    """
    if not isinstance(values, dict):
        return {}
    found: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, dict):
            found.update(key_metrics(value, f"{name}."))
        elif isinstance(value, int | float) and not isinstance(value, bool) and (not prefix or key in KEY_METRICS):
            found[name] = value
    return found


def square_size(value: Any) -> list[int] | None:
    """[height, width] from a side length (training config) or a pair (metadata.json)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value, value]
    if isinstance(value, list | tuple) and len(value) == 2:
        return [int(side) for side in value]
    return None


def file_digest(name: str, stream: IO[bytes]) -> dict[str, Any]:
    """SHA-256 and size, read in chunks so a large model never sits in memory whole."""
    digest, size = hashlib.sha256(), 0
    with stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return {"name": name, "bytes": size, "sha256": digest.hexdigest()}


def verify_model(model_path: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Runs a zero input of the metadata's shape; a wrong output shape or a failure becomes a problem."""
    channels, size = report["input"]["channels"], report["input"]["size"]
    if channels is None or size is None:
        report["problems"].append("cannot verify: the input channels or size are unknown")
        return {"input_shape": None, "output_shape": None}
    input_shape = [1, channels, *size]
    try:
        model = load_torchscript(model_path, torch.device("cpu"))
        with torch.inference_mode():
            output_shape = list(model(torch.zeros(input_shape)).shape)
    except (RuntimeError, ValueError, OSError) as error:
        report["problems"].append(f"the model failed on a zero input of shape {input_shape}: {error}")
        return {"input_shape": input_shape, "output_shape": None}
    classes = report.get("class_names")
    if isinstance(classes, list) and output_shape != [1, len(classes)]:
        report["problems"].append(f"output shape {output_shape} does not match the {len(classes)} class names")
    return {"input_shape": input_shape, "output_shape": output_shape}


def format_report(report: dict[str, Any]) -> str:
    """Readable text for a report from inspect_path."""
    titles = {"checkpoint": "training checkpoint", "export": "export folder", "mar": "model archive (.mar)"}
    rows: list[tuple[str, Any]] = []
    if report["kind"] == "mar":
        manifest = report["manifest"]
        archive = report["archive"]
        rows += [("archive", f"{format_bytes(archive['bytes'])}, sha256 {archive['sha256']}"),
                 ("model name", manifest["model_name"]), ("version", manifest["version"]),
                 ("handler", manifest["handler"]), ("serialized file", manifest["serialized_file"]),
                 ("archiver version", manifest["archiver_version"])]
    rows.append(("architecture", report["architecture"]))
    if report["kind"] == "checkpoint":
        rows += [("input", format_input(report["input"])), ("parameters", f"{report['parameters']:,}"),
                 ("epoch", report["epoch"])]
    else:
        class_names = report["class_names"]
        rows += [("classes", ", ".join(class_names) if class_names else None),
                 ("threshold", format_number(report["threshold"])), ("input", format_input(report["input"])),
                 ("mean / std", f"{report['input']['mean']} / {report['input']['std']}" if report["input"]["mean"]
                  else None),
                 ("calibration", format_calibration(report["calibration"])),
                 ("explanations", format_explanations(report["explanations"]))]
    for source, metrics in report["metrics"].items():
        rows += format_metrics(source, metrics)
    model_config = report.get("model_config")
    if model_config:
        rows.append(("model config", ", ".join(f"{key} {model_config[key]}" for key in MODEL_CONFIG_KEYS)))
        handler = model_config.get("handler")
        if isinstance(handler, dict):
            rows.append(("handler settings", ", ".join(f"{key} {value}" for key, value in handler.items())))
    if "verify" in report:
        verify = report["verify"]
        rows.append(("verify", f"zero input {verify['input_shape']} -> output {verify['output_shape']}"))
    width = max(len(label) for label, _ in rows)
    lines = [f"{titles[report['kind']]}: {report['path']}"]
    lines += [f"  {label:<{width}}  {'unknown' if value is None else value}" for label, value in rows]
    lines.append("files")
    name_width = max((len(item["name"]) for item in report["files"]), default=0)
    lines += [f"  {item['name']:<{name_width}}  {format_bytes(item['bytes']):>9}  sha256 {item['sha256']}"
              for item in report["files"]]
    if report["problems"]:
        lines.append("problems")
        lines += [f"  - {problem}" for problem in report["problems"]]
    return "\n".join(lines)


def format_explanations(explanations: dict[str, Any]) -> str:
    """E.g. "grad-cam on layer4 (model.explain.pt)" or "unavailable: <why>"."""
    if explanations["available"]:
        return f"{explanations['method']} on {explanations['layer'] or 'the last feature map'} ({EXPLAIN_FILENAME})"
    return f"unavailable: {explanations['reason']}"


def format_metrics(source: str, metrics: dict[str, float]) -> list[tuple[str, str]]:
    """One row per group ("validation", "test"…), so related numbers read across a line."""
    groups: dict[str, list[str]] = {}
    for name, value in metrics.items():
        group, _, short = name.rpartition(".")
        groups.setdefault(group, []).append(f"{short} {value:.4g}")
    rows = [(f"metrics ({source})", ", ".join(groups.pop("", [])) or ("" if groups else "none"))]
    return rows + [(f"  {group}", ", ".join(items)) for group, items in groups.items()]


def format_input(values: dict[str, Any]) -> str:
    """E.g. "4 channels (red, green, blue, laplacian), 64x64"."""
    channels = "unknown" if values["channels"] is None else f"{values['channels']} channels"
    if values.get("channel_names"):
        channels += f" ({', '.join(values['channel_names'])})"
    size = "unknown size" if values["size"] is None else "x".join(str(side) for side in values["size"])
    return f"{channels}, {size}"


def format_calibration(calibration: dict[str, Any] | None) -> str:
    """E.g. "temperature (temperature 1.7)", "isotonic (12 knots)" or "absent"."""
    if calibration is None:
        return f"absent (no {CALIBRATION_FILENAME})"
    method = calibration["method"]
    # calibration.json always carries temperature and knots; show the ones the method uses, and any extras.
    details = [f"temperature {calibration['temperature']:.4g}"] if method == "temperature" else []
    details += [f"{calibration['knots']} knots"] if calibration.get("knots") else []
    details += [f"{key} {value}" for key, value in calibration.items() if key not in ("method", "temperature", "knots")]
    return f"{method}" + (f" ({', '.join(details)})" if details else "")


def format_number(value: Any) -> Any:
    """Six significant digits for floats (thresholds fitted on data carry sixteen); anything else as is."""
    return f"{value:.6g}" if isinstance(value, float) else value


def format_bytes(size: int) -> str:
    """E.g. "44.8 MB"."""
    if size < 1000:
        return f"{size} B"
    scaled = size / 1000
    for unit in ("kB", "MB"):
        if scaled < 1000:
            return f"{scaled:.1f} {unit}"
        scaled /= 1000
    return f"{scaled:.1f} GB"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="a training checkpoint (.pt/.pth), an export folder or a .mar")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    parser.add_argument("--verify", action="store_true",
                        help="export folder or .mar: load the TorchScript model and run a zero input through it")
    args = parser.parse_args(argv)
    try:
        report = inspect_path(args.path, verify=args.verify)
    except InspectError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
