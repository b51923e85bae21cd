"""gRPC client for TorchServe's inference (port 7070) and management (port 7071) APIs.

TorchServe's gRPC answers differ from its REST ones in ways a caller trips over, all measured on
0.12 here: a per-item status the handler sets (400 corrupt image, 415 not an image, ...) is dropped,
so the error JSON arrives in an OK PredictionResponse; an unknown model is INTERNAL on the inference
API but NOT_FOUND on the management API; a missing or wrong token is PERMISSION_DENIED (not
UNAUTHENTICATED), as is "Model API disabled"; `ListModels` with limit 0 lists nothing; ScaleWorker
reads min_worker 0 as "unset" (→ 1). This client turns each into one exception with a one-line
message a person can act on.

Usage:
    python -m scripts.grpc_client predict IMAGE [IMAGE ...] [--model deepfake] [--version V] [--uncalibrated]
    python -m scripts.grpc_client ping
    python -m scripts.grpc_client describe MODEL [--version V]
    python -m scripts.grpc_client scale MODEL --min N [--max M]
    python -m scripts.grpc_client list
Every subcommand takes --host, --inference-port, --management-port, --timeout, --token, --key-file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, NoReturn

import grpc
from google.protobuf import empty_pb2

from scripts.grpc_stubs import load_stubs
from scripts.serve import api_key

DEFAULT_HOST = "127.0.0.1"
DEFAULT_INFERENCE_PORT = 7070
DEFAULT_MANAGEMENT_PORT = 7071
DEFAULT_TIMEOUT = 60.0
INFERENCE_TOKEN_ENV = "TS_INFERENCE_TOKEN"
MANAGEMENT_TOKEN_ENV = "TS_MANAGEMENT_TOKEN"
# TorchServe's max_response_size default (6,553,500 bytes) is above gRPC's 4 MiB receive default.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# gRPC status → the HTTP status TorchServe mapped to it (inverse of org.pytorch.serve.util.GRPCUtils), so a
# gRPC failure reads like the REST one.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.OUT_OF_RANGE: 416,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
TOKEN_REFUSED = "Token Authorization failed"  # TorchServe's description when the key is missing, wrong or expired


class GrpcClientError(RuntimeError):
    """A call failed; str() is a one-line message saying what to do.

    Attributes:
        code: the gRPC status of the failed call (None when the failure was not a gRPC status).
        details: TorchServe's description, first line only (the second names a Java exception class).

    """

    def __init__(self, message: str, code: grpc.StatusCode | None = None, details: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.details = details


class ServerUnavailableError(GrpcClientError):
    """Nothing answers at the address, or it did not answer within the timeout."""


class AuthorizationError(GrpcClientError):
    """TorchServe refused the call's token (missing, wrong API's key, or expired)."""


class ModelNotFoundError(GrpcClientError):
    """The model (or the model version) is not registered."""


class ServerError(GrpcClientError):
    """TorchServe answered the call with an error the other classes do not cover (e.g. 400 bad scale range).

    Attributes:
        status: HTTP-ish status: the one the handler chose for the item, or the HTTP twin of the gRPC code.
        body: the JSON error body ({"error": {"code", "message", "status"}}): the handler's own for a refused
            item, else one built from the gRPC status.

    """

    def __init__(self, message: str, status: int, body: dict[str, Any], code: grpc.StatusCode | None = None,
                 details: str = "") -> None:
        super().__init__(message, code, details)
        self.status = status
        self.body = body


class PredictionError(ServerError):
    """A prediction failed: the handler refused the item (corrupt image, ...) or the server failed the batch."""


@dataclass(frozen=True)
class GrpcTarget:
    """Where TorchServe's gRPC APIs listen and how to call them.

    Attributes:
        host: name or address of the TorchServe machine.
        inference_port: grpc_inference_port (Ping, Predictions).
        management_port: grpc_management_port (DescribeModel, ListModels, ScaleWorker).
        timeout: seconds each call may take (a synchronous ScaleWorker waits for its workers to start).
        inference_token: the "inference" key of key_file.json when token authorization is on.
        management_token: the "management" key of key_file.json when token authorization is on.

    """

    host: str = DEFAULT_HOST
    inference_port: int = DEFAULT_INFERENCE_PORT
    management_port: int = DEFAULT_MANAGEMENT_PORT
    timeout: float = DEFAULT_TIMEOUT
    inference_token: str | None = None
    management_token: str | None = None

    @property
    def inference_address(self) -> str:
        """host:port of the inference API."""
        return f"{self.host}:{self.inference_port}"

    @property
    def management_address(self) -> str:
        """host:port of the management API."""
        return f"{self.host}:{self.management_port}"


def read_key_file(path: Path) -> tuple[str, str]:
    """The (inference, management) keys from the key_file.json TorchServe writes into its working directory.

    Raises:
        GrpcClientError: the file is missing, not JSON, or lacks a key (the message names the file).

    """
    try:
        return api_key(path, "inference"), api_key(path, "management")
    except FileNotFoundError as error:
        raise GrpcClientError(f"key file {path} does not exist; TorchServe writes key_file.json into the folder "
                              f"it was started from") from error
    except (OSError, ValueError) as error:
        raise GrpcClientError(f"key file {path} is not TorchServe's key_file.json (need "
                              f"inference.key and management.key): {error!r}") from error


def token_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata TorchServe's token authorization reads (none without a token)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def _first_line(details: str | None) -> str:
    return (details or "").split("\n", 1)[0].strip()


def call_error(code: grpc.StatusCode, details: str | None, api: str, address: str, timeout: float,
               token_sent: bool, model: str | None = None, version: str | None = None) -> GrpcClientError:
    """Translates a failed call's gRPC status into the client's exception with a one-line message.

    A pure function of what the call returned, so every translation is testable without a server.

    Args:
        code: the call's gRPC status.
        details: the call's description (TorchServe appends the Java exception class on a second line).
        api: "inference" or "management", for the message and the token hint.
        address: host:port called.
        timeout: the call's deadline in seconds.
        token_sent: whether the call carried a token.
        model: the model the call named, if any.
        version: the model version the call named, if any.

    """
    full = details or ""
    first = _first_line(details)
    if code == grpc.StatusCode.UNAVAILABLE and "org.pytorch.serve" not in full:
        return ServerUnavailableError(f"cannot reach TorchServe gRPC at {address} ({api} API): {first}; is it "
                                      f"running, and is grpc_{api}_port set to this port?", code, first)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ServerUnavailableError(f"no answer from TorchServe gRPC at {address} ({api} API) within {timeout:g} s; "
                                      f"raise --timeout or check the server's load", code, first)
    if code == grpc.StatusCode.UNAUTHENTICATED or TOKEN_REFUSED in full:
        env = INFERENCE_TOKEN_ENV if api == "inference" else MANAGEMENT_TOKEN_ENV
        sent = ("the token sent is not the current " + api + " key (keys expire, by default after 60 minutes)"
                if token_sent else "no token was sent")
        return AuthorizationError(f"TorchServe at {address} refused the call: token authorization is on and {sent}; "
                                  f"pass the {api} key of key_file.json with --key-file, --token or ${env}",
                                  code, first)
    if "ModelVersionNotFoundException" in full:
        return ModelNotFoundError(f"model '{model}' has no version '{version}' on TorchServe at {address}; "
                                  f"see the versions with: describe {model} --version all", code, first)
    if "ModelNotFoundException" in full:
        return ModelNotFoundError(f"model '{model}' is not registered on TorchServe at {address}; "
                                  f"see the registered models with: list", code, first)
    status = HTTP_STATUS.get(code, 500)
    if code == grpc.StatusCode.CANCELLED and "RST_STREAM" in full:
        first += (" (TorchServe resets a request bigger than its max_request_size: 9437184 bytes in the shipped "
                  "configs, 6553500 by TorchServe's default)")
    body = {"error": {"code": code.name.lower(), "message": first, "status": status}}
    kind = PredictionError if api == "inference" else ServerError
    return kind(f"HTTP {status} ({code.name}) from TorchServe at {address}: {first}", status, body, code, first)


def prediction_from_answer(payload: bytes, status_code: int = 0, status_message: str = "") -> dict[str, Any]:
    """The handler's JSON answer for one item; raises when it is an error.

    TorchServe drops the per-item status a handler sets, so over gRPC a refused item arrives as an
    OK PredictionResponse whose body is the handler's error JSON; StreamPredictions2 may also fill
    the response's google.rpc.Status.

    Args:
        payload: PredictionResponse.prediction.
        status_code: PredictionResponse.status.code (a gRPC code number; 0 = OK or absent).
        status_message: PredictionResponse.status.message.

    Raises:
        PredictionError: the answer carries an error (status and body as the handler returned them).

    """
    try:
        body = json.loads(payload) if payload else {}
    except ValueError:
        body = {"error": {"code": "non_json_response", "message": payload[:500].decode(errors="replace")}}
    if status_code:
        code = CODE_BY_NUMBER.get(status_code, grpc.StatusCode.UNKNOWN)
        status = HTTP_STATUS.get(code, 500)
        if not isinstance(body, dict) or "error" not in body:
            body = {"error": {"code": code.name.lower(), "message": status_message, "status": status}}
        _raise_item_error(body, status, code)
    if not isinstance(body, dict):
        raise PredictionError(f"TorchServe answered {type(body).__name__}, not one JSON object per item", 500,
                              {"error": {"code": "unexpected_response", "message": str(body)[:500]}})
    if "error" in body:
        error = body["error"] if isinstance(body["error"], dict) else {"message": str(body["error"])}
        _raise_item_error(body, int(error.get("status", 400)), None)
    return body


def _raise_item_error(body: dict[str, Any], status: int, code: grpc.StatusCode | None) -> NoReturn:
    error = body.get("error", {}) if isinstance(body.get("error"), dict) else {}
    raise PredictionError(f"HTTP {status} {error.get('code', 'error')}: {error.get('message', '')}", status, body,
                          code, str(error.get("message", "")))


class TorchServeGrpc:
    """A client of one TorchServe's gRPC APIs; close it (or use it as a context manager) to free its channels.

    Channels connect lazily, so a client of a server that is down fails on its first call, with
    ServerUnavailableError, not at construction.
    """

    def __init__(self, target: GrpcTarget, stubs: dict[str, ModuleType] | None = None) -> None:
        self.target = target
        self._stubs = stubs or load_stubs()
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        self._inference_channel = grpc.insecure_channel(target.inference_address, options=options)
        self._management_channel = grpc.insecure_channel(target.management_address, options=options)
        self._inference = self._stubs["inference_pb2_grpc"].InferenceAPIsServiceStub(self._inference_channel)
        self._management = self._stubs["management_pb2_grpc"].ManagementAPIsServiceStub(self._management_channel)

    def close(self) -> None:
        """Closes both channels."""
        self._inference_channel.close()
        self._management_channel.close()

    def __enter__(self) -> TorchServeGrpc:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _call(self, api: str, method: Any, request: Any, model: str | None = None,
              version: str | None = None) -> Any:
        target = self.target
        token = target.inference_token if api == "inference" else target.management_token
        address = target.inference_address if api == "inference" else target.management_address
        try:
            return method(request, timeout=target.timeout, metadata=token_metadata(token))
        except grpc.RpcError as error:
            raise call_error(error.code(), error.details(), api, address, target.timeout, bool(token), model,
                             version) from None

    def predict(self, model: str, data: bytes, version: str | None = None,
                uncalibrated: bool = False) -> dict[str, Any]:
        """Scores one image (its file's bytes) and returns the handler's JSON answer.

        Raises:
            PredictionError: the handler refused the item (status and JSON body as it returned them),
                or the call failed on the server.
            ModelNotFoundError, AuthorizationError, ServerUnavailableError: see their docstrings.

        """
        inputs = {"data": data}
        if uncalibrated:
            inputs["uncalibrated"] = b"true"
        request = self._stubs["inference_pb2"].PredictionsRequest(model_name=model, model_version=version or "",
                                                                  input=inputs)
        answer = self._call("inference", self._inference.Predictions, request, model, version)
        has_status = answer.HasField("status")
        return prediction_from_answer(answer.prediction, answer.status.code if has_status else 0,
                                      answer.status.message if has_status else "")

    def ping(self) -> str:
        """TorchServe's health: "Healthy" when every model has its minimum of workers, else "Unhealthy" or similar."""
        answer = self._call("inference", self._inference.Ping, empty_pb2.Empty())
        try:
            return str(json.loads(answer.health)["status"])
        except (ValueError, KeyError, TypeError):
            return answer.health.strip()

    def describe(self, model: str, version: str | None = None) -> list[dict[str, Any]]:
        """The model's description (one entry per version; "all" lists every version), workers included."""
        request = self._stubs["management_pb2"].DescribeModelRequest(model_name=model, model_version=version or "")
        return json.loads(self._call("management", self._management.DescribeModel, request, model, version).msg)

    def scale(self, model: str, min_workers: int, max_workers: int | None = None, version: str | None = None) -> str:
        """Sets the model's worker range and waits until the workers are started; returns TorchServe's message.

        Raises:
            ValueError: min_workers < 1 (gRPC ScaleWorker reads 0 as "unset" and would scale to 1;
                scale to zero with the REST management API) or max_workers < min_workers.

        """
        max_workers = min_workers if max_workers is None else max_workers
        if min_workers < 1:
            raise ValueError(f"min workers must be at least 1 over gRPC (got {min_workers}): ScaleWorker reads 0 as "
                             f"unset; scale to zero with PUT /models/{model}?min_worker=0 on the REST management API")
        if max_workers < min_workers:
            raise ValueError(f"max workers ({max_workers}) must not be below min workers ({min_workers})")
        request = self._stubs["management_pb2"].ScaleWorkerRequest(
            model_name=model, model_version=version or "", min_worker=min_workers, max_worker=max_workers,
            synchronous=True)
        return self._call("management", self._management.ScaleWorker, request, model, version).msg

    def list_models(self, limit: int = 100) -> dict[str, Any]:
        """{"models": [{"modelName", "modelUrl"}, ...]} (+ "nextPageToken" when there are more than limit)."""
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit must be within 1..1000 (got {limit}); TorchServe lists nothing for 0")
        request = self._stubs["management_pb2"].ListModelsRequest(limit=limit)
        return json.loads(self._call("management", self._management.ListModels, request).msg)


def resolve_tokens(token: str | None, key_file: Path | None,
                   environ: Mapping[str, str] = os.environ) -> tuple[str | None, str | None]:
    """(inference, management) tokens: --token for both, else --key-file, else the environment variables."""
    if token:
        return token, token
    if key_file is not None:
        return read_key_file(key_file)
    return environ.get(INFERENCE_TOKEN_ENV) or None, environ.get(MANAGEMENT_TOKEN_ENV) or None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value} (gRPC ScaleWorker reads 0 as unset; "
                                         f"scale to zero with the REST management API)")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The CLI: one subcommand per call, connection options on each."""
    connection = argparse.ArgumentParser(add_help=False)
    group = connection.add_argument_group("connection")
    group.add_argument("--host", default=DEFAULT_HOST, help="TorchServe host (default: %(default)s)")
    group.add_argument("--inference-port", type=int, default=DEFAULT_INFERENCE_PORT,
                       help="grpc_inference_port (default: %(default)s)")
    group.add_argument("--management-port", type=int, default=DEFAULT_MANAGEMENT_PORT,
                       help="grpc_management_port (default: %(default)s)")
    group.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per call (default: %(default)s)")
    tokens = group.add_mutually_exclusive_group()
    tokens.add_argument("--token", help=f"key sent as 'authorization: Bearer KEY' (default: ${INFERENCE_TOKEN_ENV} "
                                        f"for inference calls, ${MANAGEMENT_TOKEN_ENV} for management calls)")
    tokens.add_argument("--key-file", type=Path, help="TorchServe's key_file.json: the inference or management key "
                                                      "is picked per call")

    parser = argparse.ArgumentParser(prog="python -m scripts.grpc_client", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    predict = commands.add_parser("predict", parents=[connection], help="score image files (Predictions)",
                                  description="Score image files; prints each JSON answer. Exit 1 if any failed.")
    predict.add_argument("images", type=Path, nargs="+", metavar="FILE")
    predict.add_argument("--model", default="deepfake", help="model name (default: %(default)s)")
    predict.add_argument("--version", help="model version (default: the model's default version)")
    predict.add_argument("--uncalibrated", action="store_true",
                         help="also ask for the raw (uncalibrated) probability: input['uncalibrated']=b'true'")
    commands.add_parser("ping", parents=[connection], help="server health (Ping)",
                        description="Print TorchServe's health; exit 1 unless Healthy.")
    describe = commands.add_parser("describe", parents=[connection], help="a model's description (DescribeModel)",
                                   description="Print a model's description, workers included, as JSON.")
    describe.add_argument("model", metavar="MODEL")
    describe.add_argument("--version", help="model version, or 'all' (default: the default version)")
    scale = commands.add_parser("scale", parents=[connection], help="set a model's workers (ScaleWorker)",
                                description="Set a model's worker range and wait until the workers are up.")
    scale.add_argument("model", metavar="MODEL")
    scale.add_argument("--min", type=_positive_int, required=True, dest="min_workers", help="minimum workers (≥ 1)")
    scale.add_argument("--max", type=_positive_int, dest="max_workers", help="maximum workers (default: --min)")
    scale.add_argument("--version", help="model version (default: the default version)")
    listing = commands.add_parser("list", parents=[connection], help="registered models (ListModels)",
                                  description="Print the registered models as JSON.")
    listing.add_argument("--limit", type=int, default=100, help="at most this many, 1..1000 (default: %(default)s)")
    return parser


def _predict_files(client: TorchServeGrpc, args: argparse.Namespace) -> int:
    missing = [str(path) for path in args.images if not path.is_file()]
    if missing:
        raise GrpcClientError(f"no such file: {', '.join(missing)}")
    failed = 0
    for path in args.images:
        try:
            answer = client.predict(args.model, path.read_bytes(), args.version, args.uncalibrated)
            print(f"{path} → OK\n{json.dumps(answer, indent=2)}", flush=True)
        except PredictionError as error:  # one item's failure; the next file may still succeed
            failed += 1
            print(f"{path} → {error}\n{json.dumps(error.body, indent=2)}", flush=True)
    if failed:
        print(f"grpc_client: {failed} of {len(args.images)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    """Runs one parsed command; returns the exit code.

    Raises:
        GrpcClientError: a failure that ends the command (unreachable server, refused token, unknown model, ...).
        ValueError: an argument TorchServe would misread (see TorchServeGrpc.scale / list_models).

    """
    inference_token, management_token = resolve_tokens(args.token, args.key_file)
    target = GrpcTarget(args.host, args.inference_port, args.management_port, args.timeout, inference_token,
                        management_token)
    with TorchServeGrpc(target) as client:
        if args.command == "predict":
            return _predict_files(client, args)
        if args.command == "ping":
            health = client.ping()
            print(health)
            return 0 if health == "Healthy" else 1
        if args.command == "describe":
            print(json.dumps(client.describe(args.model, args.version), indent=2))
        elif args.command == "scale":
            print(client.scale(args.model, args.min_workers, args.max_workers, args.version))
        elif args.command == "list":
            print(json.dumps(client.list_models(args.limit), indent=2))
    return 0


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: exit 1 with a one-line message on any failure."""
    args = build_parser().parse_args(argv)
    try:
        code = run(args)
    except (GrpcClientError, ValueError) as error:
        sys.exit(f"grpc_client: {error}")
    sys.exit(code)


if __name__ == "__main__":
    main()
