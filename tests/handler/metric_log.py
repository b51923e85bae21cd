"""Reads the "[METRICS]" log lines a ts metrics cache writes: what the TorchServe frontend parses into Prometheus."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

METRIC_LINE = re.compile(r"\[METRICS\](?P<name>\w+)\.(?P<unit>[^:]*):(?P<value>[^|]+)\|#(?P<dims>[^|]*)\|"
                         r"#type:(?P<type>\w+)\|#hostname:[^,]*,\d+(?:,(?P<request_id>.*))?$")


@dataclass(frozen=True)
class MetricLine:
    name: str
    unit: str
    value: float
    dimensions: dict[str, str]
    type: str
    request_id: str | None


def metric_lines(caplog: pytest.LogCaptureFixture, prefix: str = "Deepfake") -> list[MetricLine]:
    lines = []
    for record in caplog.records:
        match = METRIC_LINE.match(record.getMessage())
        if match and match["name"].startswith(prefix):
            dims = dict(pair.split(":", 1) for pair in match["dims"].split(",") if pair)
            lines.append(MetricLine(match["name"], match["unit"], float(match["value"]), dims, match["type"],
                                    match["request_id"]))
    return lines
