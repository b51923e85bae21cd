"""End to end: config/production.properties as scripts/serve.py runs it: keys, loopback-only operations, quiet logs."""

import json
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from scripts.ops import ManagementClient, OpsError, resolve_target, workers_ready
from scripts.serve import CONFIGS, Ports, ServeConfig, TorchServe, literal_regex, read_properties

pytestmark = pytest.mark.e2e
REPO_ROOT = Path(__file__).resolve().parents[2]
WILDCARD = {"0.0.0.0", "::"}  # Java reports a 0.0.0.0 bind as the dual-stack "::"
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1"}
ACCESS_LINE = re.compile(r'"POST /predictions/deepfake HTTP/1\.1" 200')


@pytest.fixture(scope="module")
def production(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    """A TorchServe started from config/production.properties on free ports (listener hosts kept)."""
    config = ServeConfig(run_dir=tmp_path_factory.mktemp("production"), model_store=model_store,
                         properties=CONFIGS["production"], ports=Ports.free())
    server = TorchServe(config).start()
    yield server
    server.stop()


def keys(server: TorchServe) -> dict[str, dict[str, str]]:
    return json.loads((server.config.run_dir / "key_file.json").read_text())


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def predict(server: TorchServe, image: bytes, headers: dict[str, str]) -> requests.Response:
    return requests.post(f"{server.config.inference_url}/predictions/deepfake", data=image, headers=headers, timeout=60)


def cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=180, check=False)


def test_key_file_is_written_to_the_run_dir_for_the_owner_only(production):
    key_file = production.config.run_dir / "key_file.json"  # the server's working directory
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    found = keys(production)
    assert set(found) == {"inference", "management", "API"}
    assert len({found[name]["key"] for name in found}) == 3


def test_a_prediction_needs_the_inference_key(production, tiny_dataset):
    image = (tiny_dataset / "fake" / "fake_00002.jpg").read_bytes()
    found = keys(production)
    for headers in ({}, bearer(found["management"]["key"]), bearer("wrong")):
        refused = predict(production, image, headers)
        assert refused.status_code == 400 and refused.json()["type"] == "InvalidKeyException"
    answered = predict(production, image, bearer(found["inference"]["key"]))
    assert answered.status_code == 200, answered.text
    assert answered.json()["label"] in {"real", "fake"} and answered.json()["model"]["version"] == "1.0"
    assert requests.get(f"{production.config.inference_url}/ping", timeout=10).status_code == 400


def test_management_needs_the_management_key(production):
    found = keys(production)
    url = f"{production.config.management_url}/models"
    for headers in ({}, bearer(found["inference"]["key"])):
        assert requests.get(url, headers=headers, timeout=10).status_code == 400
    listed = requests.get(url, headers=bearer(found["management"]["key"]), timeout=10)
    assert listed.status_code == 200 and [m["modelName"] for m in listed.json()["models"]] == ["deepfake"]

    without = cli("scripts.ops", "list", "--url", production.config.management_url)
    assert without.returncode == 1 and without.stderr.startswith("ops: the management API needs a token: --key-file")
    with_run_dir = cli("scripts.ops", "list", "--run-dir", str(production.config.run_dir))
    assert with_run_dir.returncode == 0 and with_run_dir.stdout.split() == ["deepfake", "deepfake.mar"]


def test_registration_is_refused_with_a_clear_line_but_scaling_works(production):
    found = keys(production)
    raw = requests.post(f"{production.config.management_url}/models", headers=bearer(found["management"]["key"]),
                        params={"url": "deepfake.mar", "model_name": "again"}, timeout=10)
    assert raw.status_code == 405
    refused = cli("scripts.ops", "register", "deepfake.mar", "--model-name", "again",
                  "--run-dir", str(production.config.run_dir))
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("ops: model registration is disabled on this server (enable_model_api=false")
    client = ManagementClient(resolve_target(None, None, None, production.config.run_dir, timeout=60))
    with pytest.raises(OpsError, match="model unregistration is disabled"):
        client.unregister("deepfake", "1.0")
    assert workers_ready(client.scale("deepfake", 1), 1)  # the management key may still scale


def test_runtime_config_reads_back_locked_down(production):
    config = production.config
    ports = config.ports
    values = read_properties(config.run_dir / "config.properties")
    assert values["inference_address"] == f"http://0.0.0.0:{ports.inference}"
    assert values["management_address"] == f"http://127.0.0.1:{ports.management}"
    assert values["metrics_address"] == f"http://127.0.0.1:{ports.metrics}"
    assert (values["grpc_inference_address"], values["grpc_management_address"]) == ("0.0.0.0", "127.0.0.1")
    assert "disable_token_authorization" not in values and values["token_expiration_min"] == "60"
    assert values["enable_model_api"] == "false" and values["install_py_dep_per_model"] == "false"
    store = str(config.model_store.resolve())
    assert values["allowed_urls"] == f"file://{literal_regex(store)}/[A-Za-z0-9_.-]+[.]mar"
    allowed = re.compile(values["allowed_urls"])  # Java and Python agree on this subset of regex
    assert allowed.fullmatch(f"file://{store}/deepfake.mar")
    for refused in (f"file://{store}/../deepfake.mar", f"file://{store}x/deepfake.mar", "file:///etc/deepfake.mar",
                    "https://example.com/deepfake.mar",
                    f"file://{store}/%2e%2e%2fdeepfake.mar"):
        assert not allowed.fullmatch(refused), refused
    [log4j] = [word.split("=", 1)[1] for word in values["vmargs"].split() if word.startswith("-Dlog4j.")]
    assert Path(log4j).is_absolute() and Path(log4j) == REPO_ROOT / "config" / "log4j2-production.xml"
    assert Path(log4j).is_file() and Path(values["metrics_config"]).is_file()
    assert {"-Xmx2g", "-XX:MaxDirectMemorySize=2g", "-XX:+ExitOnOutOfMemoryError"} <= set(values["vmargs"].split())


def test_sockets_bind_inference_everywhere_and_operations_to_loopback(production):
    root = psutil.Process(production.pid)
    [java] = [p for p in [root, *root.children(recursive=True)] if p.name() == "java"]
    bound = {c.laddr.port: c.laddr.ip for c in java.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
    ports = production.config.ports
    assert bound[ports.inference] in WILDCARD and bound[ports.grpc_inference] in WILDCARD
    assert {bound[ports.management], bound[ports.metrics], bound[ports.grpc_management]} <= LOOPBACK


def _wait_for_line(path: Path, pattern: re.Pattern, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and pattern.search(path.read_text(errors="replace")):
            return True
        time.sleep(0.1)  # interval between reads of a log being written, not a stand-in for the check
    return False


def test_requests_are_not_logged_one_by_one_but_files_keep_info(production, torchserve, tiny_dataset):
    image = (tiny_dataset / "real" / "real_00005.jpg").read_bytes()
    for _ in range(3):
        assert predict(production, image, bearer(keys(production)["inference"]["key"])).status_code == 200
    # The dev config keeps TorchServe's default: one INFO line per request on the console and in access_log.log.
    assert requests.post(f"{torchserve.config.inference_url}/predictions/deepfake", data=image,
                         timeout=60).status_code == 200
    assert _wait_for_line(torchserve.config.run_dir / "torchserve.out", ACCESS_LINE)
    assert _wait_for_line(torchserve.config.run_dir / "logs" / "access_log.log", ACCESS_LINE)

    run_dir = production.config.run_dir
    logs = {path.name: path.read_text(errors="replace") for path in [run_dir / "torchserve.out",
                                                                       *(run_dir / "logs").glob("*.log")]}
    assert {"torchserve.out", "access_log.log", "ts_log.log", "model_log.log"} <= set(logs)
    assert not [name for name, text in logs.items() if ACCESS_LINE.search(text) or "ACCESS_LOG" in text]
    assert "[INFO ]" not in logs["torchserve.out"]  # the console gets warnings and errors only
    assert "[INFO ]" in logs["ts_log.log"] and "[DEBUG]" not in logs["ts_log.log"]
    assert "[INFO ]" in logs["model_log.log"]  # the workers' own lines still reach their file


def test_status_and_token_commands(production):
    run_dir = str(production.config.run_dir)
    status = cli("scripts.serve", "status", "--run-dir", run_dir)
    assert status.returncode == 0, status.stdout + status.stderr
    ports = production.config.ports
    lines = status.stdout.splitlines()
    assert lines[0] == f"running: True, ready: True (pid {production.pid})"
    assert f"config: {CONFIGS['production']} (as run: {production.config.run_dir / 'config.properties'})" in lines
    assert "token authorization: on, keys in" in status.stdout and "model API: off" in status.stdout
    assert (f"listeners: inference http://0.0.0.0:{ports.inference}, management http://127.0.0.1:{ports.management}, "
            f"metrics http://127.0.0.1:{ports.metrics}, gRPC inference 0.0.0.0:{ports.grpc_inference}, "
            f"gRPC management 127.0.0.1:{ports.grpc_management}") in lines
    assert "model deepfake 1.0 (default): 1 worker(s): 1 READY" in lines

    token = cli("scripts.serve", "token", "--kind", "inference", "--run-dir", run_dir)
    assert token.returncode == 0 and token.stdout == keys(production)["inference"]["key"] + "\n"
    everything = cli("scripts.serve", "token", "--run-dir", run_dir)
    assert everything.stdout.startswith(f"inference  {keys(production)['inference']['key']}  (expires ")
