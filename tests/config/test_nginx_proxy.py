"""End to end: the shipped TLS proxy (config/nginx/deepfake.conf, rendered by render.sh) in front of real TorchServes.

Against the session dev server (no token): HTTPS predictions equal direct ones, nothing but predictions and
/ping is forwarded, bodies over the frontend's limit get a JSON 413, TLS below 1.2 is refused, security
headers are on every answer, TorchServe's 503 gets Retry-After, rate limits answer 429 JSON. Against a
production server (token auth): the Authorization header passes through, and a key renewed through the
management API works through the proxy while the old one stops working.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml

from scripts.package_model import PackageConfig, package_model
from scripts.reliability.server import running_server
from scripts.serve import KEY_FILENAME, TorchServe, read_properties
from tests.nginx_proxy import (
    Certificate,
    NginxProxy,
    ProxyConfig,
    nginx_error,
    self_signed_certificate,
    shipped_values,
    verdict,
)
from tests.prometheus_server import free_port

pytestmark = pytest.mark.e2e
REPO_ROOT = Path(__file__).resolve().parents[2]
NO_WORKER_VERSION = "0.0-noworker"  # a version of deepfake registered with no worker: TorchServe answers it 503
ONE_YEAR = 365 * 24 * 3600


def max_request_size(server: TorchServe) -> int:
    """The frontend's body limit as the server runs with it (its runtime config.properties)."""
    return int(read_properties(server.config.run_dir / "config.properties")["max_request_size"])


def proxy_for(server: TorchServe, certificate: Certificate, work_dir: Path, **overrides: str) -> NginxProxy:
    return NginxProxy(ProxyConfig(work_dir=work_dir, certificate=certificate,
                                  upstream=f"127.0.0.1:{server.config.ports.inference}",
                                  max_body_bytes=max_request_size(server), overrides=overrides))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def proxy(torchserve: TorchServe, certificate: Certificate, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[NginxProxy]:
    """The shipped site with the shipped rate limits, in front of the session dev server."""
    with proxy_for(torchserve, certificate, tmp_path_factory.mktemp("nginx")) as started:
        yield started


@pytest.fixture(scope="module")
def image(tiny_dataset: Path) -> bytes:
    return (tiny_dataset / "fake" / "fake_00003.jpg").read_bytes()


def post(url: str, verify: str | bool, body: bytes, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(url, data=body, headers=headers or {}, verify=verify, timeout=60)


def raw_request(proxy: NginxProxy, method: str, path: str) -> tuple[int, bytes]:
    """A request with the path exactly as given (requests/urllib3 would normalise dot segments first)."""
    context = ssl.create_default_context(cafile=proxy.ca_file)
    connection = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=context, timeout=30)
    try:
        connection.request(method, path, body=b"" if method in ("POST", "PUT") else None)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# --- what is forwarded -------------------------------------------------------------------------------------------

def test_prediction_over_https_equals_the_direct_one(proxy, torchserve, image):
    direct = post(f"{torchserve.config.inference_url}/predictions/deepfake", False, image)
    proxied = post(f"{proxy.url}/predictions/deepfake", proxy.ca_file, image)  # certificate verified, not ignored
    assert direct.status_code == proxied.status_code == 200, proxied.text
    assert verdict(proxied.json()) == verdict(direct.json())
    assert proxied.json()["label"] in {"real", "fake"}
    versioned = post(f"{proxy.url}/predictions/deepfake/1.0", proxy.ca_file, image)
    assert versioned.status_code == 200 and verdict(versioned.json()) == verdict(direct.json())
    ping = requests.get(f"{proxy.url}/ping", verify=proxy.ca_file, timeout=10)
    assert ping.status_code == 200 and ping.json() == {"status": "Healthy"}


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/models"), ("GET", "/models/deepfake"), ("PUT", "/models/deepfake?min_worker=4"),
    ("DELETE", "/models/deepfake/1.0"), ("POST", "/models?url=deepfake.mar"), ("GET", "/metrics"),
    ("GET", "/token?type=inference"), ("GET", "/api-description"), ("OPTIONS", "/"),
    ("POST", "/v1/models/deepfake:predict"), ("POST", "/v2/models/deepfake/infer"), ("POST", "/explanations/deepfake"),
    ("POST", "/invocations?model_name=deepfake"), ("POST", "/predictions/deepfake_batch6"),
    ("POST", "/predictions/deepfake/1.0/extra"), ("POST", "/predictions/deepfake/../../models"),
    ("POST", "/predictions/deepfake/%2e%2e/%2e%2e/models"), ("POST", "/predictions/deepfake%2f..%2f..%2fmodels"),
    ("POST", "/predictions/deepfake/1.0%2f..%2f..%2f..%2fmetrics"), ("GET", "//models"),
])
def test_management_metrics_and_other_routes_are_not_forwarded(proxy, method, path):
    status, body = raw_request(proxy, method, path)
    assert status == 404, body
    error = json.loads(body)["error"]
    assert error["code"] == "not_found" and error["field"] == "path"
    assert "POST /predictions/deepfake" in error["accepted"]


def test_wrong_method_is_405_with_allow(proxy):
    refused = requests.get(f"{proxy.url}/predictions/deepfake", verify=proxy.ca_file, timeout=10)
    assert nginx_error(refused, 405, "method_not_allowed")["accepted"] == "POST"
    assert refused.headers["Allow"] == "POST"
    ping = requests.post(f"{proxy.url}/ping", verify=proxy.ca_file, timeout=10)
    assert nginx_error(ping, 405, "method_not_allowed")["accepted"] == ping.headers["Allow"] == "GET, HEAD"
    allowed = requests.get(f"{proxy.url}/ping", verify=proxy.ca_file, timeout=10)
    assert allowed.status_code == 200 and "Allow" not in allowed.headers


# --- limits --------------------------------------------------------------------------------------------------------

def test_body_over_the_frontends_limit_gets_a_json_413_and_the_limit_itself_passes(proxy, torchserve):
    limit = max_request_size(torchserve)
    assert proxy.config.max_body_bytes == limit and f"client_max_body_size {limit};" in proxy.site_file.read_text()
    over = post(f"{proxy.url}/predictions/deepfake", proxy.ca_file, b"\0" * (limit + 1))
    error = nginx_error(over, 413, "payload_too_large")
    assert error["field"] == "body" and str(limit) in error["message"] and str(limit) in error["accepted"]
    # Without the proxy the same body gets TorchServe's bare 413: no JSON, nothing to tell the client why.
    direct = post(f"{torchserve.config.inference_url}/predictions/deepfake", False, b"\0" * (limit + 1))
    assert direct.status_code == 413 and direct.content == b""
    # A body of exactly the limit is TorchServe's to judge (it is not an image: a JSON 4xx from the handler).
    at_limit = post(f"{proxy.url}/predictions/deepfake", proxy.ca_file, b"\0" * limit)
    assert "x-request-id" in at_limit.headers and 400 <= at_limit.status_code < 500
    assert at_limit.json()["error"]["code"]


def test_rate_limit_answers_429_json_with_retry_after(torchserve, certificate, image, tmp_path):
    # One request a minute and a burst of 2: exactly three pass, whatever the machine's speed.
    with proxy_for(torchserve, certificate, tmp_path, DEEPFAKE_RATE="1r/m", DEEPFAKE_BURST="2") as limited:
        url = f"{limited.url}/predictions/deepfake"
        answers = [post(url, limited.ca_file, image) for _ in range(5)]
        assert [answer.status_code for answer in answers] == [200, 200, 200, 429, 429]
        error = nginx_error(answers[3], 429, "rate_limited")
        assert answers[3].headers["Retry-After"] == "1" and "1r/m" in error["accepted"]
        assert requests.get(f"{limited.url}/ping", verify=limited.ca_file, timeout=10).status_code == 200


def test_shipped_rate_limit_lets_a_burst_through(proxy, image):
    values = shipped_values()
    burst = int(values["DEEPFAKE_BURST"])
    url = f"{proxy.url}/predictions/deepfake"
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: post(url, proxy.ca_file, image).status_code, range(burst)))
    assert statuses == [200] * burst


# --- TLS and headers -------------------------------------------------------------------------------------------------

def handshake(proxy: NginxProxy, version: ssl.TLSVersion) -> tuple[str, str]:
    """(protocol, cipher) of a TLS handshake pinned to one version; raises ssl.SSLError when refused."""
    context = ssl.create_default_context(cafile=proxy.ca_file)
    # OpenSSL 3's default security level forbids TLS < 1.2 in the client itself; level 0 lets this client
    # really offer TLS 1.0/1.1, so a refusal below comes from the server.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ssl.TLSVersion.TLSv1/TLSv1_1 are deprecated names
        context.minimum_version = context.maximum_version = version
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return tls.version(), tls.cipher()[0]


def test_tls_below_1_2_is_refused_by_the_server(proxy):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old_versions = [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1]
    for version in old_versions:
        with pytest.raises(ssl.SSLError) as refused:
            handshake(proxy, version)
        # The server's protocol_version alert: the client did send the old hello, and nginx turned it down.
        assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", refused.value
    assert handshake(proxy, ssl.TLSVersion.TLSv1_3)[0] == "TLSv1.3"
    protocol, cipher = handshake(proxy, ssl.TLSVersion.TLSv1_2)
    assert protocol == "TLSv1.2" and cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher)


def test_security_headers_are_on_every_answer(proxy, image):
    scored = post(f"{proxy.url}/predictions/deepfake", proxy.ca_file, image)
    refused_by_the_handler = post(f"{proxy.url}/predictions/deepfake", proxy.ca_file, b"not an image")
    refused_by_nginx = requests.get(f"{proxy.url}/metrics", verify=proxy.ca_file, timeout=10)
    assert (scored.status_code, refused_by_nginx.status_code) == (200, 404)
    assert 400 <= refused_by_the_handler.status_code < 500
    answers = [scored, refused_by_the_handler, refused_by_nginx]
    for answer in answers:
        headers = answer.headers
        hsts = dict(part.strip().partition("=")[::2] for part in headers["Strict-Transport-Security"].split(";"))
        assert int(hsts["max-age"]) >= ONE_YEAR
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
        assert headers["Server"] == "nginx"  # server_tokens off: no version
        assert "Retry-After" not in headers


# --- 503: Retry-After and a JSON body --------------------------------------------------------------------------------

@pytest.fixture
def version_without_workers(torchserve: TorchServe, tiny_export: Path, tmp_path: Path) -> Iterator[str]:
    """deepfake NO_WORKER_VERSION registered with 0 workers on the session server; unregistered afterwards.

    TorchServe answers a request it cannot queue to a worker with 503 "has no worker to serve inference
    request": the same exception and response path as a full job queue (job_queue_size), reached here
    without racing a load generator.
    """
    settings = yaml.safe_load((REPO_ROOT / "config" / "model-config.yaml").read_text())
    settings.update(minWorkers=0, maxWorkers=0)
    config = tmp_path / "model-config.yaml"
    config.write_text(yaml.safe_dump(settings))
    store = torchserve.config.model_store
    archive = package_model(PackageConfig(export_dir=tiny_export, model_store=store, version=NO_WORKER_VERSION,
                                          archive_name="deepfake-noworker", model_config=config))
    management = torchserve.config.management_url
    registered = requests.post(f"{management}/models", params={"url": archive.name, "initial_workers": 0,
                                                               "synchronous": "true"}, timeout=60)
    assert registered.status_code == 200, registered.text
    try:
        yield NO_WORKER_VERSION
    finally:
        requests.delete(f"{management}/models/deepfake/{NO_WORKER_VERSION}", timeout=60)
        archive.unlink(missing_ok=True)


def test_torchserve_503_gets_retry_after_and_keeps_its_json(proxy, torchserve, version_without_workers, image):
    path = f"/predictions/deepfake/{version_without_workers}"
    direct = post(f"{torchserve.config.inference_url}{path}", False, image)
    assert direct.status_code == 503 and "Retry-After" not in direct.headers  # TorchServe 0.12 gives no hint
    proxied = post(f"{proxy.url}{path}", proxy.ca_file, image)
    assert proxied.status_code == 503 and proxied.headers["Retry-After"] == "1"
    assert proxied.json() == direct.json() and proxied.json()["type"] == "ServiceUnavailableException"
    # The default version is unaffected.
    assert post(f"{proxy.url}/predictions/deepfake", proxy.ca_file, image).status_code == 200


def test_unreachable_torchserve_gets_a_json_503_with_retry_after(certificate, tmp_path):
    # Nothing listens on the upstream port: what clients see while TorchServe restarts.
    config = ProxyConfig(work_dir=tmp_path, certificate=certificate, upstream=f"127.0.0.1:{free_port()}",
                         max_body_bytes=1024)
    with NginxProxy(config) as unreachable:
        answer = post(f"{unreachable.url}/predictions/deepfake", unreachable.ca_file, b"image")
        assert nginx_error(answer, 503, "unavailable") and answer.headers["Retry-After"] == "1"
        ping = requests.get(f"{unreachable.url}/ping", verify=unreachable.ca_file, timeout=10)
        assert ping.status_code == 503 and ping.headers["Retry-After"] == "1"


# --- production server: the inference key through the proxy, and its renewal -----------------------------------------

@pytest.fixture(scope="module")
def production(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    with running_server(model_store, tmp_path_factory.mktemp("production")) as server:
        yield server


def keys(server: TorchServe) -> dict[str, dict[str, str]]:
    return json.loads((server.config.run_dir / KEY_FILENAME).read_text())


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_inference_key_passes_through_and_a_renewed_key_replaces_it(production, certificate, image, tmp_path):
    with proxy_for(production, certificate, tmp_path) as proxy:
        url = f"{proxy.url}/predictions/deepfake"
        old = keys(production)
        assert post(url, proxy.ca_file, image).json()["type"] == "InvalidKeyException"  # 400 from TorchServe
        assert post(url, proxy.ca_file, image, bearer(old["management"]["key"])).status_code == 400
        assert post(url, proxy.ca_file, image, bearer(old["inference"]["key"])).status_code == 200

        # The token API is on the management listener only; through the proxy it does not exist.
        assert raw_request(proxy, "GET", "/token?type=inference")[0] == 404
        renewed = requests.get(f"{production.config.management_url}/token", params={"type": "inference"},
                               headers=bearer(old["API"]["key"]), timeout=10)
        assert renewed.status_code == 200, renewed.text
        new = keys(production)
        assert new["inference"]["key"] != old["inference"]["key"]
        assert new["management"]["key"] == old["management"]["key"] and new["API"]["key"] == old["API"]["key"]
        assert post(url, proxy.ca_file, image, bearer(old["inference"]["key"])).status_code == 400
        assert post(url, proxy.ca_file, image, bearer(new["inference"]["key"])).status_code == 200
        # Only the API key renews: the management key cannot.
        refused = requests.get(f"{production.config.management_url}/token", params={"type": "inference"},
                               headers=bearer(new["management"]["key"]), timeout=10)
        assert refused.status_code == 400
