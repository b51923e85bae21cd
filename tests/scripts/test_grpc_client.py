"""scripts/grpc_client.py against real TorchServes: the shared dev server and one with token authorization on."""

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests

from scripts.grpc_client import (
    AuthorizationError,
    GrpcClientError,
    GrpcTarget,
    ModelNotFoundError,
    PredictionError,
    ServerError,
    ServerUnavailableError,
    TorchServeGrpc,
    call_error,
    prediction_from_answer,
    read_key_file,
    resolve_tokens,
)
from scripts.serve import Ports, ServeConfig, TorchServe, model_workers
from tests.conftest import BATCH_MODEL

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "config"
e2e = pytest.mark.e2e
# Fields that differ between two answers for the same image: how long it took, which request it was.
PER_REQUEST_FIELDS = ("timing_ms", "request_id")


def target_of(server: TorchServe, **tokens: str | None) -> GrpcTarget:
    ports = server.config.ports
    return GrpcTarget(inference_port=ports.grpc_inference, management_port=ports.grpc_management, timeout=60,
                      **tokens)


def rest_predict(server: TorchServe, data: bytes, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(f"{server.config.inference_url}/predictions/deepfake", data=data, headers=headers,
                         timeout=60)


def without_per_request_fields(answer: dict) -> dict:
    return {key: value for key, value in answer.items() if key not in PER_REQUEST_FIELDS}


def worker_identities(server: TorchServe, model: str = "deepfake") -> list[tuple]:
    return sorted((w["id"], w["pid"], w["startTime"]) for w in model_workers(server.config, model))


def run_cli(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("TS_INFERENCE_TOKEN", "TS_MANAGEMENT_TOKEN")}
    return subprocess.run([sys.executable, "-m", "scripts.grpc_client", *arguments], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, env={**clean, **(env or {})})


def port_options(server: TorchServe) -> list[str]:
    ports = server.config.ports
    return ["--inference-port", str(ports.grpc_inference), "--management-port", str(ports.grpc_management)]


@pytest.fixture
def client(torchserve: TorchServe) -> Iterator[TorchServeGrpc]:
    with TorchServeGrpc(target_of(torchserve)) as opened:
        yield opened


# --- against the shared dev server (token authorization off) -------------------------------------------------------

@e2e
@pytest.mark.parametrize("image", ["real/real_00000.jpg", "fake/fake_00000.jpg", "real/real_00007.jpg",
                                   "fake/fake_00011.jpg"])
def test_grpc_predictions_equal_rest_predictions(torchserve, client, tiny_dataset, image):
    data = (tiny_dataset / image).read_bytes()
    over_grpc = client.predict("deepfake", data)
    over_rest = rest_predict(torchserve, data)
    assert over_rest.status_code == 200, over_rest.text
    rest = over_rest.json()
    assert over_grpc["probability_fake"] == rest["probability_fake"]
    assert over_grpc["label"] == rest["label"] and over_grpc["label"] in ("real", "fake")
    assert over_grpc["model"]["version"] == rest["model"]["version"] and rest["model"]["version"]
    assert without_per_request_fields(over_grpc) == without_per_request_fields(rest)
    pinned = client.predict("deepfake", data, version=rest["model"]["version"])
    assert without_per_request_fields(pinned) == without_per_request_fields(rest)


@e2e
def test_uncalibrated_flag_matches_the_rest_request_option(torchserve, client, tiny_dataset):
    data = (tiny_dataset / "fake" / "fake_00002.jpg").read_bytes()
    over_grpc = client.predict("deepfake", data, uncalibrated=True)  # input["uncalibrated"] = b"true"
    # /predictions/NAME hands the worker no query parameters; over REST the option travels as a header.
    rest = rest_predict(torchserve, data, headers={"X-Uncalibrated": "true"})
    assert rest.status_code == 200, rest.text
    assert without_per_request_fields(over_grpc) == without_per_request_fields(rest.json())
    assert "uncalibrated" in over_grpc and "uncalibrated" not in client.predict("deepfake", data)


@e2e
def test_corrupt_image_gives_the_handler_error_and_the_worker_survives(torchserve, client, tiny_dataset):
    good = (tiny_dataset / "real" / "real_00003.jpg").read_bytes()
    before = worker_identities(torchserve)
    rest = rest_predict(torchserve, good[: len(good) // 3])
    # TorchServe drops the handler's per-item status over gRPC: the call is OK and carries the error JSON,
    # which the client raises with the status the handler chose (REST's HTTP status).
    with pytest.raises(PredictionError) as truncated:
        client.predict("deepfake", good[: len(good) // 3])
    assert truncated.value.status == rest.status_code == 400
    grpc_error, rest_error = truncated.value.body["error"], rest.json()["error"]
    # The same error, except where the image was: a raw REST body is "body", the gRPC input map's key is "data".
    assert (grpc_error.pop("field"), rest_error.pop("field")) == ("data", "body")
    assert grpc_error == rest_error
    assert truncated.value.body["error"]["code"] == "corrupt_image"
    assert str(truncated.value).startswith("HTTP 400 corrupt_image: ")
    assert truncated.value.code is None  # not a gRPC error status: the call itself succeeded
    with pytest.raises(PredictionError) as not_image:
        client.predict("deepfake", b"not an image at all")
    assert not_image.value.status == 415 and not_image.value.body["error"]["code"] == "not_an_image"
    assert client.predict("deepfake", good)["label"] in ("real", "fake")  # the next request works
    assert worker_identities(torchserve) == before  # on the same worker: none died or restarted


@e2e
def test_ping_describe_and_list(torchserve, client):
    assert client.ping() == "Healthy"
    [description] = client.describe("deepfake")
    [over_rest] = requests.get(f"{torchserve.config.management_url}/models/deepfake", timeout=10).json()
    stable = ("modelName", "modelVersion", "modelUrl", "minWorkers", "maxWorkers", "batchSize", "maxBatchDelay")
    assert {k: description[k] for k in stable} == {k: over_rest[k] for k in stable}
    assert description["modelName"] == "deepfake"
    workers = description["workers"]
    assert workers and all(worker["status"] == "READY" for worker in workers)
    assert sorted((w["id"], w["pid"]) for w in workers) == sorted((w["id"], w["pid"]) for w in over_rest["workers"])
    assert "1.0" in [d["modelVersion"] for d in client.describe("deepfake", version="all")]
    listed = {model["modelName"]: model["modelUrl"] for model in client.list_models()["models"]}
    # Other tests of the session may register more models on this shared server: these two must be there.
    assert listed.items() >= {("deepfake", "deepfake.mar"), (BATCH_MODEL, f"{BATCH_MODEL}.mar")}
    assert len(client.list_models(limit=1)["models"]) == 1


@e2e
def test_unknown_model_unknown_version_and_unreachable_server_raise_clear_errors(client, tiny_dataset):
    data = (tiny_dataset / "real" / "real_00001.jpg").read_bytes()
    with pytest.raises(ModelNotFoundError, match="model 'nosuch' is not registered") as inference:
        client.predict("nosuch", data)
    assert inference.value.code == grpc.StatusCode.INTERNAL  # not NOT_FOUND: how TorchServe 0.12 answers
    with pytest.raises(ModelNotFoundError, match="model 'nosuch' is not registered") as management:
        client.describe("nosuch")
    assert management.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ModelNotFoundError, match="model 'deepfake' has no version '9.9'"):
        client.predict("deepfake", data, version="9.9")
    with pytest.raises(ModelNotFoundError, match="model 'nosuch' is not registered"):
        client.scale("nosuch", 1)
    nothing_there = Ports.free()  # free a moment ago: nothing listens there
    with TorchServeGrpc(GrpcTarget(inference_port=nothing_there.grpc_inference,
                                   management_port=nothing_there.grpc_management, timeout=5)) as offline:
        started = time.monotonic()
        with pytest.raises(ServerUnavailableError,
                           match=f"cannot reach TorchServe gRPC at 127.0.0.1:{nothing_there.grpc_inference}"):
            offline.ping()
        with pytest.raises(ServerUnavailableError,
                           match=f"cannot reach TorchServe gRPC at 127.0.0.1:{nothing_there.grpc_management}"):
            offline.list_models()
        assert time.monotonic() - started < 5  # refused at once, not after the timeout


def wait_for_workers(client: TorchServeGrpc, model: str, count: int, deadline_s: float = 120.0) -> list[dict]:
    """Polls DescribeModel until the model has `count` workers, all READY."""
    deadline = time.monotonic() + deadline_s
    workers: list[dict] = []
    while time.monotonic() < deadline:
        workers = client.describe(model)[0]["workers"]
        if len(workers) == count and all(worker["status"] == "READY" for worker in workers):
            return workers
        time.sleep(0.2)  # polling interval of the condition, not a stand-in for it
    raise AssertionError(f"{model} did not reach {count} READY workers in {deadline_s:.0f} s: {workers}")


@e2e
def test_scale_worker_up_to_two_and_back_to_one(client):
    assert len(client.describe(BATCH_MODEL)[0]["workers"]) == 1
    try:
        assert client.scale(BATCH_MODEL, 2, 2) == f"Workers scaled to 2 for model: {BATCH_MODEL}"
        assert len(wait_for_workers(client, BATCH_MODEL, 2)) == 2
        [description] = client.describe(BATCH_MODEL)
        assert description["minWorkers"] == description["maxWorkers"] == 2
        client.scale(BATCH_MODEL, 1, 1)
        assert len(wait_for_workers(client, BATCH_MODEL, 1)) == 1
    finally:  # the server is shared by the whole session: leave the model as it was whatever happened
        client.scale(BATCH_MODEL, 1, 1)
        wait_for_workers(client, BATCH_MODEL, 1)
    [description] = client.describe(BATCH_MODEL)
    assert description["minWorkers"] == description["maxWorkers"] == 1
    with pytest.raises(ValueError, match="at least 1"):
        client.scale(BATCH_MODEL, 0)  # gRPC reads 0 as unset and would scale to 1: refused before sending


# --- the command line ----------------------------------------------------------------------------------------------

@e2e
def test_cli_predict_ping_describe_list(torchserve, client, tiny_dataset):
    image = tiny_dataset / "fake" / "fake_00004.jpg"
    predicted = run_cli("predict", str(image), *port_options(torchserve))
    assert predicted.returncode == 0, predicted.stderr
    header, _, body = predicted.stdout.partition("\n")
    assert header == f"{image} → OK"
    assert json.loads(body)["probability_fake"] == client.predict("deepfake", image.read_bytes())["probability_fake"]
    pinged = run_cli("ping", *port_options(torchserve))
    assert (pinged.returncode, pinged.stdout) == (0, "Healthy\n")
    described = run_cli("describe", "deepfake", *port_options(torchserve))
    assert described.returncode == 0 and json.loads(described.stdout)[0]["modelName"] == "deepfake"
    listed = run_cli("list", *port_options(torchserve))
    assert {m["modelName"] for m in json.loads(listed.stdout)["models"]} >= {"deepfake", BATCH_MODEL}


@e2e
def test_cli_reports_each_failed_file_and_exits_1(torchserve, tiny_dataset, tmp_path):
    good = tiny_dataset / "real" / "real_00005.jpg"
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:1500])
    result = run_cli("predict", str(truncated), str(good), *port_options(torchserve))
    assert result.returncode == 1
    assert f"{truncated} → HTTP 400 corrupt_image: the image could not be decoded" in result.stdout
    assert f"{good} → OK" in result.stdout  # the file after the failed one was still scored
    assert '"code": "corrupt_image"' in result.stdout  # the handler's JSON body is printed
    assert result.stderr == "grpc_client: 1 of 2 file(s) failed\n"


@e2e
@pytest.mark.parametrize(("arguments", "message"), [
    (["predict", "{image}", "--model", "nosuch"], "grpc_client: model 'nosuch' is not registered on TorchServe at "),
    (["describe", "nosuch"], "grpc_client: model 'nosuch' is not registered on TorchServe at "),
    (["predict", "{missing}"], "grpc_client: no such file: "),
    (["scale", "deepfake", "--min", "2", "--max", "1"], "grpc_client: max workers (1) must not be below min workers"),
])
def test_cli_errors_are_one_line_exit_1(torchserve, tiny_dataset, tmp_path, arguments, message):
    filled = [a.format(image=tiny_dataset / "real" / "real_00000.jpg", missing=tmp_path / "nope.jpg")
              for a in arguments]
    result = run_cli(*filled, *port_options(torchserve))
    assert result.returncode == 1
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_cli_unreachable_server_and_help(tmp_path):
    free = Ports.free()
    result = run_cli("ping", "--inference-port", str(free.grpc_inference), "--timeout", "5")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(f"grpc_client: cannot reach TorchServe gRPC at 127.0.0.1:{free.grpc_inference} ")
    assert result.stderr.count("\n") == 1
    for command in ([], ["predict"], ["scale"]):
        shown = run_cli(*command, "--help")
        assert shown.returncode == 0 and "usage: python -m scripts.grpc_client" in shown.stdout


@e2e
def test_grpc_and_rest_latency_p50(torchserve, client, tiny_dataset):
    """Reports (prints) p50 client latency of 50 sequential predictions per API; asserts only that they agree.

    The two APIs alternate request by request, so a neighbour's load on this shared machine weighs on both alike.
    """
    data = (tiny_dataset / "real" / "real_00006.jpg").read_bytes()
    url = f"{torchserve.config.inference_url}/predictions/deepfake"
    seconds: dict[str, list[float]] = {"gRPC": [], "REST": []}
    answers: dict[str, list[dict]] = {"gRPC": [], "REST": []}
    with requests.Session() as session:
        client.predict("deepfake", data)  # one of each first: connection set-up is not what is measured
        session.post(url, data=data, timeout=60)
        for _ in range(50):
            started = time.perf_counter()
            answers["gRPC"].append(client.predict("deepfake", data))
            seconds["gRPC"].append(time.perf_counter() - started)
            started = time.perf_counter()
            response = session.post(url, data=data, timeout=60)
            seconds["REST"].append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
            answers["REST"].append(response.json())
    assert {a["probability_fake"] for a in answers["gRPC"]} == {a["probability_fake"] for a in answers["REST"]}
    assert len({a["probability_fake"] for a in answers["gRPC"]}) == 1
    handler_ms = {api: statistics.median(a["timing_ms"]["preprocess"] + a["timing_ms"]["inference"] for a in items)
                  for api, items in answers.items()}
    report = [f"{api} {statistics.median(values) * 1000:.1f} ms (handler preprocess+inference {handler_ms[api]:.1f} ms)"
              for api, values in seconds.items()]
    print(f"\np50 of 50 sequential predictions of a {len(data)} B image: {'; '.join(report)}")


# --- with token authorization on --------------------------------------------------------------------------------

def token_auth_properties(folder: Path) -> Path:
    """config/config.properties with token authorization on; files it names next to itself made absolute."""
    lines = []
    for line in (CONFIG_DIR / "config.properties").read_text().splitlines():
        key, separator, value = line.partition("=")
        if separator and not line.lstrip().startswith(("#", "!")):
            if key.strip() == "disable_token_authorization":
                line = "disable_token_authorization=false"
            elif value.strip() and (CONFIG_DIR / value.strip()).is_file():  # e.g. metrics_config=metrics.yaml
                line = f"{key}={CONFIG_DIR / value.strip()}"
        lines.append(line)
    assert "disable_token_authorization=false" in lines
    path = folder / "token-auth.properties"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def token_server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    run_dir = tmp_path_factory.mktemp("serve_token_auth")
    config = ServeConfig(run_dir=run_dir, model_store=model_store, ports=Ports.free(),
                         properties=token_auth_properties(tmp_path_factory.mktemp("token_properties")),
                         models={"deepfake": "deepfake.mar"})
    server = TorchServe(config).start()
    yield server
    server.stop()


@e2e
def test_token_auth_refuses_calls_without_the_key_and_accepts_key_file(token_server, tiny_dataset):
    data = (tiny_dataset / "real" / "real_00002.jpg").read_bytes()
    key_file = token_server.config.run_dir / "key_file.json"
    with TorchServeGrpc(target_of(token_server)) as anonymous:
        for call in (anonymous.ping, lambda: anonymous.predict("deepfake", data)):
            with pytest.raises(AuthorizationError, match="token authorization is on and no token was sent; "
                                                         "pass the inference key") as refused:
                call()
            assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED  # what 0.12 answers, not UNAUTHENTICATED
        for call in (lambda: anonymous.describe("deepfake"), anonymous.list_models, lambda: anonymous.scale("x", 1)):
            with pytest.raises(AuthorizationError, match="no token was sent; pass the management key"):
                call()
    inference_key, management_key = read_key_file(key_file)
    swapped = target_of(token_server, inference_token=management_key, management_token=inference_key)
    with TorchServeGrpc(swapped) as wrong_keys:  # each API accepts only its own key
        with pytest.raises(AuthorizationError, match="the token sent is not the current inference key"):
            wrong_keys.ping()
        with pytest.raises(AuthorizationError, match="the token sent is not the current management key"):
            wrong_keys.describe("deepfake")
    with TorchServeGrpc(target_of(token_server, inference_token=inference_key,
                                  management_token=management_key)) as authorized:
        assert authorized.ping() == "Healthy"
        assert authorized.predict("deepfake", data)["label"] in ("real", "fake")
        assert authorized.describe("deepfake")[0]["workers"]
        assert [m["modelName"] for m in authorized.list_models()["models"]] == ["deepfake"]


@e2e
def test_token_auth_from_the_command_line(token_server):
    key_file = token_server.config.run_dir / "key_file.json"
    refused = run_cli("describe", "deepfake", *port_options(token_server))
    assert refused.returncode == 1 and refused.stdout == "" and refused.stderr.count("\n") == 1
    assert "no token was sent; pass the management key of key_file.json with --key-file" in refused.stderr
    with_file = run_cli("ping", "--key-file", str(key_file), *port_options(token_server))
    assert (with_file.returncode, with_file.stdout) == (0, "Healthy\n")
    inference_key, management_key = read_key_file(key_file)
    from_env = run_cli("describe", "deepfake", *port_options(token_server),
                       env={"TS_MANAGEMENT_TOKEN": management_key})
    assert from_env.returncode == 0 and json.loads(from_env.stdout)[0]["modelName"] == "deepfake"
    with_token = run_cli("ping", "--token", inference_key, *port_options(token_server))
    assert with_token.returncode == 0


# --- pure translation of answers (no server) ----------------------------------------------------------------------

def test_prediction_answers_with_error_bodies_or_statuses_raise():
    ok = {"label": "real", "probability_fake": 0.1}
    assert prediction_from_answer(json.dumps(ok).encode()) == ok
    body = {"error": {"code": "image_too_large", "message": "too many pixels", "status": 413}}
    with pytest.raises(PredictionError, match="HTTP 413 image_too_large: too many pixels") as item:
        prediction_from_answer(json.dumps(body).encode())
    assert item.value.body == body
    with pytest.raises(PredictionError) as streamed:  # StreamPredictions2 fills PredictionResponse.status
        prediction_from_answer(b"", grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "queue full")
    assert streamed.value.status == 413 and streamed.value.body["error"]["message"] == "queue full"


def test_call_errors_translate_to_one_line_messages():
    args = ("inference", "h:1", 5.0)
    server_side = "worker died\norg.pytorch.serve.http.InternalServerException"
    batch_failure = call_error(grpc.StatusCode.UNAVAILABLE, server_side, *args, token_sent=False)
    assert isinstance(batch_failure, PredictionError) and batch_failure.status == 503  # server-side, not unreachable
    assert str(batch_failure) == "HTTP 503 (UNAVAILABLE) from TorchServe at h:1: worker died"
    assert isinstance(call_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", *args, token_sent=False),
                      ServerUnavailableError)
    disabled = call_error(grpc.StatusCode.PERMISSION_DENIED, "Model API disabled\norg...ModelException", *args,
                          token_sent=True)
    assert not isinstance(disabled, AuthorizationError) and disabled.status == 403
    bad_range = call_error(grpc.StatusCode.INVALID_ARGUMENT, "max_worker cannot be less than min_worker.\norg...",
                           "management", "h:2", 5.0, token_sent=False)
    assert type(bad_range) is ServerError and bad_range.status == 400  # a management failure is no PredictionError
    too_big = call_error(grpc.StatusCode.CANCELLED, "Stream removed (RST_STREAM (error code 8))", *args, False)
    assert "max_request_size" in str(too_big)
    assert all("\n" not in str(error) for error in (batch_failure, disabled, too_big))


def test_tokens_come_from_flag_then_key_file_then_environment(tmp_path):
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "inf"}, "management": {"key": "man"}, "API": {"key": "a"}}))
    environ = {"TS_INFERENCE_TOKEN": "env-inf", "TS_MANAGEMENT_TOKEN": "env-man"}
    assert resolve_tokens("flag", key_file, environ) == ("flag", "flag")
    assert resolve_tokens(None, key_file, environ) == ("inf", "man")
    assert resolve_tokens(None, None, environ) == ("env-inf", "env-man")
    assert resolve_tokens(None, None, {}) == (None, None)
    with pytest.raises(GrpcClientError, match="does not exist"):
        read_key_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"inference": {}}')
    with pytest.raises(GrpcClientError, match="is not TorchServe's key_file.json"):
        read_key_file(tmp_path / "bad.json")
