"""Serves the web page (scripts/static/) and the TorchServe URLs it should call, with nothing else in between.

The page talks to TorchServe directly from the browser (predictions, explanations, model description),
so this server only hands out three static files and GET /config.json = {"inference", "management",
"model"}. TorchServe must allow the page's origin (cors_allowed_origin in config/config.properties, set
to http://127.0.0.1:8090): at start-up this tool reads the runtime config of the server that
`python -m scripts.serve` recorded and warns when that origin is not the page's. A browser at
http://localhost:PORT is redirected to http://127.0.0.1:PORT, the origin the dev config allows.

The URLs default to the server recorded in --run-dir (build/serve, as `make serve` and `make demo`
start it), else to the dev config's 127.0.0.1:8080 / 8081.

Usage:
    python -m scripts.webapp [--port 8090] [--host 127.0.0.1] [--inference URL] [--management URL]
                             [--model deepfake] [--run-dir build/serve]
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from urllib.parse import unquote, urlsplit

from scripts.serve import DEFAULT_RUN_DIR, RUNTIME_PROPERTIES_FILENAME, read_properties, recorded_config

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_INFERENCE = "http://127.0.0.1:8080"
DEFAULT_MANAGEMENT = "http://127.0.0.1:8081"
CONTENT_TYPES = {  # explicit, not mimetypes: the system's mime.types must not decide whether app.js runs
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}
CANONICAL_LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class WebAppConfig:
    """One web page server.

    Attributes:
        host: where to listen; loopback by default, like the dev TorchServe it talks to.
        port: where to listen; 0 picks a free port (tests).
        inference: base URL of TorchServe's inference API, as the browser must reach it.
        management: base URL of its management API (model name, version, device).
        model: the model name the page predicts with.
        static_dir: the page's files.

    """

    host: str = "127.0.0.1"
    port: int = 8090
    inference: str = DEFAULT_INFERENCE
    management: str = DEFAULT_MANAGEMENT
    model: str = "deepfake"
    static_dir: Path = STATIC_DIR

    def page_config(self) -> dict[str, str]:
        """What GET /config.json answers: where the page sends its requests."""
        return {"inference": self.inference.rstrip("/"), "management": self.management.rstrip("/"),
                "model": self.model}


def origin(url: str) -> str:
    """scheme://host[:port] of a URL: what CORS and a Content-Security-Policy compare."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(config: WebAppConfig) -> str:
    """The page may load only its own files and talk only to its own server and the two TorchServe APIs.

    Also the proof that nothing is fetched from the internet: a CDN script or font would be blocked.
    blob: and data: carry the chosen file's preview and the heat map PNG.
    """
    apis = " ".join(sorted({origin(config.inference), origin(config.management)}))
    return (f"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
            f"media-src 'self' blob:; connect-src 'self' {apis}; object-src 'none'; base-uri 'none'; "
            f"frame-ancestors 'none'; form-action 'none'")


def static_file(static_dir: Path, request_path: str) -> Path | None:
    """The file under static_dir a request path names, or None (missing, a folder, or outside static_dir).

    The path is percent-decoded first, so `/..%2fwebapp.py` is caught like `/../webapp.py`.
    """
    path = unquote(urlsplit(request_path).path)
    if path in ("", "/"):
        path = "/index.html"
    root = static_dir.resolve()
    candidate = (root / path.lstrip("/")).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file() or candidate.suffix not in CONTENT_TYPES:
        return None
    return candidate


def cors_warning(page_origin: str, torchserve_properties: dict[str, str]) -> str | None:
    """A line saying why the page will be refused, when TorchServe's cors_allowed_origin is not the page's origin."""
    allowed = torchserve_properties.get("cors_allowed_origin", "").strip()
    if allowed in (page_origin, "*"):
        return None
    found = f"allows {allowed!r}" if allowed else "sets no cors_allowed_origin"
    return (f"the recorded TorchServe {found}, so the browser will refuse its answers to the page at {page_origin}: "
            f"set cors_allowed_origin={page_origin} in its config.properties and restart it")


def make_handler(config: WebAppConfig) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to one config (http.server instantiates it per request)."""
    config_body = json.dumps(config.page_config(), indent=2).encode()
    policy = content_security_policy(config)

    class PageHandler(BaseHTTPRequestHandler):
        server_version = "deepfake-webapp"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._answer(send_body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(send_body=False)

        def _answer(self, send_body: bool) -> None:
            if self._redirect_to_canonical_host():
                return
            if urlsplit(self.path).path == "/config.json":
                self._send(HTTPStatus.OK, "application/json", config_body, send_body)
                return
            found = static_file(config.static_dir, self.path)
            if found is None:
                self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n", send_body)
                return
            self._send(HTTPStatus.OK, CONTENT_TYPES[found.suffix], found.read_bytes(), send_body)

        def _redirect_to_canonical_host(self) -> bool:
            """localhost:PORT → 127.0.0.1:PORT, the one origin the dev TorchServe allows (CORS takes one)."""
            host = (self.headers.get("Host") or "").lower()
            if config.host != CANONICAL_LOOPBACK or urlsplit(f"//{host}").hostname != "localhost":
                return False
            self.send_response(HTTPStatus.TEMPORARY_REDIRECT)
            self.send_header("Location", f"http://{CANONICAL_LOOPBACK}:{self.server.server_address[1]}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True

        def _send(self, status: HTTPStatus, content_type: str, body: bytes, send_body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")  # a page edited during development shows at once
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Content-Security-Policy", policy)
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
            sys.stderr.write(f"webapp: {self.address_string()} {format % args}\n")

    return PageHandler


class WebApp:
    """The page server: start() in a background thread (tests) or serve_forever() in the foreground (the CLI)."""

    def __init__(self, config: WebAppConfig) -> None:
        self.config = config
        self.httpd = ThreadingHTTPServer((config.host, config.port), make_handler(config))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address (its origin plus /), with the port actually bound."""
        return f"http://{self.config.host}:{self.httpd.server_address[1]}/"

    @property
    def origin(self) -> str:
        """What the browser sends as Origin from this page: what TorchServe's cors_allowed_origin must be."""
        return self.url.rstrip("/")

    def start(self) -> WebApp:
        """Serves in a daemon thread and returns at once (the socket already listens)."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="webapp", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving and closes the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def default_urls(run_dir: Path) -> tuple[str, str, dict[str, str]]:
    """Inference and management URLs of the server recorded in run_dir (else the dev defaults), and its properties."""
    recorded = recorded_config(run_dir)
    if recorded is None:
        return DEFAULT_INFERENCE, DEFAULT_MANAGEMENT, {}
    runtime_file = run_dir / RUNTIME_PROPERTIES_FILENAME
    values = read_properties(runtime_file) if runtime_file.is_file() else {}
    return recorded.inference_url, recorded.management_url, values


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: serves until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=WebAppConfig.host, help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=WebAppConfig.port, help="port (default: %(default)s)")
    parser.add_argument("--inference", help="TorchServe inference API URL (default: the recorded server's, "
                                            f"else {DEFAULT_INFERENCE})")
    parser.add_argument("--management", help="TorchServe management API URL (default: the recorded server's, "
                                             f"else {DEFAULT_MANAGEMENT})")
    parser.add_argument("--model", default=WebAppConfig.model, help="model name (default: %(default)s)")
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR,
                        help="run dir of `python -m scripts.serve start` to read the URLs from (default: %(default)s)")
    args = parser.parse_args(argv)
    inference, management, properties = default_urls(args.run_dir)
    config = WebAppConfig(host=args.host, port=args.port, inference=args.inference or inference,
                          management=args.management or management, model=args.model)
    try:
        app = WebApp(config)
    except OSError as error:
        sys.exit(f"webapp: cannot listen on {config.host}:{config.port}: {error.strerror or error}")
    warning = cors_warning(app.origin, properties) if properties else None
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr, flush=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"web page: open {app.url}  (TorchServe inference {config.inference}, management {config.management}, "
          f"model {config.model}); Ctrl-C stops it", flush=True)
    try:
        app.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        app.httpd.server_close()
        print("web page server stopped", flush=True)


if __name__ == "__main__":
    main()
