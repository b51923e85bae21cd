"""End to end: the Kubernetes sidecar (config/nginx/sidecar.conf.template) in front of a TorchServe as the pod runs it.

TorchServe runs with config/kubernetes.properties (token authorization off, every API on loopback; free ports here),
nginx with the template rendered by envsubst, as the official nginx image renders it in the pod. Checked: the token
of the Secret (current and previous) is required on predictions over REST and gRPC and never forwarded, /ping needs
none, nothing else is forwarded, oversized bodies get a JSON 413, and 503s carry Retry-After.
"""

from __future__ import annotations

import http.client
import json
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
import requests

from scripts.grpc_client import AuthorizationError, GrpcClientError, GrpcTarget, TorchServeGrpc
from scripts.serve import Ports, ServeConfig, TorchServe, read_properties
from tests.nginx_proxy import SidecarConfig, SidecarProxy, verdict
from tests.nginx_proxy import nginx_error as proxy_error
from tests.prometheus_server import free_port

pytestmark = pytest.mark.e2e
REPO_ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_PROPERTIES = REPO_ROOT / "config" / "kubernetes.properties"
TOKEN = secrets.token_hex(32)  # what `openssl rand -hex 32` makes for the Secret (docs/operations.md)
PREVIOUS_TOKEN = secrets.token_hex(32)
PREDICTIONS = "/predictions/deepfake"


@pytest.fixture(scope="module")
def pod_server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    """TorchServe started as the pod's `torchserve` container starts it, on free ports."""
    config = ServeConfig(run_dir=tmp_path_factory.mktemp("pod_torchserve"), model_store=model_store,
                         properties=KUBERNETES_PROPERTIES, ports=Ports.free())
    server = TorchServe(config).start()
    yield server
    server.stop()


def sidecar_for(server: TorchServe, work_dir: Path, previous_token: str = PREVIOUS_TOKEN) -> SidecarProxy:
    ports = server.config.ports
    return SidecarProxy(SidecarConfig(work_dir=work_dir, upstream_http=f"127.0.0.1:{ports.inference}",
                                      upstream_grpc=f"127.0.0.1:{ports.grpc_inference}", token=TOKEN,
                                      previous_token=previous_token))


@pytest.fixture(scope="module")
def sidecar(pod_server: TorchServe, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProxy]:
    """The sidecar during a rotation: the Secret has `token` and `previous-token`."""
    with sidecar_for(pod_server, tmp_path_factory.mktemp("sidecar")) as started:
        yield started


@pytest.fixture(scope="module")
def image(tiny_dataset: Path) -> bytes:
    return (tiny_dataset / "fake" / "fake_00003.jpg").read_bytes()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post(url: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST") -> requests.Response:
    return requests.request(method, url, data=body, headers=headers or {}, timeout=60)


def nginx_error(response: requests.Response, status: int, code: str) -> dict:
    """The sidecar's own JSON errors have exactly the project's five fields."""
    return proxy_error(response, status, code, exact_fields=True)


# --- the token -----------------------------------------------------------------------------------------------------

def test_a_prediction_without_a_token_is_401_json_with_a_bearer_challenge(sidecar, image):
    refused = post(f"{sidecar.url}{PREDICTIONS}", image)
    error = nginx_error(refused, 401, "unauthorized")
    assert error["field"] == "Authorization" and "Bearer" in error["accepted"]
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="deepfake-detector"'


@pytest.mark.parametrize("authorization", [
    f"Bearer {TOKEN[:-1]}",               # a prefix of the token
    f"Bearer {TOKEN}0",                   # the token and one more character
    f"Bearer {TOKEN} {PREVIOUS_TOKEN}",   # both, as if one could match the other
    f"Bearer {TOKEN.upper()}",            # tokens compare exactly
    f"Basic {TOKEN}",                     # another scheme
    f"{TOKEN}",                           # no scheme
    "Bearer",                             # "Bearer " (nginx strips the trailing space)
    f"Bearer {TOKEN}|{TOKEN}",            # characters outside RFC 6750's b64token
])
def test_a_wrong_token_is_401_invalid_token(sidecar, image, authorization):
    refused = post(f"{sidecar.url}{PREDICTIONS}", image, {"Authorization": authorization})
    nginx_error(refused, 401, "unauthorized")
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="deepfake-detector", error="invalid_token"'


def test_the_token_gets_the_prediction_torchserve_makes(sidecar, pod_server, image):
    direct = post(f"{pod_server.config.inference_url}{PREDICTIONS}", image)
    proxied = post(f"{sidecar.url}{PREDICTIONS}", image, bearer(TOKEN))
    assert direct.status_code == proxied.status_code == 200, proxied.text
    assert verdict(proxied.json()) == verdict(direct.json()) and proxied.json()["label"] in {"real", "fake"}
    # The scheme is case-insensitive (RFC 6750); PUT is forwarded as well; a version path too.
    assert post(f"{sidecar.url}{PREDICTIONS}", image, {"Authorization": f"bearer {TOKEN}"}).status_code == 200
    assert post(f"{sidecar.url}{PREDICTIONS}", image, bearer(TOKEN), method="PUT").status_code == 200
    version = proxied.json()["model"]["version"]
    assert post(f"{sidecar.url}{PREDICTIONS}/{version}", image, bearer(TOKEN)).status_code == 200


def test_the_previous_token_works_during_a_rotation(sidecar, image):
    assert post(f"{sidecar.url}{PREDICTIONS}", image, bearer(PREVIOUS_TOKEN)).status_code == 200


def test_without_a_previous_token_only_the_token_works(pod_server, image, tmp_path):
    # The Secret has no previous-token (the pod's command turns the unset variable into ""): "Bearer " must not pass.
    with sidecar_for(pod_server, tmp_path, previous_token="") as rotated:
        assert f'map "$sidecar_presented_token {TOKEN} " $sidecar_authorized' in rotated.site_file.read_text()
        url = f"{rotated.url}{PREDICTIONS}"
        for authorization in ("Bearer ", "Bearer", "Bearer  ", f"Bearer {PREVIOUS_TOKEN}"):
            nginx_error(post(url, image, {"Authorization": authorization}), 401, "unauthorized")
        raw = http.client.HTTPConnection("127.0.0.1", rotated.http_port, timeout=30)
        try:  # the header exactly as written, trailing space included (requests would keep it too, but be explicit)
            raw.putrequest("POST", PREDICTIONS)
            raw.putheader("Authorization", "Bearer ")
            raw.putheader("Content-Length", str(len(image)))
            raw.endheaders(image)
            assert raw.getresponse().status == 401
        finally:
            raw.close()
        assert post(url, image, bearer(TOKEN)).status_code == 200


def test_the_clients_authorization_header_is_not_forwarded(image, tmp_path):
    """An upstream that records what it receives stands where TorchServe would: no Authorization reaches it."""
    received: list[dict[str, str]] = []

    class Recorder(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append({name.lower(): value for name, value in self.headers.items()})
            body = b'{"label": "real"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    try:
        config = SidecarConfig(work_dir=tmp_path, upstream_http=f"127.0.0.1:{upstream.server_address[1]}",
                               upstream_grpc=f"127.0.0.1:{free_port()}", token=TOKEN)
        with SidecarProxy(config) as recorded:
            answer = post(f"{recorded.url}{PREDICTIONS}", image, bearer(TOKEN))
            assert answer.status_code == 200 and answer.json() == {"label": "real"}
    finally:
        upstream.shutdown()
        upstream.server_close()
    assert len(received) == 1 and "authorization" not in received[0]
    assert received[0]["x-forwarded-for"] == "127.0.0.1" and received[0]["content-length"] == str(len(image))


# --- what else is (not) forwarded --------------------------------------------------------------------------------

def test_ping_needs_no_token(sidecar):
    ping = requests.get(f"{sidecar.url}/ping", timeout=10)
    assert ping.status_code == 200 and ping.json()["status"] == "Healthy"
    refused = requests.post(f"{sidecar.url}/ping", timeout=10)
    assert nginx_error(refused, 405, "method_not_allowed")["accepted"] == refused.headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/models"), ("GET", "/models/deepfake"), ("PUT", "/models/deepfake?min_worker=3"),
    ("POST", "/models?url=deepfake.mar"), ("DELETE", "/models/deepfake"), ("GET", "/metrics"),
    ("GET", "/token?type=inference"), ("OPTIONS", "/"), ("GET", "/api-description"),
    ("POST", "/v1/models/deepfake:predict"), ("POST", "/v2/models/deepfake/infer"), ("POST", "/predictions/other"),
    ("POST", "/predictions/deepfake/../../models"), ("POST", "/predictions/deepfake/1.0/explain"),
])
def test_management_metrics_and_other_routes_are_404_even_with_the_token(sidecar, method, path):
    connection = http.client.HTTPConnection("127.0.0.1", sidecar.http_port, timeout=30)
    try:  # the path exactly as written: requests would resolve the dot segments itself
        connection.request(method, path, body=b"" if method in ("POST", "PUT") else None, headers=bearer(TOKEN))
        response = connection.getresponse()
        status, body = response.status, response.read()
    finally:
        connection.close()
    assert status == 404, body
    error = json.loads(body)["error"]
    assert error["code"] == "not_found" and error["field"] == "path" and "GET /ping" in error["accepted"]


def test_a_wrong_method_on_predictions_is_405_with_allow(sidecar):
    refused = requests.get(f"{sidecar.url}{PREDICTIONS}", headers=bearer(TOKEN), timeout=10)
    assert nginx_error(refused, 405, "method_not_allowed")["accepted"] == refused.headers["Allow"] == "POST, PUT"


# --- limits and unavailability -------------------------------------------------------------------------------------

def test_a_body_over_max_request_size_is_a_json_413(sidecar):
    limit = int(read_properties(KUBERNETES_PROPERTIES)["max_request_size"])
    too_large = post(f"{sidecar.url}{PREDICTIONS}", b"\0" * (limit + 1), bearer(TOKEN))
    error = nginx_error(too_large, 413, "payload_too_large")
    assert error["field"] == "body" and str(limit) in error["message"]
    # Exactly the limit reaches TorchServe, whose handler judges it (not an image: its own JSON 4xx).
    at_limit = post(f"{sidecar.url}{PREDICTIONS}", b"\0" * limit, bearer(TOKEN))
    assert "x-request-id" in at_limit.headers and 400 <= at_limit.status_code < 500, at_limit.text


def test_torchserve_503_without_workers_gets_retry_after(sidecar, pod_server, image):
    # Scaling works with enable_model_api=false; with no worker TorchServe answers 503 and no retry hint.
    management = f"{pod_server.config.management_url}/models/deepfake"
    scaled = requests.put(management, params={"min_worker": 0, "max_worker": 0, "synchronous": "true"}, timeout=60)
    assert scaled.status_code == 200, scaled.text
    try:
        direct = post(f"{pod_server.config.inference_url}{PREDICTIONS}", image)
        assert direct.status_code == 503 and "Retry-After" not in direct.headers
        proxied = post(f"{sidecar.url}{PREDICTIONS}", image, bearer(TOKEN))
        assert proxied.status_code == 503 and proxied.headers["Retry-After"] == "1"
        assert proxied.json() == direct.json()
    finally:
        restored = requests.put(management, params={"min_worker": 1, "max_worker": 1, "synchronous": "true"},
                                timeout=120)
    assert restored.status_code == 200, restored.text
    assert post(f"{sidecar.url}{PREDICTIONS}", image, bearer(TOKEN)).status_code == 200


def test_unreachable_torchserve_is_a_json_503_and_grpc_unavailable(tmp_path, image):
    config = SidecarConfig(work_dir=tmp_path, upstream_http=f"127.0.0.1:{free_port()}",
                           upstream_grpc=f"127.0.0.1:{free_port()}", token=TOKEN)
    with SidecarProxy(config) as unreachable:
        answer = post(f"{unreachable.url}{PREDICTIONS}", image, bearer(TOKEN))
        assert nginx_error(answer, 503, "unavailable") and answer.headers["Retry-After"] == "1"
        with grpc_client(unreachable, TOKEN) as client, pytest.raises(GrpcClientError) as failed:
            client.predict("deepfake", image)
        assert failed.value.code == grpc.StatusCode.UNAVAILABLE


# --- gRPC (h2c) ----------------------------------------------------------------------------------------------------

def grpc_client(proxy: SidecarProxy, token: str | None) -> TorchServeGrpc:
    """A client whose inference AND management calls go to the sidecar's gRPC port."""
    return TorchServeGrpc(GrpcTarget(host="127.0.0.1", inference_port=proxy.grpc_port, management_port=proxy.grpc_port,
                                     timeout=60, inference_token=token, management_token=token))


def test_grpc_predictions_with_the_token_equal_rest_ones(sidecar, image):
    rest = post(f"{sidecar.url}{PREDICTIONS}", image, bearer(TOKEN)).json()
    for token in (TOKEN, PREVIOUS_TOKEN):
        with grpc_client(sidecar, token) as client:
            assert verdict(client.predict("deepfake", image)) == verdict(rest)
            assert client.ping() == "Healthy"


@pytest.mark.parametrize("token", [None, "0" * 64, TOKEN[:-1]])
def test_grpc_without_the_token_is_unauthenticated(sidecar, image, token):
    with grpc_client(sidecar, token) as client, pytest.raises(AuthorizationError) as refused:
        client.predict("deepfake", image)
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_grpc_management_is_not_forwarded(sidecar):
    with grpc_client(sidecar, TOKEN) as client, pytest.raises(GrpcClientError) as refused:
        client.describe("deepfake")
    assert refused.value.code == grpc.StatusCode.UNIMPLEMENTED
