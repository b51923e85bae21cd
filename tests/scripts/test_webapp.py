"""scripts/webapp.py: serves the page files and /config.json, nothing else; the dev TorchServe allows its origin."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from scripts.serve import (
    RUNTIME_PROPERTIES_FILENAME,
    Ports,
    ServeConfig,
    TorchServe,
    read_properties,
    runtime_properties,
)
from scripts.webapp import STATIC_DIR, WebApp, WebAppConfig, content_security_policy, cors_warning, static_file

REPO_ROOT = Path(__file__).resolve().parents[2]
PAGE_ORIGIN = "http://127.0.0.1:8090"  # where `make web` serves the page: the origin config/config.properties allows


@pytest.fixture(scope="module")
def webapp() -> Iterator[WebApp]:
    app = WebApp(WebAppConfig(port=0, inference="http://127.0.0.1:18080/", management="http://127.0.0.1:18081",
                              model="deepfake_x")).start()
    yield app
    app.stop()


def raw_get(app: WebApp, path: str, host: str | None = None) -> http.client.HTTPResponse:
    """GET with the path sent exactly as written (requests would normalise `..` away)."""
    connection = http.client.HTTPConnection("127.0.0.1", app.httpd.server_address[1], timeout=10)
    connection.putrequest("GET", path, skip_host=host is not None)
    if host is not None:
        connection.putheader("Host", host)
    connection.endheaders()
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def test_serves_the_page_files_with_their_content_types(webapp):
    for path, name, content_type in [("/", "index.html", "text/html"), ("/index.html", "index.html", "text/html"),
                                     ("/app.js", "app.js", "text/javascript"), ("/style.css", "style.css", "text/css")]:
        response = requests.get(webapp.url.rstrip("/") + path, timeout=10)
        assert response.status_code == 200, path
        assert response.headers["Content-Type"].split(";")[0] == content_type
        assert response.content == (STATIC_DIR / name).read_bytes()
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_config_json_names_the_torchserve_urls_and_model(webapp):
    response = requests.get(webapp.url + "config.json", timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    assert response.json() == {"inference": "http://127.0.0.1:18080", "management": "http://127.0.0.1:18081",
                               "model": "deepfake_x"}


def test_csp_lets_the_page_reach_only_itself_and_the_two_apis(webapp):
    policy = requests.get(webapp.url, timeout=10).headers["Content-Security-Policy"]
    assert policy == content_security_policy(webapp.config)
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["script-src"] == "'self'"  # no CDN: a script from anywhere else would not run
    assert directives["connect-src"].split() == ["'self'", "http://127.0.0.1:18080", "http://127.0.0.1:18081"]


def test_page_references_only_its_own_files():
    html = (STATIC_DIR / "index.html").read_text()
    assert 'src="app.js"' in html and 'href="style.css"' in html
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC_DIR / name).read_text()
        assert "https://" not in text and "//cdn" not in text, name


@pytest.mark.parametrize("path", ["/nothing.html", "/config.json.bak", "/static/app.js", "/webapp.py"])
def test_unknown_paths_are_404(webapp, path):
    assert requests.get(webapp.url.rstrip("/") + path, timeout=10).status_code == 404


@pytest.mark.parametrize("path", ["/../webapp.py", "/..%2fwebapp.py", "/%2e%2e/serve.py", "/../../README.md",
                                  "/..%2f..%2fpyproject.toml", "//etc/passwd", "/%2fetc%2fpasswd"])
def test_path_traversal_is_refused(webapp, path):
    assert raw_get(webapp, path).status == 404
    assert static_file(STATIC_DIR, path) is None


def test_localhost_is_redirected_to_the_origin_torchserve_allows(webapp):
    port = webapp.httpd.server_address[1]
    response = raw_get(webapp, "/app.js", host=f"localhost:{port}")
    assert response.status == 307 and response.getheader("Location") == f"http://127.0.0.1:{port}/app.js"
    assert raw_get(webapp, "/app.js", host=f"127.0.0.1:{port}").status == 200


def test_cors_warning_only_when_torchserve_would_refuse_the_page():
    assert cors_warning(PAGE_ORIGIN, {"cors_allowed_origin": PAGE_ORIGIN}) is None
    assert "cors_allowed_origin=http://127.0.0.1:9000" in cors_warning("http://127.0.0.1:9000",
                                                                       {"cors_allowed_origin": PAGE_ORIGIN})
    assert "sets no cors_allowed_origin" in cors_warning(PAGE_ORIGIN, {})


def test_dev_config_allows_exactly_the_page_origin():
    values = read_properties(REPO_ROOT / "config" / "config.properties")
    assert values["cors_allowed_origin"] == PAGE_ORIGIN  # one origin: TorchServe sends the value verbatim
    assert {method.strip() for method in values["cors_allowed_methods"].split(",")} == {"GET", "POST", "OPTIONS"}
    assert {header.strip().lower() for header in values["cors_allowed_headers"].split(",")} == {
        "content-type", "authorization"}
    assert "cors_allowed_origin" not in read_properties(REPO_ROOT / "config" / "production.properties")


def test_a_test_server_allows_a_page_on_a_free_port_through_serve_config_overrides(tmp_path):
    """tests/browser/ serves the page on a free port: ServeConfig.overrides puts its origin in the runtime config."""
    config = ServeConfig(run_dir=tmp_path, model_store=tmp_path, ports=Ports.free(),
                         overrides={"cors_allowed_origin": "http://127.0.0.1:45678"})
    values = runtime_properties(config)
    assert values["cors_allowed_origin"] == "http://127.0.0.1:45678"
    assert values["cors_allowed_methods"] == read_properties(config.properties)["cors_allowed_methods"]
    assert values["inference_address"] == f"http://127.0.0.1:{config.ports.inference}"  # ports still filled in


def test_cli_reads_the_recorded_server_warns_about_cors_and_stops_on_sigterm(tmp_path):
    ports = Ports(inference=18180, management=18181, metrics=18182, grpc_inference=18183, grpc_management=18184)
    TorchServe(ServeConfig(run_dir=tmp_path, ports=ports)).write_state()  # what `scripts.serve start` records
    (tmp_path / RUNTIME_PROPERTIES_FILENAME).write_text("cors_allowed_origin=http://example.org\n")
    process = subprocess.Popen([sys.executable, "-m", "scripts.webapp", "--port", "0", "--run-dir", str(tmp_path)],
                               cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first_line = process.stdout.readline()  # printed once the socket listens
        assert first_line.startswith("web page: open http://127.0.0.1:"), first_line
        url = first_line.split()[3]
        assert requests.get(url + "config.json", timeout=10).json() == {
            "inference": "http://127.0.0.1:18180", "management": "http://127.0.0.1:18181", "model": "deepfake"}
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 0
    assert "web page server stopped" in out
    assert "allows 'http://example.org'" in err and f"cors_allowed_origin={url.rstrip('/')}" in err


@pytest.mark.e2e
def test_dev_torchserve_answers_the_page_origins_preflight(torchserve):
    """A browser sends this OPTIONS before the page's POST (its Content-Type makes it non-simple) and its GETs."""
    config = torchserve.config
    for url, method in [(f"{config.inference_url}/predictions/deepfake", "POST"),
                        (f"{config.inference_url}/explanations/deepfake", "POST"),
                        (f"{config.management_url}/models/deepfake?customized=true", "GET")]:
        response = requests.options(url, timeout=10, headers={
            "Origin": PAGE_ORIGIN, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "content-type,authorization"})
        assert response.status_code == 200, url
        assert response.headers["Access-Control-Allow-Origin"] == PAGE_ORIGIN
        assert method in response.headers["Access-Control-Allow-Methods"]
        assert "content-type" in response.headers["Access-Control-Allow-Headers"].lower()
    # Another site's origin is not echoed back: its scripts cannot read the answers.
    other = requests.get(f"{config.management_url}/models/deepfake", headers={"Origin": "http://evil.example"},
                         timeout=10)
    assert other.headers["Access-Control-Allow-Origin"] == PAGE_ORIGIN
    assert json.loads(other.text)[0]["modelName"] == "deepfake"
