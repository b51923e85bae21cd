"""Operates a running TorchServe through its management API: list, describe, scale, register, set-default, unregister.

Every answer TorchServe gives in error (400/403/404/405/409/500) becomes one line that says what
to do; `scale` and `register` return only once the workers asked for are READY (TorchServe's
`synchronous=true` does not wait for a scale-down, and a worker can still die after its start). For
`register` that is the archive's minWorkers when its model-config.yaml sets one, else `--workers`.

`describe` shows per version: default or not, batching, and per worker its id, status, pid,
device and memory (TorchServe's own figure, refreshed by its system metrics once a minute: "-"
until the first refresh).

Target: --url (default http://127.0.0.1:8081) or --run-dir, a `scripts.serve` run dir (its
management port and key file). Token (production config): --token, --key-file FILE,
$TS_MANAGEMENT_TOKEN, or the run dir's key_file.json, in that order.

Usage:
    python -m scripts.ops list [--json]
    python -m scripts.ops describe deepfake [--version 1.0] [--json] [--handler-info]
    python -m scripts.ops scale deepfake --min 2 [--max 2] [--version 1.0] [--timeout 120]
    python -m scripts.ops register model_store/deepfake-v2.mar --model-name deepfake [--workers 1] [--set-default]
    python -m scripts.ops set-default deepfake 2.0
    python -m scripts.ops unregister deepfake --version 1.0
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from scripts.serve import KEY_FILENAME, STATE_FILENAME, api_key, read_keys

DEFAULT_URL = "http://127.0.0.1:8081"
TOKEN_ENV = "TS_MANAGEMENT_TOKEN"
POLL_SECONDS = 0.25
_REGISTERED_VERSION = re.compile(r"Version: (?P<version>\S+) registered")


class OpsError(RuntimeError):
    """A management call failed; the message is one line a person can act on."""


@dataclass(frozen=True)
class Target:
    """Which management API to call and how.

    Attributes:
        url: base URL of the management API (port 8081 by default).
        token: the management key, sent as `Authorization: Bearer <token>`; None when auth is off.
        model_store: the server's model store when known (from a run dir), to check archives against.
        timeout: seconds an operation may take, waiting for workers included.

    """

    url: str = DEFAULT_URL
    token: str | None = None
    model_store: Path | None = None
    timeout: float = 120.0


@dataclass(frozen=True)
class Call:
    """What a request was for, so an error answer can be explained in those terms."""

    action: str  # "list", "describe", "scale", "register", "set-default", "unregister"
    model: str | None = None
    version: str | None = None


def resolve_target(url: str | None, token: str | None, key_file: Path | None, run_dir: Path | None,
                   timeout: float, environ: dict[str, str] | None = None) -> Target:
    """Builds the target from the options: explicit flags first, then the environment, then the run dir.

    Raises:
        OpsError: a named key file or run dir does not hold what it should.

    """
    environ = os.environ if environ is None else environ
    model_store = None
    if run_dir is not None:
        state_file = run_dir / STATE_FILENAME
        if not state_file.is_file():
            raise OpsError(f"no {STATE_FILENAME} in {run_dir}: no TorchServe was started there by scripts.serve")
        state = json.loads(state_file.read_text())
        url = url or f"http://127.0.0.1:{state['ports']['management']}"
        model_store = Path(state["model_store"]) if "model_store" in state else None
    if token is None and key_file is not None:
        try:
            token = api_key(key_file, "management")
        except (OSError, ValueError) as error:
            raise OpsError(f"cannot read the management key from {key_file}: {error}") from error
    token = token or environ.get(TOKEN_ENV)
    if token is None and run_dir is not None:
        token = read_keys(run_dir).get("management", {}).get("key")
    return Target(url=(url or DEFAULT_URL).rstrip("/"), token=token, model_store=model_store, timeout=timeout)


def _subject(call: Call) -> str:
    return f"model {call.model}" + (f" (version {call.version})" if call.version else "")


def explain(status: int, body: dict[str, Any], call: Call, sent_token: bool) -> str:
    """One line for an error answer of the management API: what went wrong and what to do."""
    kind = body.get("type", "")
    message = body.get("message", "") or "(no message)"
    if kind == "InvalidKeyException" or status == 401:
        if not sent_token:
            return (f"the management API needs a token: --key-file RUN_DIR/{KEY_FILENAME}, --run-dir RUN_DIR, "
                    f"--token KEY or ${TOKEN_ENV} (python -m scripts.serve token prints it)")
        return (f"the management API refused the token (wrong, or expired after token_expiration_min): read the "
                f"current one from {KEY_FILENAME} (python -m scripts.serve token)")
    if status == 405 and call.action in ("register", "unregister"):
        return (f"model {'registration' if call.action == 'register' else 'unregistration'} is disabled on this "
                f"server (enable_model_api=false, as in config/production.properties); roll a version by restarting "
                f"with the new .mar, or use a server started with the dev config")
    if kind == "ResourceNotFoundException":
        return f"no such management endpoint ({message}): is --url the management port (8081), not inference (8080)?"
    if status == 404 and call.action == "register":
        return (f"archive not registered: {message}. TorchServe registers archives from its model store only "
                f"(allowed_urls): copy the .mar there and pass its file name")
    if status == 404:
        return f"{_subject(call)} is not registered ({message}); see python -m scripts.ops list"
    if status == 403 and kind == "InvalidModelVersionException":
        return (f"cannot {call.action} {_subject(call)}: {message}; make another version the default first "
                f"(python -m scripts.ops set-default {call.model} OTHER_VERSION)")
    if status == 409:
        return f"{message}: unregister it first, or package the archive under another --version"
    if status == 400:
        return f"{call.action} refused: {message}"
    if status >= 500:
        return f"TorchServe failed to {call.action} {_subject(call)}: {message} (see logs/ts_log.log in its run dir)"
    return f"{call.action}: HTTP {status} {kind}: {message}"


def archive_version(archive: Path) -> str | None:
    """The modelVersion in a .mar's MAR-INF/MANIFEST.json (None when the file is not a readable archive)."""
    try:
        with zipfile.ZipFile(archive) as mar:
            return json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"].get("modelVersion")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def workers_ready(description: dict[str, Any], count: int) -> bool:
    """Exactly `count` workers, every one READY."""
    workers = description.get("workers", [])
    return len(workers) == count and all(worker.get("status") == "READY" for worker in workers)


class ManagementClient:
    """The management REST API of one TorchServe, with errors turned into OpsError lines."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.session = requests.Session()
        if target.token:
            self.session.headers["Authorization"] = f"Bearer {target.token}"

    def _request(self, method: str, path: str, call: Call, params: dict[str, Any] | None = None) -> Any:
        url = f"{self.target.url}{path}"
        try:
            response = self.session.request(method, url, params=params, timeout=(5, self.target.timeout))
        except requests.ConnectionError as error:
            raise OpsError(f"no TorchServe management API at {self.target.url} (connection refused): start one "
                           f"(python -m scripts.serve start) or pass --url / --run-dir") from error
        except requests.Timeout as error:
            raise OpsError(f"{call.action} {_subject(call)}: no answer from {url} within "
                           f"{self.target.timeout:.0f} s") from error
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text.strip()[:200]}
        if response.status_code != 200:
            raise OpsError(explain(response.status_code, body if isinstance(body, dict) else {}, call,
                                   sent_token=bool(self.target.token)))
        return body

    def list_models(self) -> list[dict[str, str]]:
        """Every registered model with its default version's archive ({"modelName", "modelUrl"})."""
        models: list[dict[str, str]] = []
        params: dict[str, Any] = {"limit": 100}
        while True:
            page = self._request("GET", "/models", Call("list"), params)
            models += page.get("models", [])
            if not page.get("nextPageToken"):
                return models
            params["next_page_token"] = page["nextPageToken"]

    def default_version(self, model: str) -> str:
        """The version /predictions/MODEL answers with."""
        return self._request("GET", f"/models/{model}", Call("describe", model))[0]["modelVersion"]

    def describe(self, model: str, version: str | None = None, handler_info: bool = False) -> list[dict[str, Any]]:
        """Every version of a model (or the one asked for), each with `default` marked.

        Args:
            model: the model name.
            version: one version only; None for all.
            handler_info: ask each version's handler for its own description (`customized=true`): a
                worker answers it, and a handler without describe_handle answers it like a request.

        """
        path = f"/models/{model}/{version}" if version else f"/models/{model}/all"
        versions = self._request("GET", path, Call("describe", model, version))
        default = self.default_version(model)
        described = [{**description, "default": description["modelVersion"] == default} for description in versions]
        if handler_info:  # TorchServe ignores customized=true on /all: ask each version
            described = [{**d, "customizedMetadata": self.handler_info(model, d["modelVersion"])} for d in described]
        return described

    def handler_info(self, model: str, version: str) -> Any:
        """What the version's handler answers a describe request with (its describe_handle()).

        TorchServe answers with the handler's own status: a handler that treats the describe call
        as an image-less prediction gives 4xx with its error object, which is returned as is.
        """
        call = Call("describe", model, version)
        try:
            response = self.session.get(f"{self.target.url}/models/{model}/{version}", params={"customized": "true"},
                                        timeout=(5, self.target.timeout))
            body = response.json()
        except requests.RequestException as error:
            raise OpsError(f"describe {_subject(call)} --handler-info: {error}") from error
        except ValueError:
            body = None
        if isinstance(body, list) and body and "customizedMetadata" in body[0]:
            return body[0]["customizedMetadata"]
        raise OpsError(explain(response.status_code, body if isinstance(body, dict) else {}, call,
                               sent_token=bool(self.target.token)))

    def describe_version(self, model: str, version: str | None) -> dict[str, Any]:
        """One version's description (the default version when `version` is None)."""
        if version is None:
            version = self.default_version(model)
        return self.describe(model, version)[0]

    def wait_for_workers(self, model: str, version: str | None, count: int, started: float) -> dict[str, Any]:
        """Polls describe until exactly `count` workers are READY.

        Raises:
            OpsError: the deadline (target.timeout after `started`) passed first; says what the workers were doing.

        """
        deadline = started + self.target.timeout
        while True:
            description = self.describe_version(model, version)
            if workers_ready(description, count):
                return description
            if time.monotonic() > deadline:
                states = ", ".join(f"{w['id']} {w['status']}" for w in description.get("workers", [])) or "none"
                raise OpsError(f"{_subject(Call('scale', model, version))}: not {count} READY worker(s) after "
                               f"{self.target.timeout:.0f} s (workers: {states}); see logs/model_log.log")
            time.sleep(POLL_SECONDS)  # interval between checks of the condition, not a stand-in for it

    def scale(self, model: str, min_workers: int, max_workers: int | None = None,
              version: str | None = None) -> dict[str, Any]:
        """Sets the worker count and returns the description once exactly `min_workers` are READY.

        Raises:
            OpsError: a bad count, an unknown model or version, or workers not READY in time.

        """
        if min_workers < 0:
            raise OpsError(f"--min must be 0 or more, not {min_workers}")
        if max_workers is not None and max_workers < min_workers:
            raise OpsError(f"--max ({max_workers}) must not be below --min ({min_workers})")
        max_workers = min_workers if max_workers is None else max_workers
        started = time.monotonic()
        path = f"/models/{model}" + (f"/{version}" if version else "")
        self._request("PUT", path, Call("scale", model, version),
                      {"min_worker": min_workers, "max_worker": max_workers, "synchronous": "true"})
        return self.wait_for_workers(model, version, min_workers, started)

    def register(self, archive: str, model: str, workers: int = 1, set_default: bool = False) -> dict[str, Any]:
        """Registers an archive of the server's model store as a version of `model`, optionally as its default.

        Args:
            archive: a .mar path or file name; TorchServe is sent the file name, which it looks up in
                its model store (a URL is passed on as given, for allowed_urls to judge).
            model: the name to serve it under.
            workers: initial workers. A .mar whose model-config.yaml sets minWorkers gets that many instead
                (TorchServe prefers the archive's setting), so the wait is for the count the version reports.
            set_default: make it the version /predictions/MODEL answers with.

        Raises:
            OpsError: the archive is outside the known model store, or TorchServe refused it.

        """
        url, version = self._archive_url_and_version(archive)
        call = Call("register", model, version)
        started = time.monotonic()
        answer = self._request("POST", "/models", call, {"url": url, "model_name": model, "initial_workers": workers,
                                                         "synchronous": "true"})
        if version is None:
            match = _REGISTERED_VERSION.search(answer.get("status", ""))
            version = match["version"] if match else None
        if version is None:
            raise OpsError(f"registered {url} as {model}, but its version is unknown: {answer}")
        if set_default:
            self.set_default(model, version)
        started_workers = int(self.describe_version(model, version).get("minWorkers") or workers)
        return self.wait_for_workers(model, version, max(1, started_workers), started)

    def _archive_url_and_version(self, archive: str) -> tuple[str, str | None]:
        if "://" in archive:
            return archive, None
        path = Path(archive)
        store = self.target.model_store
        if store is not None:
            if path.parent != Path(".") and path.resolve().parent != store.resolve():
                raise OpsError(f"{archive} is not in the server's model store {store}: copy it there first "
                               f"(TorchServe registers archives from its store only)")
            path = store / path.name
        if path.parent != Path(".") and not path.is_file():  # a bare name may exist only in the server's store
            raise OpsError(f"{path} does not exist")
        return path.name, archive_version(path) if path.is_file() else None

    def set_default(self, model: str, version: str) -> str:
        """Makes `version` the one /predictions/MODEL answers with; returns TorchServe's status line."""
        return self._request("PUT", f"/models/{model}/{version}/set-default",
                             Call("set-default", model, version))["status"]

    def unregister(self, model: str, version: str) -> str:
        """Removes one version and its workers; returns TorchServe's status line."""
        return self._request("DELETE", f"/models/{model}/{version}", Call("unregister", model, version))["status"]


def oversubscription_warning(handler_info: Any, workers: int) -> str | None:
    """A warning when `workers` CPU workers with their torch threads need more cores than the host has.

    A worker sizes its thread pool once, at start, from the .mar's maxWorkers; scaling past that
    at run time puts workers × threads above the cores. Measured on a 2-core host with the demo
    model at 16 concurrent clients: 1 worker × 2 threads 63 requests/s, 2 × 1 thread 104, but
    2 × 2 threads (scaled up from 1 at run time) 16: the thread pools' spinning starves each other.
    """
    if not isinstance(handler_info, dict) or not str(handler_info.get("model", {}).get("device", "")).startswith("cpu"):
        return None
    threads, cores = handler_info.get("torch_threads"), handler_info.get("cpu_cores")
    if not isinstance(threads, int) or not isinstance(cores, int) or workers * threads <= cores:
        return None
    return (f"warning: {workers} CPU workers × {threads} torch threads each need {workers * threads} cores; the "
            f"server has {cores}. Oversubscribed workers are slower than fewer ones: set maxWorkers (or "
            f"handler.torch_threads) in model-config.yaml to the most workers you will run and re-package")


def _megabytes(value: Any) -> str:
    return f"{value / 1e6:.0f} MB" if isinstance(value, int | float) and value > 0 else "-"


def describe_table(versions: list[dict[str, Any]]) -> str:
    """A human summary of describe answers: one block per version, one row per worker."""
    blocks = []
    for description in versions:
        queue = description.get("jobQueueStatus", {})
        lines = [
            f"{description['modelName']} {description['modelVersion']}"
            f"{' (default)' if description.get('default') else ''}: {description.get('modelUrl', '?')}, "
            f"workers min {description.get('minWorkers')} max {description.get('maxWorkers')}, "
            f"batch size {description.get('batchSize')}, max delay {description.get('maxBatchDelay')} ms, "
            f"device {description.get('deviceType', '?')}, queue {queue.get('pendingRequests', '?')} pending / "
            f"{queue.get('remainingCapacity', '?')} free",
            f"  {'worker':<7} {'status':<9} {'pid':>7}  {'device':<11} {'memory':>8}  started",
        ]
        for worker in description.get("workers", []):
            gpu_usage = worker.get("gpuUsage", "N/A")
            device = "gpu" if worker.get("gpu") else "cpu"
            device += f" {gpu_usage}" if worker.get("gpu") and gpu_usage != "N/A" else ""
            lines.append(f"  {worker.get('id', '?'):<7} {worker.get('status', '?'):<9} {worker.get('pid', '?'):>7}  "
                         f"{device:<11} {_megabytes(worker.get('memoryUsage')):>8}  {worker.get('startTime', '?')}")
        if not description.get("workers"):
            lines.append("  (no workers)")
        if "customizedMetadata" in description:
            lines.append(f"  handler: {json.dumps(description['customizedMetadata'], sort_keys=True)}")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    target = common.add_argument_group("target")
    target.add_argument("--url", help=f"management API base URL (default {DEFAULT_URL}, or the run dir's port)")
    target.add_argument("--run-dir", type=Path, help="a scripts.serve run dir: its management port and key_file.json")
    target.add_argument("--token", help=f"management key (else --key-file, ${TOKEN_ENV} or the run dir's key file)")
    target.add_argument("--key-file", type=Path, help=f"TorchServe's {KEY_FILENAME}; its management key is used")
    target.add_argument("--timeout", type=float, default=Target.timeout,
                        help="seconds an operation may take, workers' start included (default %(default)s)")
    common.add_argument("--json", action="store_true", help="print TorchServe's JSON instead of a summary")

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("list", parents=[common], help="registered models and their default archive")
    describe = commands.add_parser("describe", parents=[common], help="versions, workers, batching of a model")
    describe.add_argument("model")
    describe.add_argument("--version", help="one version only (default: all, the default one marked)")
    describe.add_argument("--handler-info", action="store_true",
                          help="also ask the handler for its own description (customized=true)")
    scale = commands.add_parser("scale", parents=[common], help="set the worker count and wait until READY")
    scale.add_argument("model")
    scale.add_argument("--min", type=int, required=True, dest="min_workers", help="workers to run")
    scale.add_argument("--max", type=int, dest="max_workers", help="upper bound (default: --min)")
    scale.add_argument("--version", help="scale this version (default: the default version)")
    register = commands.add_parser("register", parents=[common],
                                   help="register a .mar of the server's model store as a model version")
    register.add_argument("archive", help="e.g. model_store/deepfake-v2.mar (TorchServe gets its file name)")
    register.add_argument("--model-name", required=True, help="serve it as /predictions/MODEL_NAME")
    register.add_argument("--workers", type=int, default=1, help="initial workers, waited for (default 1)")
    register.add_argument("--set-default", action="store_true", help="make it the default version")
    set_default = commands.add_parser("set-default", parents=[common],
                                      help="make a version the one /predictions/MODEL answers with")
    set_default.add_argument("model")
    set_default.add_argument("version")
    unregister = commands.add_parser("unregister", parents=[common], help="remove one version and its workers")
    unregister.add_argument("model")
    unregister.add_argument("--version", required=True)
    return parser


def run(args: argparse.Namespace) -> str:
    """Performs one command; returns what to print.

    Raises:
        OpsError: the target could not be resolved or TorchServe refused the call.

    """
    target = resolve_target(args.url, args.token, args.key_file, args.run_dir, args.timeout)
    client = ManagementClient(target)
    if args.command == "list":
        models = client.list_models()
        if args.json:
            return json.dumps(models, indent=2)
        return "\n".join(f"{m['modelName']:<20} {m['modelUrl']}" for m in models) or "(no models registered)"
    if args.command == "describe":
        versions = client.describe(args.model, args.version, args.handler_info)
        return json.dumps(versions, indent=2) if args.json else describe_table(versions)
    if args.command == "scale":
        started = time.monotonic()
        description = client.scale(args.model, args.min_workers, args.max_workers, args.version)
        if args.json:
            return json.dumps(description, indent=2)
        pids = ", ".join(str(w["pid"]) for w in description["workers"]) or "none"
        summary = (f"scaled {description['modelName']} {description['modelVersion']} to {args.min_workers} READY "
                   f"worker(s) in {time.monotonic() - started:.1f} s (pids {pids})\n" + describe_table([description]))
        try:
            info = client.handler_info(description["modelName"], description["modelVersion"])
        except OpsError:  # a handler without describe support: nothing to check
            info = None
        warning = oversubscription_warning(info, args.min_workers)
        return summary + (f"\n{warning}" if warning else "")
    if args.command == "register":
        description = client.register(args.archive, args.model_name, args.workers, args.set_default)
        description = {**description, "default": client.default_version(args.model_name)
                       == description["modelVersion"]}
        if args.json:
            return json.dumps(description, indent=2)
        return (f"registered {args.model_name} {description['modelVersion']} from {description['modelUrl']}"
                f"{' as the default version' if description['default'] else ''}\n" + describe_table([description]))
    if args.command == "set-default":
        return client.set_default(args.model, args.version)
    return client.unregister(args.model, args.version)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: one line on stderr and exit code 1 for any refused operation."""
    args = _parser().parse_args(argv)
    try:
        print(run(args), flush=True)
    except OpsError as error:
        sys.exit(f"ops: {error}")
    except BrokenPipeError:  # `ops describe ... | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    main()
