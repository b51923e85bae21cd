"""scripts/serve.py: a real TorchServe it starts serves the built .mar over HTTP; its runtime config rules."""

import base64
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
import requests
import torch

from handler.calibration import Calibration
from handler.forensics import model_input_from_bytes
from handler.metadata import ModelMetadata
from handler.torchscript import load_torchscript
from scripts.reliability.frontend_restart import run_dir_processes
from scripts.serve import (
    CONFIGS,
    RESTART_MARKER,
    CrashLoopGuard,
    Ports,
    RestartPolicy,
    ServeConfig,
    ServeError,
    Supervisor,
    TorchServe,
    _fatal_output_line,
    _tee_lines,
    absolute_log4j_vmargs,
    check_runtime_properties,
    literal_regex,
    model_workers,
    read_keys,
    read_properties,
    runtime_properties,
    security_warnings,
    with_port,
)
from tests.conftest import BATCH_MODEL, BATCH_MODEL_SIZE

e2e = pytest.mark.e2e  # tests that start a server; the rest check the runtime config rules without one
REPO_ROOT = Path(__file__).resolve().parents[2]
DEV_WARNING = ("WARNING (config.properties): token authorization is DISABLED: anyone who can reach these ports can "
               "call every API, including model registration (enable_model_api=true). Development only: use "
               "--config production to deploy.")


def predict(server: TorchServe, data: bytes, model: str = "deepfake", **kwargs) -> requests.Response:
    return requests.post(f"{server.config.inference_url}/predictions/{model}", data=data, timeout=60, **kwargs)


def worker_identities(server: TorchServe, model: str) -> list[tuple]:
    return sorted((w["id"], w["pid"], w["startTime"]) for w in model_workers(server.config, model))


@e2e
def test_ready_means_every_worker_ready_and_isolated_run_dir(torchserve):
    workers = model_workers(torchserve.config, "deepfake")
    assert workers and all(w["status"] == "READY" for w in workers)
    run_dir = torchserve.config.run_dir
    assert (run_dir / "logs" / "model_log.log").is_file()  # logs went to the run dir, not the cwd
    assert any((run_dir / "tmp").iterdir())  # TMPDIR was the per-run folder


@e2e
def test_real_and_fake_files_get_verdicts_equal_to_in_process_scores(torchserve, tiny_dataset, tiny_export):
    metadata = ModelMetadata.load(tiny_export / "metadata.json")
    model = load_torchscript(tiny_export / "model.torchscript.pt", torch.device("cpu"))
    for path in [tiny_dataset / "real" / "real_00001.jpg", tiny_dataset / "fake" / "fake_00001.jpg"]:
        response = predict(torchserve, path.read_bytes())
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) >= {"label", "probability_fake", "confidence", "model", "threshold", "calibrated"}
        assert body["model"]["name"] == "deepfake" and body["model"]["version"] == "1.0"
        with torch.inference_mode():
            logits = model(model_input_from_bytes(path.read_bytes(), metadata.preprocessing)[None])
        # The .mar's calibration.json, applied by the same code training measured it with.
        fake = metadata.fake_index
        calibration = Calibration.load(tiny_export / "calibration.json")
        expected = float(calibration.probabilities(logits.numpy(), fake)[0, fake])
        assert body["probability_fake"] == pytest.approx(expected, abs=1e-5) and body["calibrated"] is True
        assert body["label"] == ("fake" if expected >= metadata.threshold else "real")


@e2e
def test_multipart_and_json_base64_uploads(torchserve, tiny_dataset):
    data = (tiny_dataset / "real" / "real_00002.jpg").read_bytes()
    raw = predict(torchserve, data).json()["probability_fake"]
    multipart = requests.post(f"{torchserve.config.inference_url}/predictions/deepfake",
                              files={"data": ("face.jpg", data, "image/jpeg")}, timeout=60)
    as_json = requests.post(f"{torchserve.config.inference_url}/predictions/deepfake",
                            json={"data": base64.b64encode(data).decode()}, timeout=60)
    assert multipart.status_code == as_json.status_code == 200
    assert multipart.json()["probability_fake"] == as_json.json()["probability_fake"] == raw


@e2e
def test_bad_items_in_a_batch_get_their_own_errors_and_the_rest_succeed(torchserve, tiny_dataset):
    good = [(tiny_dataset / "real" / f"real_{i:05d}.jpg").read_bytes() for i in range(3)]
    truncated = good[0][: len(good[0]) // 3]
    bodies = [good[0], b"not an image at all", good[1], truncated, good[2], b""]
    assert len(bodies) == BATCH_MODEL_SIZE  # the batch fills and runs at once: all six share one forward pass
    before = worker_identities(torchserve, BATCH_MODEL)
    responses: list[requests.Response | None] = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def send(index: int) -> None:
        barrier.wait()
        responses[index] = predict(torchserve, bodies[index], model=BATCH_MODEL)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    statuses = [r.status_code for r in responses]
    assert statuses == [200, 415, 200, 400, 200, 400], [r.text for r in responses]
    assert [r.json()["error"]["code"] for r in responses if r.status_code != 200] == [
        "not_an_image", "corrupt_image", "empty_input"]
    assert {r.json()["timing_ms"]["batch_size"] for r in responses if r.status_code == 200} == {BATCH_MODEL_SIZE}
    assert worker_identities(torchserve, BATCH_MODEL) == before  # no worker died or restarted


@e2e
def test_prometheus_metrics_endpoint_counts_requests(torchserve, tiny_dataset):
    predict(torchserve, (tiny_dataset / "real" / "real_00003.jpg").read_bytes())
    text = requests.get(f"{torchserve.config.metrics_url}/metrics", timeout=10).text
    counts = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("ts_inference_requests_total{") and 'model_name="deepfake"' in line]
    assert counts and sum(counts) >= 1


@e2e
def test_runtime_config_binds_loopback_with_the_chosen_ports(torchserve):
    properties = read_properties(torchserve.config.run_dir / "config.properties")
    ports = torchserve.config.ports
    assert properties["inference_address"] == f"http://127.0.0.1:{ports.inference}"
    assert properties["grpc_inference_port"] == str(ports.grpc_inference)
    assert properties["grpc_inference_address"] == properties["grpc_management_address"] == "127.0.0.1"
    assert properties["metrics_mode"] == "prometheus"
    assert properties["disable_token_authorization"] == "true" and properties["enable_model_api"] == "true"
    store = str(torchserve.config.model_store.resolve())
    assert properties["allowed_urls"] == f"file://{literal_regex(store)}/[A-Za-z0-9_.-]+[.]mar"
    assert Path(properties["metrics_config"]) == REPO_ROOT / "config" / "metrics.yaml"


@e2e
def test_stop_ends_every_process_and_a_taken_port_fails_fast(model_store, tmp_path):
    config = ServeConfig(run_dir=tmp_path / "serve", model_store=model_store, ports=Ports.free())
    server = TorchServe(config).start()
    tree = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
    assert any("java" in p.name() for p in tree) and len(tree) >= 3  # CLI → Java → worker(s)
    with pytest.raises(ServeError, match="already in use"):
        TorchServe(ServeConfig(run_dir=tmp_path / "second", model_store=model_store, ports=config.ports)).start()
    assert server.stop() == len(tree)
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not (config.run_dir / "server.json").exists()


def test_missing_archive_is_reported_before_starting(tmp_path):
    with pytest.raises(ServeError, match="does not exist"):
        TorchServe(ServeConfig(run_dir=tmp_path, model_store=tmp_path, ports=Ports.free())).start()


def test_stale_state_file_never_signals_a_foreign_process(tmp_path):
    # A server.json left behind by a crash, whose pid now belongs to another program (here: pytest itself).
    (tmp_path / "server.json").write_text(json.dumps({"pid": os.getpid(), "ports": {}, "models": {}}))
    server = TorchServe(ServeConfig(run_dir=tmp_path))
    assert not server.is_running()
    assert server.stop() == 0
    assert psutil.pid_exists(os.getpid())
    assert not (tmp_path / "server.json").exists()


@e2e
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_foreground_cli_stops_the_whole_tree_on_sigterm_and_ctrl_c(model_store, tmp_path, signum):
    run_dir = tmp_path / "serve"
    command = [sys.executable, "-m", "scripts.serve", "start", "--foreground", "--free-ports",
               "--run-dir", str(run_dir), "--model-store", str(model_store)]
    cli = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    tree: list[psutil.Process] = []
    try:
        first_line = cli.stdout.readline()  # printed once every worker is READY
        assert first_line.startswith("TorchServe ready"), first_line + cli.stdout.read() + cli.stderr.read()
        server_pid = json.loads((run_dir / "server.json").read_text())["pid"]
        tree = [psutil.Process(server_pid), *psutil.Process(server_pid).children(recursive=True)]
        cli.send_signal(signum)
        output, errors = cli.communicate(timeout=60)
        alive_after = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        for process in [cli, *tree]:  # a failing run must not leave a server behind for the next test
            try:
                process.kill()
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass
    assert cli.returncode == 0, output
    assert f"stopped TorchServe ({len(tree)} processes ended)" in output
    assert errors == DEV_WARNING + "\n"  # printed before start-up: the dev config says what it is
    assert alive_after == []


def serve_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.serve", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, check=False)


@e2e
def test_status_reports_config_listeners_models_and_workers(torchserve):
    status = serve_cli("status", "--run-dir", str(torchserve.config.run_dir))
    assert status.returncode == 0, status.stdout + status.stderr
    lines = status.stdout.splitlines()
    ports = torchserve.config.ports
    assert lines[0] == f"running: True, ready: True (pid {torchserve.pid})"
    assert lines[1] == f"config: {CONFIGS['dev']} (as run: {torchserve.config.run_dir / 'config.properties'})"
    assert lines[2] == "token authorization: OFF; model API: on"
    assert lines[3].startswith(f"listeners: inference http://127.0.0.1:{ports.inference}, management "
                               f"http://127.0.0.1:{ports.management}, metrics http://127.0.0.1:{ports.metrics}")
    assert "model deepfake 1.0 (default): 1 worker(s): 1 READY" in lines
    assert any(line.startswith(f"model {BATCH_MODEL} 1.0 (default): ") for line in lines)


def test_status_of_an_empty_run_dir_says_so_and_exits_1(tmp_path):
    status = serve_cli("status", "--run-dir", str(tmp_path))
    assert (status.returncode, status.stdout) == (1, f"running: False, ready: False\nno TorchServe running from "
                                                     f"{tmp_path}\n")
    token = serve_cli("token", "--run-dir", str(tmp_path))
    assert token.returncode == 1 and token.stderr.startswith(f"serve: no key_file.json in {tmp_path}")


def test_production_config_keeps_listener_hosts_and_takes_ports_and_absolute_paths(tmp_path):
    ports = Ports(1001, 1002, 1003, 1004, 1005)
    values = runtime_properties(ServeConfig(run_dir=tmp_path, model_store=tmp_path / "my.store",
                                            properties=CONFIGS["production"], ports=ports))
    assert values["inference_address"] == "http://0.0.0.0:1001"
    assert (values["management_address"], values["metrics_address"]) == ("http://127.0.0.1:1002", "http://127.0.0.1:1003")
    assert (values["grpc_inference_address"], values["grpc_inference_port"]) == ("0.0.0.0", "1004")
    assert (values["grpc_management_address"], values["grpc_management_port"]) == ("127.0.0.1", "1005")
    assert values["allowed_urls"] == f"file://{tmp_path}/my[.]store/[A-Za-z0-9_.-]+[.]mar"
    assert f"-Dlog4j.configurationFile={REPO_ROOT / 'config' / 'log4j2-production.xml'}" in values["vmargs"].split()
    check_runtime_properties(values, CONFIGS["production"])  # every file it names exists
    assert security_warnings(values) == []


@pytest.mark.parametrize(("address", "expected"), [
    ("http://0.0.0.0:8080", "http://0.0.0.0:9"), ("https://127.0.0.1", "https://127.0.0.1:9"),
    ("http://[::]:8080/", "http://[::]:9"), ("http://my-host.internal:1", "http://my-host.internal:9"),
])
def test_with_port_keeps_scheme_and_host(address, expected):
    assert with_port(address, 9) == expected


def test_with_port_refuses_what_is_not_an_address():
    with pytest.raises(ServeError, match="not of the form"):
        with_port("0.0.0.0:8080", 9)


def test_literal_regex_matches_the_path_and_nothing_else():
    path = "/srv/models (v1.2)+x$/store"
    pattern = re.compile(literal_regex(path))
    assert pattern.fullmatch(path) and "\\" not in literal_regex(path)
    assert not pattern.fullmatch("/srv/models (v1x2)+x$/store") and not pattern.fullmatch("/srv/modelss (v1.2)x/store")
    with pytest.raises(ServeError, match="plain path"):
        literal_regex("/srv/[weird]")


def test_log4j_path_in_vmargs_is_made_absolute_and_must_exist(tmp_path):
    vmargs = "-Xmx1g -Dlog4j.configurationFile=log4j2.xml -Dfoo=bar"
    absolute = absolute_log4j_vmargs(vmargs, tmp_path)
    assert absolute == f"-Xmx1g -Dlog4j.configurationFile={tmp_path}/log4j2.xml -Dfoo=bar"
    uri = "-Dlog4j.configurationFile=file:///x.xml"
    assert absolute_log4j_vmargs(uri, tmp_path) == uri
    with pytest.raises(ServeError, match="log4j.configurationFile names .*log4j2.xml, which does not exist"):
        check_runtime_properties({"vmargs": absolute}, tmp_path / "x.properties")
    with pytest.raises(ServeError, match="backslash"):
        check_runtime_properties({"allowed_urls": "file://a\\.mar"}, tmp_path / "x.properties")


def test_dev_config_warns_and_louder_when_exposed():
    dev = {"disable_token_authorization": "true", "enable_model_api": "true",
           "inference_address": "http://127.0.0.1:1", "management_address": "http://127.0.0.1:2",
           "metrics_address": "http://127.0.0.1:3", "grpc_inference_address": "127.0.0.1",
           "grpc_management_address": "127.0.0.1"}
    [warning] = security_warnings(dev)
    assert warning.startswith("token authorization is DISABLED") and "model registration" in warning
    exposed = security_warnings({**dev, "management_address": "http://0.0.0.0:2", "grpc_inference_address": "::"})
    assert exposed[1] == ("and management_address, grpc_inference_address listen beyond this machine: other hosts "
                          "can call them without a token")
    assert security_warnings({**dev, "disable_token_authorization": "false"}) == []
    assert security_warnings({**dev, "metrics_address": "http://0.0.0.0:3"}) == [warning]  # metrics has no token


def test_a_loopback_only_config_without_model_api_behind_a_proxy_gets_a_note_not_the_development_warning():
    pod = read_properties(REPO_ROOT / "config" / "kubernetes.properties")  # metrics on 0.0.0.0 for Prometheus
    [note] = security_warnings(pod)
    assert "loopback only" in note and "sidecar.conf.template" in note and "Development only" not in note
    [warning, exposed] = security_warnings({**pod, "inference_address": "http://0.0.0.0:8080"})
    assert "Development only" in warning and exposed.startswith("and inference_address listen beyond")


# --- supervision: a foreground server whose Java frontend dies is restarted --------------------------------------


class OutputLines:
    """A subprocess's output read on a thread, so a test waits for a line with a timeout instead of hanging."""

    def __init__(self, stream) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.reader.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def next(self, timeout: float = 180) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output line within {timeout} s; so far: {self.seen}") from None
        self.seen.append(line)
        return line

    def rest(self) -> list[str]:
        """The lines not read yet, once the process has closed its output."""
        self.reader.join(timeout=60)
        return [self.lines.get() for _ in range(self.lines.qsize())]


def start_supervised(run_dir: Path, model_store: Path, *options: str) -> tuple[subprocess.Popen, OutputLines]:
    command = [sys.executable, "-m", "scripts.serve", "start", "--foreground", "--free-ports", "--run-dir",
               str(run_dir), "--model-store", str(model_store), *options]
    cli = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    return cli, OutputLines(cli.stdout)


def end_all(cli: subprocess.Popen, run_dir: Path) -> None:
    """After a test, pass or fail: nothing of it may outlive it."""
    for process in [cli, *run_dir_processes(run_dir)]:
        try:
            process.kill()
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass


def test_restart_policy_backs_off_exponentially_and_the_guard_gives_up_within_its_window():
    policy = RestartPolicy(max_restarts=3, window_seconds=10, backoff_seconds=1, max_backoff_seconds=3)
    guard = CrashLoopGuard(policy)
    assert [guard.record_failure(t) for t in (100.0, 101.0, 102.0)] == [0.0, 1.0, 2.0]  # the first is immediate
    assert guard.record_failure(103.0) is None  # a 4th failure within 10 s: give up
    calm = CrashLoopGuard(policy)
    assert [calm.record_failure(t) for t in (100.0, 101.0, 102.0)] == [0.0, 1.0, 2.0]
    assert calm.record_failure(112.5) == 0.0 and calm.recent == 1  # the three earlier ones left the window
    assert RestartPolicy(max_restarts=9, backoff_seconds=1, max_backoff_seconds=3).delay(6) == 3.0
    with pytest.raises(ValueError, match="restart mode 'always'"):
        RestartPolicy(mode="always")


def test_supervisor_stops_instead_of_restarting_under_never_and_when_the_budget_is_spent(tmp_path):
    announced = []
    never = TorchServe(ServeConfig(run_dir=tmp_path, restart=RestartPolicy(mode="never")))
    with pytest.raises(ServeError, match=r"frontend died \(Java exited\); not restarted \(--restart never\)"):
        Supervisor(never, lambda server, supervisor: announced.append(server), log=announced.append).restart(
            "Java exited")
    assert announced == ["TorchServe frontend died: Java exited. Restart policy never: stopping"]
    spent = TorchServe(ServeConfig(run_dir=tmp_path, restart=RestartPolicy(max_restarts=0)))
    with pytest.raises(ServeError, match=r"giving up after 1 failures within 300 s \(more than --max-restarts 0\)"):
        Supervisor(spent, lambda server, supervisor: None, log=lambda line: None).restart("Java exited")


def test_restart_options_need_the_foreground():
    refused = serve_cli("start", "--restart", "never")
    assert refused.returncode == 2 and "--max-restarts, --restart-window and --restart-backoff need --foreground" in (
        refused.stderr)


def test_log_stdout_needs_the_foreground():
    refused = serve_cli("start", "--log-stdout")
    assert refused.returncode == 2 and "--log-stdout needs --foreground" in refused.stderr


def test_echoed_output_reaches_stdout_and_the_out_file_whole_and_in_order(tmp_path, capfd):
    out_file = tmp_path / "torchserve.out"
    out_file.write_bytes(b"previous run\n")
    lines = [f"line {index} \u00e9\n".encode() for index in range(2000)]  # more than one pipe buffer (64 KiB)
    read_end, write_end = os.pipe()
    copier = threading.Thread(target=_tee_lines, args=(os.fdopen(read_end, "rb"), out_file))
    copier.start()
    with os.fdopen(write_end, "wb") as writer:
        writer.writelines(lines)
    copier.join(timeout=30)
    assert not copier.is_alive()  # ends at end of file, as when TorchServe exits
    assert capfd.readouterr().out.encode() == b"".join(lines)
    assert out_file.read_bytes() == b"previous run\n" + b"".join(lines)  # appended: a restart keeps the old output


def test_the_reason_names_what_the_jvm_printed_since_the_last_start(tmp_path):
    (tmp_path / "torchserve.out").write_text(
        "Warning: TorchServe is using non-default JVM parameters: -Xmx1g -XX:+ExitOnOutOfMemoryError\n"
        "Terminating due to java.lang.OutOfMemoryError: Java heap space\n")
    assert _fatal_output_line(tmp_path) == "Terminating due to java.lang.OutOfMemoryError: Java heap space"
    with (tmp_path / "torchserve.out").open("a") as output:
        output.write(f"{RESTART_MARKER} 1 at now: ... ---\nWarning: ... -XX:+ExitOnOutOfMemoryError\n")
    assert _fatal_output_line(tmp_path) is None  # the OOM was the previous frontend's


@e2e
def test_killed_java_is_restarted_status_follows_and_stop_during_a_restart_ends_everything(model_store, tmp_path,
                                                                                             tiny_dataset):
    run_dir = tmp_path / "serve"
    cli, output = start_supervised(run_dir, model_store, "--config", "production")
    try:
        assert output.next().startswith("TorchServe ready in "), output.seen
        assert output.next().startswith("token authorization on: keys in ")
        state = json.loads((run_dir / "server.json").read_text())
        assert state["supervisor"]["pid"] == cli.pid and state["supervisor"]["state"] == "running"
        old_tree = run_dir_processes(run_dir)
        java = psutil.Process(state["frontend_pid"])
        assert java.name() == "java" and java in old_tree and len(old_tree) == 3  # CLI, Java, one worker
        old_key = read_keys(run_dir)["inference"]["key"]

        java.send_signal(signal.SIGKILL)
        died = output.next()
        assert died.startswith(f"TorchServe frontend died: the Java frontend (pid {java.pid}) exited"), died
        assert died.endswith("Restart 1 in 0.0 s (failure 1 of at most 5 within 300 s)")
        during = serve_cli("status", "--run-dir", str(run_dir))  # the new server loads its model for seconds
        assert during.returncode == 1, during.stdout
        assert re.fullmatch(r"running: (True|False), ready: False( \(pid \d+\))?; restarting",
                            during.stdout.splitlines()[0]), during.stdout
        assert f"supervisor: pid {cli.pid}, restarting; 1 restart(s), the last at " in during.stdout
        second = serve_cli("start", "--run-dir", str(run_dir), "--model-store", str(model_store), "--free-ports")
        assert second.returncode == 1 and "stop it first" in second.stderr, second.stderr  # no second server

        restarted = output.next()
        assert restarted.startswith("TorchServe restarted: ready in ") and "(restart 1, pid " in restarted
        assert "processes of the old tree ended" in restarted and "same ports and config" in restarted
        assert output.next().startswith("token authorization on: the keys CHANGED")
        after = serve_cli("status", "--run-dir", str(run_dir))
        assert after.returncode == 0, after.stdout
        new_state = json.loads((run_dir / "server.json").read_text())
        lines = after.stdout.splitlines()
        assert lines[0] == f"running: True, ready: True (pid {new_state['pid']})"
        assert lines[1].startswith(f"supervisor: pid {cli.pid}, running; 1 restart(s), the last at ")
        assert f"after: the Java frontend (pid {java.pid}) exited" in lines[1]
        assert any(line.startswith("token keys: NEW since the restart at ") for line in lines)
        assert not [p for p in old_tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # orphans too
        assert new_state["ports"] == state["ports"] and new_state["frontend_pid"] != java.pid
        new_key = read_keys(run_dir)["inference"]["key"]
        image = (tiny_dataset / "real" / "real_00004.jpg").read_bytes()
        url = f"http://127.0.0.1:{state['ports']['inference']}/predictions/deepfake"
        assert new_key != old_key  # TorchServe 0.12 cannot keep keys over a restart
        assert requests.post(url, data=image, headers={"Authorization": f"Bearer {old_key}"}, timeout=60
                             ).status_code == 400
        assert requests.post(url, data=image, headers={"Authorization": f"Bearer {new_key}"}, timeout=60
                             ).status_code == 200

        second_tree = run_dir_processes(run_dir)
        psutil.Process(new_state["frontend_pid"]).send_signal(signal.SIGKILL)
        assert output.next().endswith("Restart 2 in 1.0 s (failure 2 of at most 5 within 300 s)")  # backs off
        stop = serve_cli("stop", "--run-dir", str(run_dir))  # SIGTERM to the supervisor in the middle of restart 2
        assert stop.returncode == 0 and stop.stdout.startswith(f"stopped the supervisor (pid {cli.pid}) and "), stop
        cli.wait(timeout=120)  # not communicate(): OutputLines reads stdout
        errors = cli.stderr.read()
    finally:
        end_all(cli, run_dir)
    rest = output.rest()
    assert cli.returncode == 0, errors
    assert rest[0] == "SIGTERM: stopping TorchServe", rest  # before restart 2 was ready: no "restarted" line
    assert rest[-1].startswith("stopped TorchServe (") and len(rest) == 2
    assert errors == ""
    assert not [p for p in second_tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert run_dir_processes(run_dir) == [] and not (run_dir / "server.json").exists()


@e2e
def test_crash_loop_guard_gives_up_with_a_clear_message_and_leaves_nothing(model_store, tmp_path):
    store = tmp_path / "store"  # a store of its own: its archive disappears while the server runs
    store.mkdir()
    shutil.copy(model_store / "deepfake.mar", store / "deepfake.mar")
    run_dir = tmp_path / "serve"
    cli, output = start_supervised(run_dir, store, "--max-restarts", "2", "--restart-backoff", "0.1")
    try:
        assert output.next().startswith("TorchServe ready in "), output.seen
        java = psutil.Process(json.loads((run_dir / "server.json").read_text())["frontend_pid"])
        (store / "deepfake.mar").unlink()
        java.send_signal(signal.SIGKILL)
        cli.wait(timeout=120)  # not communicate(): OutputLines reads stdout
        errors = cli.stderr.read()
    finally:
        end_all(cli, run_dir)
    lines = [*output.seen, *output.rest()]
    missing = f"{store / 'deepfake.mar'} does not exist; build it with python -m scripts.package_model"
    assert lines[1].endswith("Restart 1 in 0.0 s (failure 1 of at most 2 within 300 s)")
    assert lines[2].startswith(f"TorchServe restart 1 failed: {missing}") and lines[2].endswith(
        "Restart 2 in 0.1 s (failure 2 of at most 2 within 300 s)")
    assert lines[3].startswith(f"TorchServe restart 2 failed: {missing}")
    assert lines[3].endswith("Giving up: 3 failures within 300 s")
    assert cli.returncode == 1
    assert errors == DEV_WARNING + "\n" + (f"serve: giving up after 3 failures within 300 s (more than --max-restarts "
                                           f"2); the last: restart 2 failed: {missing} (model 'deepfake')\n")
    assert run_dir_processes(run_dir) == [] and not (run_dir / "server.json").exists()
