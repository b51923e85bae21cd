"""Health checks of the TorchServe a run dir records: `ready` for Docker's HEALTHCHECK and readiness probes, `live`.

`ready`: the server recorded in <run dir>/server.json runs, no supervisor is restarting it, and every
worker of every version of every registered model reports READY (each model has at least one worker).
TorchServe's /ping says Healthy before any worker can predict, so it cannot tell readiness.
`live`: /ping on the inference port answers 200 Healthy: the frontend is up, whatever the workers do.

Both exit 0 or 1 and print one line saying why, which is what `docker inspect` shows for a health check.
With token authorization on they read the run dir's key_file.json. Keys expire (token_expiration_min,
60 in the shipped configs); a check whose key has expired renews that key with the API key, as TorchServe
documents (GET :8081/token?type=...), which rewrites key_file.json. Without it every check after the
first hour would fail on a healthy server. Only an already expired key is renewed, so no client loses
a key that still worked. The module imports no torch: a check costs well under a second.

Usage:
    python -m scripts.healthcheck ready [--run-dir /app/run] [--timeout 5]
    python -m scripts.healthcheck live [--run-dir /app/run] [--timeout 5]
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from scripts.serve import KEY_FILENAME, ServeConfig, TorchServe, read_keys, recorded_config

CONTAINER_RUN_DIR = Path("/app/run")  # where the images keep the run dir (docker/Dockerfile)
DEFAULT_RUN_DIR = CONTAINER_RUN_DIR if CONTAINER_RUN_DIR.is_dir() else ServeConfig.run_dir
READY = "READY"


@dataclass(frozen=True)
class CheckConfig:
    """What to check and how long to wait.

    Attributes:
        run_dir: the run dir of `python -m scripts.serve start` (server.json, key_file.json).
        timeout: seconds each HTTP call may take; Docker's own --timeout should allow a few of them.

    """

    run_dir: Path = DEFAULT_RUN_DIR
    timeout: float = 5.0


@dataclass(frozen=True)
class Verdict:
    """The outcome of one check: healthy or not, and one line saying why."""

    healthy: bool
    reason: str

    @property
    def exit_code(self) -> int:
        """0 when healthy, 1 otherwise (Docker reads 1 as unhealthy)."""
        return 0 if self.healthy else 1


class CheckError(RuntimeError):
    """The check could not get an answer (no server, refused key, no connection); the message says which."""


def recorded_server(run_dir: Path) -> ServeConfig:
    """The ServeConfig of the server recorded in run_dir/server.json (its ports and models).

    Raises:
        CheckError: nothing is recorded there.

    """
    config = recorded_config(run_dir)
    if config is None:
        raise CheckError(f"no TorchServe recorded in {run_dir} (no server.json): not started, or stopped")
    return config


def key_expired(entry: dict[str, str], now: datetime) -> bool:
    """Whether a key_file.json entry's "expiration time" (ISO 8601, UTC) has passed; False when it has none."""
    stamp = entry.get("expiration time")
    if not stamp:
        return False
    return datetime.fromisoformat(stamp) <= now


def auth_header(config: ServeConfig, kind: str, timeout: float) -> tuple[dict[str, str], str]:
    """The Authorization header for one API ("inference" or "management"), renewing its key if it has expired.

    Returns:
        The header ({} when token authorization is off: no key file) and a note for the output line
        ("" unless a key was renewed).

    Raises:
        CheckError: the key file has no such key, or the renewal failed.

    """
    keys = read_keys(config.run_dir)
    if not keys:
        return {}, ""
    if kind not in keys or "API" not in keys:
        raise CheckError(f"{config.run_dir / KEY_FILENAME} has no {kind} or API key")
    note = ""
    if key_expired(keys[kind], datetime.now(UTC)):
        try:
            renewal = requests.get(f"{config.management_url}/token", params={"type": kind}, timeout=timeout,
                                   headers={"Authorization": f"Bearer {keys['API']['key']}"})
        except requests.RequestException as error:
            raise CheckError(f"the {kind} key expired and the management API is not answering to renew it "
                             f"({type(error).__name__})") from error
        if renewal.status_code != 200:
            raise CheckError(f"the {kind} key expired and renewing it was refused (HTTP {renewal.status_code})")
        keys = read_keys(config.run_dir)  # TorchServe wrote the new key into key_file.json
        note = f" (renewed the expired {kind} key)"
    return {"Authorization": f"Bearer {keys[kind]['key']}"}, note


def worker_summary(versions: list[dict[str, Any]]) -> tuple[bool, str]:
    """Whether every worker of every version is READY and each model has one; and a phrase per version.

    Args:
        versions: the management API's descriptions (GET /models/NAME/all) of every registered version.

    """
    ready = bool(versions)
    phrases = []
    workers_per_model: Counter[str] = Counter()
    for version in versions:
        workers = version.get("workers", [])
        workers_per_model[version["modelName"]] += len(workers)
        states = Counter(worker.get("status", "?") for worker in workers)
        ready = ready and set(states) <= {READY}
        counts = ", ".join(f"{count} {status}" for status, count in sorted(states.items())) or "no workers"
        phrases.append(f"{version['modelName']} {version['modelVersion']}: {counts}")
    ready = ready and all(workers_per_model.values())
    return ready, "; ".join(phrases) or "no model registered"


def registered_versions(config: ServeConfig, headers: dict[str, str], timeout: float) -> list[dict[str, Any]]:
    """Every registered version of every model, as GET /models/NAME/all describes it.

    Raises:
        CheckError: the management API cannot be reached or refuses the call.

    """
    def get(path: str) -> Any:
        try:
            response = requests.get(f"{config.management_url}{path}", headers=headers, timeout=timeout)
        except requests.RequestException as error:
            raise CheckError(f"management API {config.management_url} not answering ({type(error).__name__})") \
                from error
        if response.status_code != 200:
            raise CheckError(f"management API answered {response.status_code} to GET {path}")
        return response.json()

    names = [entry["modelName"] for entry in get("/models?limit=1000").get("models", [])]
    return [description for name in names for description in get(f"/models/{name}/all")]


def check_ready(check: CheckConfig) -> Verdict:
    """Ready: the recorded server runs, is not being restarted, and every worker of every model is READY."""
    try:
        config = recorded_server(check.run_dir)
        server = TorchServe(config)
        supervisor = server.read_state().get("supervisor") or {}
        if supervisor.get("state") in ("starting", "restarting"):
            return Verdict(False, f"not ready: the supervisor is {supervisor['state']} TorchServe")
        if not server.is_running():
            return Verdict(False, f"not ready: the TorchServe recorded in {check.run_dir} is not running")
        headers, note = auth_header(config, "management", check.timeout)
        versions = registered_versions(config, headers, check.timeout)
    except CheckError as error:
        return Verdict(False, f"not ready: {error}")
    missing = sorted(set(config.models) - {version["modelName"] for version in versions})
    ready, summary = worker_summary(versions)
    if missing:
        return Verdict(False, f"not ready: model(s) {', '.join(missing)} not registered; {summary}{note}")
    return Verdict(ready, f"{'ready' if ready else 'not ready'}: {summary}{note}")


def check_live(check: CheckConfig) -> Verdict:
    """Live: GET /ping on the inference port answers 200 with status Healthy."""
    try:
        config = recorded_server(check.run_dir)
        headers, note = auth_header(config, "inference", check.timeout)
        response = requests.get(f"{config.inference_url}/ping", headers=headers, timeout=check.timeout)
    except CheckError as error:
        return Verdict(False, f"not live: {error}")
    except requests.RequestException as error:
        return Verdict(False, f"not live: /ping on {config.inference_url} not answering ({type(error).__name__})")
    try:
        status = response.json().get("status")
    except ValueError:
        status = None
    if response.status_code == 200 and status == "Healthy":
        return Verdict(True, f"live: /ping answered Healthy{note}")
    return Verdict(False, f"not live: /ping answered HTTP {response.status_code} {status or response.text[:80]!r}")


CHECKS = {"ready": check_ready, "live": check_live}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: prints the verdict's line and exits with its code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("check", choices=sorted(CHECKS), help="ready: every worker READY; live: /ping Healthy")
    parser.add_argument("--run-dir", type=Path, default=CheckConfig.run_dir,
                        help="the server's run dir (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=CheckConfig.timeout,
                        help="seconds per HTTP call (default: %(default)s)")
    args = parser.parse_args(argv)
    verdict = CHECKS[args.check](CheckConfig(run_dir=args.run_dir, timeout=args.timeout))
    print(verdict.reason, flush=True)
    sys.exit(verdict.exit_code)


if __name__ == "__main__":
    main()
