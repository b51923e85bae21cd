"""scripts/ops.py against a real dev-config TorchServe of its own: scaling, rolling a version, error lines.

The module's server serves deepfake 1.0 from a store that also holds deepfake-v2.mar (2.0, packaged
here with --archive-name); tests that change what is registered put it back, so their order is free.
"""

import json
import shutil
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from scripts.ops import (
    Call,
    ManagementClient,
    OpsError,
    Target,
    archive_version,
    explain,
    oversubscription_warning,
    resolve_target,
    workers_ready,
)
from scripts.package_model import PackageConfig, package_model
from scripts.serve import Ports, ServeConfig, TorchServe

REPO_ROOT = Path(__file__).resolve().parents[2]
e2e = pytest.mark.e2e


@pytest.fixture(scope="module")
def versioned_store(model_store: Path, tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deepfake.mar (version 1.0, one worker) and deepfake-v2.mar: the same model name, version 2.0, another file,
    packaged with the shipped model-config.yaml (two workers)."""
    store = tmp_path_factory.mktemp("versioned_store")
    shutil.copy2(model_store / "deepfake.mar", store / "deepfake.mar")
    package_model(PackageConfig(export_dir=tiny_export, model_store=store, version="2.0", archive_name="deepfake-v2"))
    return store


@pytest.fixture(scope="module")
def ops_server(versioned_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    """This module's own dev-config TorchServe (the shared `torchserve` one must not be re-registered)."""
    config = ServeConfig(run_dir=tmp_path_factory.mktemp("ops_serve"), model_store=versioned_store,
                         ports=Ports.free())
    server = TorchServe(config).start()
    yield server
    server.stop()


@pytest.fixture
def client(ops_server: TorchServe) -> ManagementClient:
    return ManagementClient(resolve_target(None, None, None, ops_server.config.run_dir, timeout=120))


def ops_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.ops", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


def process_ends(pid: int, timeout: float) -> bool:
    try:
        process = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    _, alive = psutil.wait_procs([process], timeout=timeout)
    return not alive


def predicted_version(server: TorchServe, path: str, image: bytes) -> requests.Response:
    return requests.post(f"{server.config.inference_url}/predictions/{path}", data=image, timeout=60)


def test_archive_name_gives_a_second_file_with_the_same_model_name(versioned_store):
    with zipfile.ZipFile(versioned_store / "deepfake-v2.mar") as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]
    assert manifest["modelName"] == "deepfake" and manifest["modelVersion"] == "2.0"
    assert archive_version(versioned_store / "deepfake-v2.mar") == "2.0"
    assert archive_version(versioned_store / "deepfake.mar") == "1.0"
    assert sorted(p.name for p in versioned_store.iterdir()) == ["deepfake-v2.mar", "deepfake.mar"]


@pytest.mark.parametrize("name", ["v2.mar", "sub/v2", ".."])
def test_archive_name_must_be_a_plain_name(tmp_path, name):
    with pytest.raises(ValueError, match="plain file name"):
        package_model(PackageConfig(export_dir=tmp_path, model_store=tmp_path, archive_name=name))


@e2e
def test_list_and_describe_from_the_cli(ops_server):
    run_dir = str(ops_server.config.run_dir)
    listed = ops_cli("list", "--run-dir", run_dir)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["deepfake", "deepfake.mar"]

    described = ops_cli("describe", "deepfake", "--run-dir", run_dir, "--json")
    assert described.returncode == 0, described.stderr
    [version] = json.loads(described.stdout)
    assert (version["modelVersion"], version["default"], version["batchSize"]) == ("1.0", True, 8)
    [worker] = version["workers"]
    assert worker["status"] == "READY" and psutil.Process(worker["pid"]).is_running()

    table = ops_cli("describe", "deepfake", "--run-dir", run_dir)
    assert table.returncode == 0, table.stderr
    header, _, row = table.stdout.splitlines()
    assert header.startswith("deepfake 1.0 (default): deepfake.mar, workers min 1 max 1, batch size 8")
    assert row.split()[:3] == [worker["id"], "READY", str(worker["pid"])]


@e2e
def test_scale_to_two_distinct_ready_workers_and_back(ops_server, client):
    run_dir = str(ops_server.config.run_dir)
    try:
        up = ops_cli("scale", "deepfake", "--min", "2", "--run-dir", run_dir)
        assert up.returncode == 0, up.stderr
        assert up.stdout.startswith("scaled deepfake 1.0 to 2 READY worker(s)")
        workers = client.describe_version("deepfake", None)["workers"]
        pids = {w["pid"] for w in workers}
        assert [w["status"] for w in workers] == ["READY", "READY"] and len(pids) == 2
        assert all(psutil.Process(pid).is_running() for pid in pids)
        # The .mar says maxWorkers 1, so each worker took every core for its threads: 2 of them oversubscribe.
        info = client.handler_info("deepfake", "1.0")
        assert info["torch_threads"] == info["cpu_cores"]
        assert "warning: 2 CPU workers × " in up.stdout and "set maxWorkers" in up.stdout

        down = ops_cli("scale", "deepfake", "--min", "1", "--run-dir", run_dir, "--json")
        assert down.returncode == 0, down.stderr
        [kept] = json.loads(down.stdout)["workers"]
        assert kept["status"] == "READY" and kept["pid"] in pids
        [gone] = pids - {kept["pid"]}
        assert process_ends(gone, timeout=30)  # the retired worker's process exits, not only its registration
    finally:
        client.scale("deepfake", 1)


@e2e
def test_register_a_second_version_make_it_default_and_unregister_the_first(ops_server, client, tiny_dataset):
    image = (tiny_dataset / "real" / "real_00004.jpg").read_bytes()
    v2 = str(ops_server.config.model_store / "deepfake-v2.mar")
    try:
        registered = client.register(v2, "deepfake", workers=1, set_default=True)
        # The archive's model-config.yaml (minWorkers 2) wins over initial_workers: register waits for both.
        assert registered["modelVersion"] == "2.0" and registered["minWorkers"] == 2 and workers_ready(registered, 2)
        assert predicted_version(ops_server, "deepfake", image).json()["model"]["version"] == "2.0"
        assert predicted_version(ops_server, "deepfake/1.0", image).json()["model"]["version"] == "1.0"
        assert {(v["modelVersion"], v["default"]) for v in client.describe("deepfake")} == {("1.0", False),
                                                                                            ("2.0", True)}
        with pytest.raises(OpsError, match="make another version the default first"):  # TorchServe answers 403
            client.unregister("deepfake", "2.0")

        assert client.unregister("deepfake", "1.0") == 'Model "deepfake" unregistered'
        assert [v["modelVersion"] for v in client.describe("deepfake")] == ["2.0"]
        assert predicted_version(ops_server, "deepfake/1.0", image).status_code == 404
        assert predicted_version(ops_server, "deepfake", image).json()["model"]["version"] == "2.0"
    finally:  # back to 1.0 alone, whatever state a failure left
        versions = {v["modelVersion"] for v in client.describe("deepfake")}
        if "1.0" not in versions:
            client.register("deepfake.mar", "deepfake", workers=1)
        client.set_default("deepfake", "1.0")
        if "2.0" in {v["modelVersion"] for v in client.describe("deepfake")}:
            client.unregister("deepfake", "2.0")
    assert [(v["modelVersion"], v["default"]) for v in client.describe("deepfake")] == [("1.0", True)]


@e2e
def test_register_from_the_cli_and_its_conflict_line(ops_server, client):
    run_dir = str(ops_server.config.run_dir)
    try:
        registered = ops_cli("register", str(ops_server.config.model_store / "deepfake-v2.mar"),
                             "--model-name", "deepfake", "--run-dir", run_dir)
        assert registered.returncode == 0, registered.stderr
        assert registered.stdout.startswith("registered deepfake 2.0 from deepfake-v2.mar\n")
        again = ops_cli("register", "deepfake-v2.mar", "--model-name", "deepfake", "--run-dir", run_dir)
        assert again.returncode == 1 and again.stdout == ""
        assert again.stderr == ("ops: Model version 2.0 is already registered for model deepfake: unregister it "
                                "first, or package the archive under another --version\n")
        assert client.default_version("deepfake") == "1.0"  # registering alone does not change the default
    finally:
        if "2.0" in {v["modelVersion"] for v in client.describe("deepfake")}:
            client.unregister("deepfake", "2.0")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@e2e
@pytest.mark.parametrize(("args", "line"), [
    (["describe", "nosuch"], "ops: model nosuch is not registered (Model not found: nosuch); "
                             "see python -m scripts.ops list"),
    (["unregister", "deepfake", "--version", "9.9"], "ops: model deepfake (version 9.9) is not registered "
                                                     "(Model version: 9.9 does not exist for model: deepfake); "
                                                     "see python -m scripts.ops list"),
    (["scale", "nosuch", "--min", "1"], "ops: model nosuch is not registered (Model not found: nosuch); "
                                        "see python -m scripts.ops list"),
    (["scale", "deepfake", "--min", "2", "--max", "1"], "ops: --max (1) must not be below --min (2)"),
    (["register", "nosuch.mar", "--model-name", "x"], "ops: {store}/nosuch.mar does not exist"),
    (["register", "/elsewhere/deepfake.mar", "--model-name", "x"],
     "ops: /elsewhere/deepfake.mar is not in the server's model store {store}: copy it there first (TorchServe "
     "registers archives from its store only)"),
    (["register", "https://example.com/x.mar", "--model-name", "x"],
     "ops: archive not registered: Given URL https://example.com/x.mar does not match any allowed URL(s). "
     "TorchServe registers archives from its model store only (allowed_urls): copy the .mar there and pass its "
     "file name"),
], ids=["unknown-model", "unknown-version", "scale-unknown", "max-below-min", "missing-archive", "outside-store",
        "url-not-allowed"])
def test_refusals_are_one_line_and_exit_1(ops_server, args, line):
    result = ops_cli(*args, "--run-dir", str(ops_server.config.run_dir))
    expected = line.format(store=ops_server.config.model_store.resolve())
    assert (result.returncode, result.stdout, result.stderr) == (1, "", expected + "\n")


def test_no_server_is_one_line():
    port = _free_port()
    result = ops_cli("list", "--url", f"http://127.0.0.1:{port}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"ops: no TorchServe management API at http://127.0.0.1:{port} "
                                    f"(connection refused)")


def test_help_describes_every_command():
    result = ops_cli("--help")
    assert result.returncode == 0
    for command in ("list", "describe", "scale", "register", "set-default", "unregister"):
        assert command in result.stdout


def test_token_comes_from_flag_then_key_file_then_env_then_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "server.json").write_text(json.dumps({"pid": 1, "ports": {"management": 9999}, "models": {},
                                                     "model_store": str(tmp_path / "store")}))
    (run_dir / "key_file.json").write_text(json.dumps({"management": {"key": "from-run-dir"}}))
    key_file = tmp_path / "keys.json"
    key_file.write_text(json.dumps({"management": {"key": "from-key-file"}, "inference": {"key": "not-this"}}))
    env = {"TS_MANAGEMENT_TOKEN": "from-env"}

    target = resolve_target(None, None, None, run_dir, 10, environ={})
    assert (target.url, target.token, target.model_store) == ("http://127.0.0.1:9999", "from-run-dir",
                                                              tmp_path / "store")
    assert resolve_target(None, None, None, run_dir, 10, environ=env).token == "from-env"
    assert resolve_target(None, None, key_file, run_dir, 10, environ=env).token == "from-key-file"
    assert resolve_target(None, "flag", key_file, run_dir, 10, environ=env).token == "flag"
    assert resolve_target("http://h:1/", None, None, None, 10, environ={}) == Target("http://h:1", None, None, 10)
    with pytest.raises(OpsError, match="no server.json"):
        resolve_target(None, None, None, tmp_path, 10, environ={})
    with pytest.raises(OpsError, match="cannot read the management key"):
        resolve_target(None, None, tmp_path / "missing.json", None, 10, environ={})


def test_explain_names_the_fix_for_each_refusal():
    bad_key = {"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed."}
    assert explain(400, bad_key, Call("list"), sent_token=False).startswith("the management API needs a token: "
                                                                             "--key-file")
    assert "refused the token" in explain(400, bad_key, Call("list"), sent_token=True)
    not_allowed = {"code": 405, "type": "MethodNotAllowedException", "message": "Requested method is not allowed"}
    assert explain(405, not_allowed, Call("register", "deepfake"), sent_token=True).startswith(
        "model registration is disabled on this server (enable_model_api=false")
    assert explain(405, not_allowed, Call("unregister", "deepfake", "1.0"), sent_token=True).startswith(
        "model unregistration is disabled")
    failure = {"code": 500, "type": "InternalServerException", "message": "boom"}
    assert explain(500, failure, Call("scale", "deepfake"), sent_token=False) == (
        "TorchServe failed to scale model deepfake: boom (see logs/ts_log.log in its run dir)")
    wrong_port = {"code": 404, "type": "ResourceNotFoundException", "message": "Requested resource is not found"}
    assert "management port (8081)" in explain(404, wrong_port, Call("list"), sent_token=False)


@pytest.mark.parametrize(("device", "threads", "cores", "workers", "warns"), [
    ("cpu", 2, 2, 1, False), ("cpu", 1, 2, 2, False), ("cpu", 2, 2, 2, True), ("cpu", 1, 4, 5, True),
    ("cuda:0", 8, 2, 4, False),  # GPU workers' CPU threads only feed the GPU
])
def test_oversubscription_warning_only_when_threads_exceed_cores(device, threads, cores, workers, warns):
    info = {"model": {"device": device}, "torch_threads": threads, "cpu_cores": cores}
    warning = oversubscription_warning(info, workers)
    assert (warning is not None) == warns
    if warns:
        assert warning.startswith(f"warning: {workers} CPU workers × {threads} torch threads each need "
                                  f"{workers * threads} cores; the server has {cores}")
    assert oversubscription_warning({"model": {"device": "cpu"}}, 8) is None  # a handler that does not say
