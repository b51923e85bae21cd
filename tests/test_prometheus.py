"""End to end: a real Prometheus scrapes the shared TorchServe; counts are read back through PromQL.

The TorchServe is shared with other tests, so every count is a difference between a value read
before this test's requests (once Prometheus has caught up with /metrics) and after them.
The last part checks the monitoring files against the real server: every metric name the Grafana dashboard
and the Prometheus rules use is one TorchServe exposes, and every dashboard query runs (and shows data).
"""

import json
import math
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from scripts.serve import TorchServe, model_workers
from tests.conftest import BATCH_MODEL
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
REPO_ROOT = Path(__file__).resolve().parent.parent
RULES = REPO_ROOT / "config" / "prometheus" / "deepfake-rules.yml"
DASHBOARD = REPO_ROOT / "docker" / "grafana" / "dashboards" / "deepfake-detector.json"


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



# --- every metric name the dashboard and the rules use exists on the real server --------------------------------

# PromQL's own words (Prometheus 2.53): an identifier in an expression that is none of these, nor a label name, is a
# metric name. Prometheus' parser has no Python binding, so names are found by elimination (tested below).
PROMQL_FUNCTIONS = frozenset("""
    abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp clamp_max clamp_min
    cos cosh count_over_time day_of_month day_of_week day_of_year days_in_month deg delta deriv
    double_exponential_smoothing exp floor histogram_avg histogram_count histogram_fraction histogram_quantile
    histogram_stddev histogram_stdvar histogram_sum holt_winters hour idelta increase irate label_join label_replace
    last_over_time ln log10 log2 mad_over_time max_over_time min_over_time minute month pi predict_linear
    present_over_time quantile_over_time rad rate resets round scalar sgn sin sinh sort sort_by_label
    sort_by_label_desc sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time tan tanh time timestamp vector
    year
""".split())
PROMQL_AGGREGATIONS = frozenset("avg bottomk count count_values group limit_ratio limitk max min quantile stddev "
                                "stdvar sum topk".split())
PROMQL_KEYWORDS = frozenset("and atan2 bool by end group_left group_right ignoring inf nan offset on or start unless "
                            "without".split())
STRING = re.compile(r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`""")
LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
IDENTIFIER = re.compile(r"(?<![\w:.])[A-Za-z_:][\w:]*")
LABEL_VALUES = re.compile(r"^label_values\(\s*([A-Za-z_:][\w:]*)")
# Series Prometheus makes itself: `up` per target, ALERTS per pending or firing alert.
PROMETHEUS_SERIES = frozenset({"up", "ALERTS"})
# What the dashboard and the rules use today; a new name must be added here, which makes its author look at it.
KNOWN_NAMES = frozenset({
    "ts_inference_requests_total", "ts_inference_latency_microseconds", "ts_queue_latency_microseconds",
    "Requests4XX", "Requests5XX", "CPUUtilization", "MemoryUtilization", "DiskUtilization",
    "DeepfakePredictions", "DeepfakeItemErrors", "DeepfakeBatches", "DeepfakeBatchItems", "DeepfakeScoredImages",
    "DeepfakeInferenceSeconds_bucket", "DeepfakePreprocessSeconds_bucket", "DeepfakeWorkerUptimeSeconds",
    "up", "ALERTS",
    "deepfake:inference_latency_ms:mean5m", "deepfake:batch_inference_seconds:p95_5m", "deepfake:live_workers:rate2m",
    "deepfake:http_5xx_per_request:ratio5m", "deepfake:item_error_ratio:15m", "deepfake:items:rate15m",
    "deepfake:fake_ratio:15m", "deepfake:fake_ratio:1d", "deepfake:predictions:rate15m",
})
# The dashboard's variables as Grafana substitutes them: one model, and a rate window the test server fills (its
# scrape interval is 1 s, so anything over a few seconds has samples; 5m outlasts the test's own waits).
DASHBOARD_VARIABLES = {"$__rate_interval": "5m", "$model": MODEL}
# Panels that must show a finite value once this module's traffic went through; only "Alert state" may stay empty
# (no alert pending or firing on a healthy server).
PANELS_WITH_DATA = frozenset({
    "Request rate", "Error rate: 4xx and 5xx share", "Item errors by code", "Mean latency", "Queue time", "Batch size",
    "Batch inference time p50 / p95", "Preprocess time p50 / p95", "Live workers", "Host CPU and memory",
    "Predictions by label", "Fake share", "Scored images by kind"})


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (recording-rule outputs included)."""
    text = STRING.sub('""', expr)  # label values and regexes may hold anything
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    text = LABEL_LIST.sub(r"\1", text)  # grouping and matching label lists
    text = re.sub(r"\boffset\s+-?[\w.]+", "", text)  # offset durations (1h, 5m30s)
    text = re.sub(r"@\s*[\w.()]+", "", text)  # @ timestamps
    words = PROMQL_FUNCTIONS | PROMQL_AGGREGATIONS | PROMQL_KEYWORDS
    return {name for name in IDENTIFIER.findall(text) if name.lower() not in words}


def dashboard_panels(document: dict) -> Iterator[dict]:
    """Every panel, those inside collapsed rows too."""
    for panel in document["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard target, as written (Grafana variables unsubstituted)."""
    document = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard_panels(document)
            for target in panel.get("targets", [])]


def variable_metrics() -> set[str]:
    """Metrics the dashboard's template variables read (label_values(metric, label))."""
    document = json.loads(DASHBOARD.read_text())
    found = set()
    for variable in document["templating"]["list"]:
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = LABEL_VALUES.match(query)
        assert match, f"variable {variable['name']}: expected label_values(metric, label), got {query!r}"
        found.add(match[1])
    return found


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def used_names() -> set[str]:
    expressions = [expr for _, expr in dashboard_queries()] + [rule["expr"] for rule in rules()]
    return set().union(*(metric_names(expr) for expr in expressions)) | variable_metrics()


def substituted(expr: str) -> str:
    for variable, value in DASHBOARD_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr!r}"
    return expr


def exposed_names(torchserve: TorchServe) -> set[str]:
    """Names of the samples in TorchServe's /metrics now (histograms as their _bucket/_sum/_count series)."""
    text = requests.get(f"{torchserve.config.metrics_url}/metrics", timeout=10).text
    return {match["name"] for line in text.splitlines() if (match := SAMPLE.match(line)) and not line.startswith("#")}


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (model_name, le) (rate(DeepfakeInferenceSeconds_bucket{ModelName=~"$model"}[$__rate_interval]))',
     {"DeepfakeInferenceSeconds_bucket"}),
    ("histogram_quantile(0.95, sum by (le) (rate(x_bucket[5m]))) > 1", {"x_bucket"}),
    ('a:b:c5m > 2 * d:e:1d and on (ModelName) f * 900 >= 50', {"a:b:c5m", "d:e:1d", "f"}),
    ('up{job="torchserve"} == 0 or absent(up{job="torchserve"})', {"up"}),
    ('x unless on (job, instance) y or vector(0) + count_values("by", z)', {"x", "y", "z"}),
    ('rate(m{label="sum(rate(fake[1m]))", other!~"a|b"}[1d] offset 1h) / ignoring(Label) group_left n', {"m", "n"}),
    ("sum without (Level, Hostname) (Requests2XX) / 1e3 + Inf - NaN + bool_like", {"Requests2XX", "bool_like"}),
    ("max_over_time(deriv(g[10m:1m])[1h:]) @ start()", {"g"}),
])
def test_metric_name_extraction(expr, names):
    assert metric_names(expr) == names


def test_the_dashboard_and_rules_use_the_known_metric_names():
    assert used_names() == KNOWN_NAMES


@pytest.fixture(scope="module")
def traffic(prometheus: PrometheusServer, torchserve: TorchServe, tiny_dataset: Path) -> int:
    """Good images, one bad image and one 503 (a model registered without workers), after Prometheus saw the counters.

    Returns the number of good predictions sent.
    """
    images = sorted((tiny_dataset / "real").glob("*.jpg"))[:3] + sorted((tiny_dataset / "fake").glob("*.jpg"))[:3]
    warm_up(torchserve, images[0], "ts_inference_requests_total", "DeepfakePredictions", "DeepfakeBatches")
    caught_up(prometheus, torchserve, REQUESTS, "ts_inference_requests_total", model_name=MODEL)
    for image in images:
        assert post(torchserve, image).status_code == 200
    bad = requests.post(f"{torchserve.config.inference_url}/predictions/{MODEL}", data=b"not an image", timeout=60)
    assert bad.status_code == 415 and bad.json()["error"]["code"] == "not_an_image"
    # A 5xx without breaking the shared server: a model (the same .mar, another name) scaled to no worker answers
    # 503. (Its .mar's minWorkers wins over initial_workers=0 at registration, hence the scaling.)
    management = torchserve.config.management_url
    idle = "monitoring_no_workers"
    registered = requests.post(f"{management}/models", params={"url": "deepfake.mar", "model_name": idle,
                                                               "synchronous": "true"}, timeout=120)
    assert registered.status_code == 200, registered.text
    try:
        scaled = requests.put(f"{management}/models/{idle}", params={"min_worker": 0, "max_worker": 0,
                                                                     "synchronous": "true"}, timeout=120)
        assert scaled.status_code == 200, scaled.text
        assert post(torchserve, images[0], model=idle).status_code == 503
    finally:
        assert requests.delete(f"{management}/models/{idle}", timeout=60).status_code == 200
    return len(images)


def test_every_metric_name_used_is_exposed_by_the_real_server_or_recorded_by_a_rule(prometheus, torchserve, traffic):
    used = used_names()
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    # Handler metrics reach /metrics through the worker's log, heartbeats every 10 s: poll for the stragglers.
    deadline = time.monotonic() + 60
    while missing := {n for n in used - PROMETHEUS_SERIES if ":" not in n} - exposed_names(torchserve):
        assert time.monotonic() < deadline, f"used by the dashboard or the rules but not in TorchServe's /metrics: " \
                                            f"{sorted(missing)}"
        time.sleep(0.5)  # polling interval
    assert {n for n in used if ":" in n} <= recorded, "a deepfake:* name no recording rule defines"
    assert prometheus.query('up{job="torchserve"}')  # Prometheus' own series the rules use


def test_every_dashboard_query_runs_and_the_panels_show_data_after_traffic(prometheus, traffic):
    queries = dashboard_queries()
    assert {title for title, _ in queries} >= PANELS_WITH_DATA
    for _, expr in queries:
        prometheus.query(substituted(expr))  # raises PrometheusError (with Prometheus' message) if it does not parse

    def finite(result: QueryResult) -> bool:
        return any(math.isfinite(float(item["value"][1])) for item in result)

    for title in sorted(PANELS_WITH_DATA):
        exprs = [substituted(expr) for panel_title, expr in queries if panel_title == title]
        # Recording rules and rates need an evaluation / scrape after the traffic: poll each panel.
        deadline = time.monotonic() + 60
        while not any(finite(prometheus.query(expr)) for expr in exprs):
            assert time.monotonic() < deadline, f"panel {title!r} shows no data after traffic: {exprs}"
            time.sleep(0.5)  # polling interval


@pytest.mark.slow  # up to a minute: rate() over 1m needs a minute of scrapes from this module's fresh Prometheus
def test_live_workers_follow_the_workers_the_management_api_reports(prometheus, torchserve):
    # The heartbeat: each worker adds 10 s every 10 s, so the rate is its model's worker count. Over 1m the window
    # holds 5 or 6 beats per worker, hence the tolerance.
    for model in (MODEL, BATCH_MODEL):
        workers = sum(1 for worker in model_workers(torchserve.config, model) if worker["status"] == "READY")
        assert workers >= 1
        query = f'sum(rate(DeepfakeWorkerUptimeSeconds{{ModelName="{model}"}}[1m]))'
        result = prometheus.wait_for(query, lambda r, n=workers: abs(value_sum(r) - n) <= 0.25, timeout=120)
        assert value_sum(result) == pytest.approx(workers, abs=0.25)


def test_no_page_alert_fires_for_the_healthy_shared_server(prometheus, traffic):
    # Every alert rule evaluates on the real series (health ok), and none pages for this server's models. (A model
    # other tests registered and removed again keeps its flat heartbeat series, so it may rightly be alerted on.)
    groups = prometheus.rules()
    alerts = [rule for group in groups for rule in group["rules"] if rule["type"] == "alerting"]
    assert {rule["name"] for rule in alerts} >= {"TorchServeDown", "DeepfakeNoLiveWorkers", "DeepfakeHighErrorRate"}
    assert {rule["health"] for rule in alerts} == {"ok"}, [(r["name"], r.get("lastError")) for r in alerts]
    paging = [(rule["name"], alert["labels"]) for rule in alerts for alert in rule.get("alerts", [])
              if alert["state"] == "firing" and alert["labels"].get("severity") == "page"
              and alert["labels"].get("ModelName") in (None, MODEL, BATCH_MODEL)]
    assert paging == []
