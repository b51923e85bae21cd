"""A TorchServe for the reliability checks: the production config (token auth on) on free ports.

Checks need what an operator would run, not the development config, so every script starts its
server here; tests may pass any running `TorchServe` instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from scripts.serve import CONFIGS, Ports, ServeConfig, TorchServe, auth_headers, model_workers

MODEL_NAME = "deepfake"


@contextmanager
def running_server(model_store: Path, run_dir: Path, config: str = "production") -> Iterator[TorchServe]:
    """Starts `model_store`'s deepfake.mar with the named config on free ports; stops the whole tree afterwards."""
    serve = ServeConfig(run_dir=run_dir, model_store=model_store, ports=Ports.free(), properties=CONFIGS[config])
    server = TorchServe(serve).start()
    try:
        yield server
    finally:
        server.stop()


def inference_headers(server: TorchServe) -> dict[str, str]:
    """The Authorization header of the inference API ({} when the server runs without token auth)."""
    return auth_headers(server.config.run_dir, "inference")


def predictions_url(server: TorchServe, model: str = MODEL_NAME) -> str:
    """Where images are posted."""
    return f"{server.config.inference_url}/predictions/{model}"


def worker_identities(server: TorchServe, model: str = MODEL_NAME) -> list[tuple[Any, ...]]:
    """(id, pid, startTime) of every worker: equal before and after a check means no worker was restarted."""
    return sorted((w["id"], w["pid"], w["startTime"]) for w in model_workers(server.config, model))


def worker_processes(server: TorchServe) -> list[psutil.Process]:
    """The Python worker processes of the server's tree (the Java frontend's children)."""
    assert server.pid is not None, "the server is not running"
    processes = []
    for process in psutil.Process(server.pid).children(recursive=True):
        try:
            if "model_service_worker" in " ".join(process.cmdline()):
                processes.append(process)
        except psutil.NoSuchProcess:
            continue
    return processes


def frontend_process(server: TorchServe) -> psutil.Process | None:
    """The Java frontend of the server's tree."""
    assert server.pid is not None, "the server is not running"
    for process in psutil.Process(server.pid).children(recursive=True):
        try:
            if process.name() == "java":
                return process
        except psutil.NoSuchProcess:
            continue
    return None
