"""End to end: a real Prometheus scrapes the shared TorchServe; counts are read back through PromQL.

The TorchServe is shared with other tests, so every count is a difference between a value read
before this test's requests (once Prometheus has caught up with /metrics) and after them.
"""

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from scripts.serve import TorchServe
from tests.prometheus_server import (
    INSTALL_HINT,
    PrometheusConfig,
    PrometheusError,
    PrometheusServer,
    QueryResult,
    value_sum,
)

pytestmark = pytest.mark.e2e

MODEL = "deepfake"
BATCH_SIZE_LIMIT = 8  # config/model-config.yaml batchSize of the shared server's "deepfake"
REQUESTS = f'ts_inference_requests_total{{model_name="{MODEL}"}}'
PREDICTIONS = f'DeepfakePredictions{{ModelName="{MODEL}"}}'
BATCH_ITEMS = f'DeepfakeBatchItems{{ModelName="{MODEL}"}}'
BATCHES = f'DeepfakeBatches{{ModelName="{MODEL}"}}'
SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][\w:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
RULES = Path(__file__).resolve().parent.parent / "config" / "prometheus" / "deepfake-rules.yml"


@pytest.fixture(scope="module")
def prometheus(torchserve: TorchServe, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    config = PrometheusConfig(work_dir=tmp_path_factory.mktemp("prometheus"),
                              targets=[f"127.0.0.1:{torchserve.config.ports.metrics}"], rule_files=(RULES,))
    with PrometheusServer(config) as server:
        server.wait_for_targets_up()
        yield server


def scraped_now(torchserve: TorchServe, name: str, **labels: str) -> dict[tuple, float]:
    """The metric's samples in TorchServe's /metrics right now, by their label values (what Prometheus will see)."""
    text = requests.get(f"{torchserve.config.metrics_url}/metrics", timeout=10).text
    samples: dict[tuple, float] = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if not match or match["name"] != name:
            continue
        found = dict(LABEL.findall(match["labels"] or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            samples[tuple(sorted(found.items()))] = float(match["value"])
    return samples


def caught_up(prometheus: PrometheusServer, torchserve: TorchServe, promql: str, name: str, **labels: str) -> float:
    """Waits until Prometheus's sum of the series equals the current /metrics sum; returns it (the "before")."""
    current = sum(scraped_now(torchserve, name, **labels).values())
    result = prometheus.wait_for(f"sum({promql})", lambda r: value_sum(r) == pytest.approx(current))
    return value_sum(result)


def post(torchserve: TorchServe, path: Path, model: str = MODEL) -> requests.Response:
    return requests.post(f"{torchserve.config.inference_url}/predictions/{model}", data=path.read_bytes(), timeout=60)


def warm_up(torchserve: TorchServe, image: Path, *metric_names: str, timeout: float = 30.0) -> None:
    """One prediction, then waits until each named metric counted it in /metrics.

    Handler metrics reach the frontend through the worker's output, slightly after the response:
    without this wait a late increment would land between "before" and "after".
    """
    before = {name: sum(scraped_now(torchserve, name).values()) for name in metric_names}
    assert post(torchserve, image).status_code == 200
    deadline = time.monotonic() + timeout
    while (late := [n for n in metric_names if sum(scraped_now(torchserve, n).values()) < before[n] + 1]):
        assert time.monotonic() < deadline, f"{late} not counted in /metrics {timeout:.0f} s after a prediction"
        time.sleep(0.1)  # polling interval


def by_label(result: QueryResult, label: str) -> dict[str, float]:
    return {item["metric"].get(label, ""): float(item["value"][1]) for item in result}


def test_torchserve_metrics_target_is_up(prometheus, torchserve):
    targets = prometheus.targets()
    assert len(targets) == 1
    target = targets[0]
    assert target["health"] == "up", target.get("lastError")
    assert target["scrapeUrl"] == f"http://127.0.0.1:{torchserve.config.ports.metrics}/metrics"
    assert target["labels"]["job"] == "torchserve"
    # Prometheus parsed TorchServe's exposition: its own `up` series and TorchServe's host metrics exist.
    assert value_sum(prometheus.query('up{job="torchserve"}')) == 1.0
    assert prometheus.query("Requests2XX") or prometheus.query("CPUUtilization")


def test_requests_and_handler_predictions_are_counted_through_prometheus(prometheus, torchserve, tiny_dataset):
    images = [tiny_dataset / "real" / f"real_{i:05d}.jpg" for i in range(3)]
    images += [tiny_dataset / "fake" / f"fake_{i:05d}.jpg" for i in range(3)]
    warm_up(torchserve, images[0], "ts_inference_requests_total", "DeepfakePredictions")  # the series now exist
    requests_before = caught_up(prometheus, torchserve, REQUESTS, "ts_inference_requests_total", model_name=MODEL)
    caught_up(prometheus, torchserve, PREDICTIONS, "DeepfakePredictions", ModelName=MODEL)
    predictions_before = by_label(prometheus.query(f"sum by (Label) ({PREDICTIONS})"), "Label")

    labels = []
    for path in images:
        response = post(torchserve, path)
        assert response.status_code == 200, response.text
        labels.append(response.json()["label"])
    sent = len(images)

    requests_after = value_sum(prometheus.wait_for(f"sum({REQUESTS})",
                                                   lambda r: value_sum(r) >= requests_before + sent))
    assert requests_after - requests_before >= sent
    after = prometheus.wait_for(f"sum by (Label) ({PREDICTIONS})",
                                lambda r: value_sum(r) >= sum(predictions_before.values()) + sent)
    predictions_after = by_label(after, "Label")
    assert set(predictions_after) <= {"real", "fake"}
    increase = {label: predictions_after.get(label, 0.0) - predictions_before.get(label, 0.0)
                for label in ("real", "fake")}
    assert increase == {"real": labels.count("real"), "fake": labels.count("fake")}  # no other traffic meanwhile

    rate = prometheus.wait_for(f"sum(rate({REQUESTS}[30s]))", lambda r: value_sum(r) > 0)
    assert value_sum(rate) > 0


def test_concurrent_load_is_batched_by_the_handler(prometheus, torchserve, tiny_dataset):
    images = sorted((tiny_dataset / "real").glob("*.jpg"))[:8] + sorted((tiny_dataset / "fake").glob("*.jpg"))[:8]
    assert len(images) == 16
    warm_up(torchserve, images[0], "DeepfakeBatchItems", "DeepfakeBatches")
    items_before = caught_up(prometheus, torchserve, BATCH_ITEMS, "DeepfakeBatchItems", ModelName=MODEL)
    batches_before = caught_up(prometheus, torchserve, BATCHES, "DeepfakeBatches", ModelName=MODEL)

    rounds, batch_sizes = 3, []
    for _ in range(rounds):
        barrier = threading.Barrier(len(images))
        responses: list[requests.Response | None] = [None] * len(images)

        def send(index: int, barrier: threading.Barrier = barrier, responses: list = responses) -> None:
            barrier.wait()
            responses[index] = post(torchserve, images[index])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(images))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert all(r is not None and r.status_code == 200 for r in responses)
        batch_sizes += [r.json()["timing_ms"]["batch_size"] for r in responses]
    sent = rounds * len(images)

    items_after = value_sum(prometheus.wait_for(f"sum({BATCH_ITEMS})", lambda r: value_sum(r) >= items_before + sent))
    batches_after = value_sum(prometheus.wait_for(f"sum({BATCHES})", lambda r: value_sum(r) > batches_before))
    items, batches = items_after - items_before, batches_after - batches_before
    assert items == sent
    assert 1 <= batches < items, (items, batches, batch_sizes)  # some batch carried more than one item
    assert max(batch_sizes) > 1  # the handler's own per-response view agrees


def test_example_recording_rules_compute_from_real_torchserve_series(prometheus, torchserve, tiny_dataset):
    # config/prometheus/deepfake-rules.yml (the SRE's rules) loaded into the test Prometheus: every recorded
    # series exists with the labels the rules group by, with values in their possible range.
    images = sorted((tiny_dataset / "fake").glob("*.jpg"))[:4] + sorted((tiny_dataset / "real").glob("*.jpg"))[:4]
    # rate() counts increases between scrapes: Prometheus must have seen every counter before the requests.
    warm_up(torchserve, images[0], "ts_inference_requests_total", "DeepfakePredictions", "DeepfakeBatches")
    caught_up(prometheus, torchserve, REQUESTS, "ts_inference_requests_total", model_name=MODEL)
    caught_up(prometheus, torchserve, PREDICTIONS, "DeepfakePredictions", ModelName=MODEL)
    for image in images:
        assert post(torchserve, image).status_code == 200

    def recorded(name: str, label: str, low: float, high: float) -> float:
        # Rules are evaluated every second: wait until an evaluation has seen this test's requests. Rules
        # grouped by model_version give one series per version the session called (/predictions/deepfake/1.0
        # and the default route are separate series); the one carrying this test's traffic must be in range.
        def in_range(result: QueryResult) -> list[float]:
            return [float(item["value"][1]) for item in result if low <= float(item["value"][1]) <= high]

        result = prometheus.wait_for(f'{name}{{{label}="{MODEL}"}}', lambda r: bool(in_range(r)), timeout=60)
        return in_range(result)[0]

    recorded("deepfake:inference_requests:rate5m", "model_name", 1e-9, 1e6)
    recorded("deepfake:inference_latency_ms:mean5m", "model_name", 1e-3, 60_000)
    recorded("deepfake:queue_latency_ms:mean5m", "model_name", 0, 60_000)
    recorded("deepfake:batch_size:mean5m", "ModelName", 1, BATCH_SIZE_LIMIT)
    recorded("deepfake:fake_ratio:1h", "ModelName", 0, 1)
    rules = prometheus.rules()
    assert {rule["health"] for group in rules for rule in group["rules"]} == {"ok"}, rules


def test_a_bad_query_raises_with_prometheus_message(prometheus):
    with pytest.raises(PrometheusError, match="bad_data"):
        prometheus.query("sum(")


def test_missing_binary_fails_with_the_install_command(tmp_path):
    server = PrometheusServer(PrometheusConfig(work_dir=tmp_path, binary="prometheus-not-installed-here"))
    with pytest.raises(PrometheusError, match=re.escape(INSTALL_HINT)):
        server.start()
