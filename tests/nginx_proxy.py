"""Test harness: a real nginx serving the shipped TLS site (config/nginx/deepfake.conf) on a free loopback port.

The site is rendered by config/nginx/render.sh, the command operators run, with a self-signed certificate
made by the `openssl` CLI and TorchServe's inference address as upstream; a minimal main config puts the
pid file, logs and temporary files in the work dir, so no root and no /etc/nginx are needed. The binary is
the Debian package `nginx` (scripts/setup.sh installs it); when it is missing the harness raises (tests fail,
they are not skipped).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.local_process import LocalProcess
from tests.prometheus_server import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
NGINX_DIR = REPO_ROOT / "config" / "nginx"
RENDER_SCRIPT = NGINX_DIR / "render.sh"
SHIPPED_VALUES = NGINX_DIR / "deepfake.env"
INSTALL_HINT = "sudo apt-get install nginx"
# Debian installs nginx in /usr/sbin, which is not on every user's PATH.
FALLBACK_BINARY = Path("/usr/sbin/nginx")


class NginxError(RuntimeError):
    """nginx or openssl is missing, the rendered config is invalid, or nginx did not start."""


def shipped_values(path: Path = SHIPPED_VALUES) -> dict[str, str]:
    """The DEEPFAKE_* values of the shipped deepfake.env (what render.sh uses when nothing overrides them)."""
    values = {}
    for line in path.read_text().splitlines():
        name, separator, value = line.partition("=")
        if separator and name.startswith("DEEPFAKE_"):
            values[name] = value
    return values


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost; clients verify against `cert` itself."""

    cert: Path
    key: Path


def self_signed_certificate(folder: Path) -> Certificate:
    """Makes a P-256 key and a one-day certificate for 127.0.0.1/localhost with the openssl CLI.

    Raises:
        NginxError: openssl is missing or failed.

    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise NginxError("the openssl CLI is missing; install it with `sudo apt-get install openssl`")
    folder.mkdir(parents=True, exist_ok=True)
    certificate = Certificate(cert=folder / "cert.pem", key=folder / "key.pem")
    command = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
               "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
               "-keyout", str(certificate.key), "-out", str(certificate.cert)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise NginxError(f"openssl could not make a certificate:\n{completed.stderr}")
    return certificate


@dataclass(frozen=True)
class ProxyConfig:
    """One throwaway nginx in front of one TorchServe inference listener.

    Attributes:
        work_dir: holds the rendered site, the main config, pid file, logs and temporary files.
        certificate: the TLS certificate and key the site serves.
        upstream: TorchServe's inference listener as host:port.
        max_body_bytes: client_max_body_size; the upstream server's max_request_size.
        overrides: other DEEPFAKE_* values (e.g. DEEPFAKE_RATE); the rest come from the shipped deepfake.env.
        binary: executable name on PATH, or a path.
        startup_timeout: seconds to wait until the port answers HTTPS.

    """

    work_dir: Path
    certificate: Certificate
    upstream: str
    max_body_bytes: int
    overrides: dict[str, str] = field(default_factory=dict)
    binary: str = "nginx"
    startup_timeout: float = 15.0


def render_site(values: dict[str, str], values_file: Path = SHIPPED_VALUES) -> str:
    """The site as config/nginx/render.sh renders it with `values` in its environment.

    Raises:
        NginxError: render.sh failed (a value is missing or invalid, envsubst is missing).

    """
    environment = {name: value for name, value in os.environ.items() if not name.startswith("DEEPFAKE_")}
    completed = subprocess.run([str(RENDER_SCRIPT), str(values_file)], env={**environment, **values},
                               capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise NginxError(f"{RENDER_SCRIPT.name} failed ({completed.returncode}): {completed.stderr.strip()}")
    return completed.stdout


def main_config(work_dir: Path, site: Path) -> str:
    """A complete nginx.conf that keeps every file nginx writes inside work_dir and includes the site."""
    # As root, nginx would run its worker as `nobody`, which cannot enter pytest's private tmp folders to
    # write request bodies: keep the worker as the user that runs the tests.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp_paths = "".join(f"    {kind}_temp_path {work_dir / kind};\n"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"daemon off;\n{user}worker_processes 1;\npid {work_dir / 'nginx.pid'};\n"
            f"error_log {work_dir / 'error.log'} info;\n"
            f"events {{\n    worker_connections 256;\n}}\n"
            f"http {{\n    access_log {work_dir / 'access.log'};\n{temp_paths}    include {site};\n}}\n")


def nginx_binary(binary: str = "nginx") -> str:
    """The nginx executable: `binary` as a path, or found on PATH or in /usr/sbin.

    Raises:
        NginxError: it is not installed.

    """
    if "/" in binary:
        found = binary if Path(binary).is_file() else None
    else:
        found = shutil.which(binary) or (str(FALLBACK_BINARY) if FALLBACK_BINARY.is_file() else None)
    if found is None:
        raise NginxError(f"nginx binary '{binary}' not found; install it with `{INSTALL_HINT}` "
                         f"(Debian package `nginx`, /usr/sbin/nginx)")
    return found



def verdict(answer: dict) -> dict:
    """A prediction without what differs between two requests for the same image (its id, its timings)."""
    return {key: value for key, value in answer.items() if key not in ("request_id", "timing_ms")}


def nginx_error(response: requests.Response, status: int, code: str, exact_fields: bool = False) -> dict:
    """The JSON error nginx wrote itself, in the project's shape (TorchServe's answers carry x-request-id).

    Args:
        response: the answer to check.
        status: its expected HTTP status, also the error's `status`.
        code: the error's expected `code`.
        exact_fields: the error has exactly code, status, field, message and accepted (else at least them).

    """
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json" and "x-request-id" not in response.headers
    error = response.json()["error"]
    assert error["code"] == code and error["status"] == status and error["message"]
    if exact_fields:
        assert set(error) == {"code", "status", "field", "message", "accepted"}
    else:
        assert {"field", "accepted"} <= set(error)
    return error


class NginxSite(LocalProcess):
    """An nginx process serving one rendered site from a work dir; use as a context manager or start()/stop().

    Subclasses say which site (site_name, render), on which free ports (take_ports), and what a ready answer is
    (probe); rendering, `nginx -t`, start-up, readiness and logs are the same for every site.
    """

    site_name = "site.conf"
    scheme = "HTTP"  # for messages: what the readiness probe speaks

    def __init__(self, config: ProxyConfig | SidecarConfig) -> None:
        self.config = config
        self.process: subprocess.Popen | None = None

    @property
    def site_file(self) -> Path:
        """The rendered site."""
        return self.config.work_dir / self.site_name

    @property
    def log_file(self) -> Path:
        """nginx's error log (start-up problems, refused requests at warn)."""
        return self.config.work_dir / "error.log"

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the error log and of nginx's own output, for error messages."""
        texts = [path.read_text(errors="replace") for path in (self.log_file, self.config.work_dir / "nginx.out")
                 if path.exists()]
        return "\n".join("\n".join(texts).splitlines()[-lines:]) or "(no log)"

    def take_ports(self) -> None:
        """Picks the free ports the site listens on (before render)."""
        raise NotImplementedError

    def render(self) -> str:
        """The site's text for this instance."""
        raise NotImplementedError

    def probe(self) -> None:
        """One request that any answer of the started site satisfies; raises requests.RequestException before."""
        raise NotImplementedError

    def start(self) -> NginxSite:
        """Renders the site, checks it with `nginx -t`, starts nginx and waits until the site answers.

        Raises:
            NginxError: nginx (or the renderer) is missing, the config does not pass `nginx -t`, or nginx died or
                was not ready.

        """
        binary = nginx_binary(self.config.binary)
        work_dir = self.config.work_dir.resolve()
        work_dir.mkdir(parents=True, exist_ok=True)
        self.take_ports()
        self.site_file.write_text(self.render())
        main = work_dir / "nginx.conf"
        main.write_text(main_config(work_dir, self.site_file))
        # -e: the error log before the config is read (the default /var/log/nginx may not be writable).
        command = [binary, "-p", f"{work_dir}/", "-c", str(main), "-e", str(self.log_file)]
        checked = subprocess.run([*command, "-t"], capture_output=True, text=True, check=False)
        if checked.returncode != 0:
            raise NginxError(f"nginx -t refused the rendered config {self.site_file}:\n{checked.stderr}")
        with (work_dir / "nginx.out").open("wb") as output:
            self.process = subprocess.Popen(command, cwd=work_dir, stdout=output, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.config.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NginxError(f"nginx exited (code {self.process.returncode}) before it was ready; "
                                 f"log:\n{self.log_tail()}")
            try:
                self.probe()
                return
            except requests.RequestException:
                pass
            time.sleep(0.1)  # polling interval of the readiness check
        raise NginxError(f"nginx not answering {self.scheme} after {self.config.startup_timeout:.0f} s; "
                         f"log:\n{self.log_tail()}")


class NginxProxy(NginxSite):
    """nginx serving the rendered TLS site (config/nginx/deepfake.conf) on one free port."""

    site_name = "deepfake.conf"
    scheme = "HTTPS"

    def __init__(self, config: ProxyConfig) -> None:
        super().__init__(config)
        self.config: ProxyConfig = config
        self.port: int | None = None

    @property
    def url(self) -> str:
        """Base URL of the TLS site."""
        if self.port is None:
            raise NginxError("nginx is not started")
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> str:
        """What clients verify the server certificate against (`verify=` for requests)."""
        return str(self.config.certificate.cert)

    def values(self) -> dict[str, str]:
        """The DEEPFAKE_* values this instance renders the site with."""
        config = self.config
        return {**config.overrides, "DEEPFAKE_LISTEN": f"127.0.0.1:{self.port}", "DEEPFAKE_SERVER_NAME": "127.0.0.1",
                "DEEPFAKE_TLS_CERTIFICATE": str(config.certificate.cert),
                "DEEPFAKE_TLS_CERTIFICATE_KEY": str(config.certificate.key),
                "DEEPFAKE_UPSTREAM": config.upstream, "DEEPFAKE_MAX_BODY_BYTES": str(config.max_body_bytes)}

    def take_ports(self) -> None:
        """One free port for the TLS listener."""
        self.port = free_port()

    def render(self) -> str:
        """The site as config/nginx/render.sh renders it."""
        return render_site(self.values())

    def probe(self) -> None:
        """Any HTTPS answer (the JSON 404 of /)."""
        requests.get(f"{self.url}/", verify=self.ca_file, timeout=1)


# --- the Kubernetes sidecar (config/nginx/sidecar.conf.template) -------------------------------------------------

SIDECAR_TEMPLATE = NGINX_DIR / "sidecar.conf.template"
# The only names the template's envsubst replaces, as in the pod (NGINX_ENVSUBST_FILTER in deployment.yaml).
SIDECAR_VARIABLES = ("SIDECAR_HTTP_LISTEN", "SIDECAR_GRPC_LISTEN", "SIDECAR_UPSTREAM_HTTP", "SIDECAR_UPSTREAM_GRPC",
                     "API_TOKEN", "API_TOKEN_PREVIOUS")


def render_sidecar(values: dict[str, str], template: Path = SIDECAR_TEMPLATE) -> str:
    """The sidecar site as envsubst renders it with `values`, replacing only SIDECAR_VARIABLES (as the pod does).

    Raises:
        NginxError: envsubst is missing or failed, or a variable has no value (the pod would render it as text).

    """
    missing = [name for name in SIDECAR_VARIABLES if name not in values]
    if missing:
        raise NginxError(f"no value for {', '.join(missing)}")
    envsubst = shutil.which("envsubst")
    if envsubst is None:
        raise NginxError("envsubst not found; install it with `sudo apt-get install gettext-base`")
    shell_format = " ".join(f"${{{name}}}" for name in SIDECAR_VARIABLES)
    completed = subprocess.run([envsubst, shell_format], input=template.read_text(), env={**os.environ, **values},
                               capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise NginxError(f"envsubst failed ({completed.returncode}): {completed.stderr.strip()}")
    return completed.stdout


@dataclass(frozen=True)
class SidecarConfig:
    """One throwaway sidecar nginx in front of one TorchServe (its inference REST and gRPC listeners).

    Attributes:
        work_dir: holds the rendered site, the main config, pid file, logs and temporary files.
        upstream_http: TorchServe's inference listener as host:port.
        upstream_grpc: TorchServe's gRPC inference listener as host:port.
        token: the accepted token (API_TOKEN; the Secret's `token`).
        previous_token: also accepted while a rotation is under way (API_TOKEN_PREVIOUS; "" = none).
        binary: executable name on PATH, or a path.
        startup_timeout: seconds to wait until the HTTP port answers.

    """

    work_dir: Path
    upstream_http: str
    upstream_grpc: str
    token: str
    previous_token: str = ""
    binary: str = "nginx"
    startup_timeout: float = 15.0


class SidecarProxy(NginxSite):
    """The sidecar nginx on two free loopback ports (HTTP and h2c gRPC); use as a context manager or start()/stop()."""

    site_name = "sidecar.conf"

    def __init__(self, config: SidecarConfig) -> None:
        super().__init__(config)
        self.config: SidecarConfig = config
        self.http_port: int | None = None
        self.grpc_port: int | None = None

    @property
    def url(self) -> str:
        """Base URL of the plain-HTTP listener."""
        if self.http_port is None:
            raise NginxError("nginx is not started")
        return f"http://127.0.0.1:{self.http_port}"

    def values(self) -> dict[str, str]:
        """The template's variables for this instance."""
        config = self.config
        return {"SIDECAR_HTTP_LISTEN": f"127.0.0.1:{self.http_port}",
                "SIDECAR_GRPC_LISTEN": f"127.0.0.1:{self.grpc_port}",
                "SIDECAR_UPSTREAM_HTTP": config.upstream_http, "SIDECAR_UPSTREAM_GRPC": config.upstream_grpc,
                "API_TOKEN": config.token, "API_TOKEN_PREVIOUS": config.previous_token}

    def take_ports(self) -> None:
        """Two different free ports: REST and gRPC."""
        self.http_port, self.grpc_port = free_port(), free_port()
        while self.grpc_port == self.http_port:
            self.grpc_port = free_port()

    def render(self) -> str:
        """config/nginx/sidecar.conf.template as the pod's envsubst renders it."""
        return render_sidecar(self.values())

    def probe(self) -> None:
        """Any HTTP answer (the JSON 404 of /)."""
        requests.get(f"{self.url}/", timeout=1)
