"""The Open Inference Protocol (v2) over REST, translated to the protocol's gRPC messages and answered by a
`forward(method, request, call)`: the gateway's forwards to the classifier replicas over gRPC v2, behind its API
keys and rate limits; the classifier's own (`--http-port`) calls its v2 servicer in-process.

GET /v2 (server metadata), /v2/health/live, /v2/health/ready, /v2/models/{name}[/versions/{v}] (model metadata)
and .../ready; POST .../infer with the JSON tensor format (`data` as a flat or nested list; the binary tensor
extension is not supported, and outputs asked for as binary come as JSON). Output parameters go through, so
Triton's classification extension works. Errors are {"error": message} with the HTTP status of their gRPC code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

import grpc
import numpy as np
from aiohttp import web
from google.protobuf import json_format
from inference import grpc_predict_v2_pb2 as pb

from services.core import errors
from services.core.http_wire import Respond, counted_answer, read_json
from services.core.inflight import InflightCalls
from services.core.status import INTERNAL_MESSAGE
from services.core.tensors import unpack_bytes
from services.core.wire import REQUEST_ID

OK = grpc.StatusCode.OK
BINARY_HEADER = "inference-header-content-length"
BINARY_DATA = "binary_data"  # the binary extension's output parameter
MODEL = "/v2/models/{name}"
VERSION = "/v2/models/{name}/versions/{version}"


def version_number(model: str, version: str) -> int:
    """A protocol version string ("" for the default) as the number the services take (0 for the default);
    NotFound for anything else, as no such version exists."""
    if version and not version.isdigit():
        raise errors.NotFound(f"model {model!r} has no version {version!r}; versions are whole numbers")
    return int(version or 0)


def _as_json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def model_metadata_json(response: pb.ModelMetadataResponse) -> dict[str, Any]:
    """Model metadata as v2 JSON: a tensor's parameters, where it has any, as plain values (the labels of a
    classifier's "probabilities", say)."""
    body = _as_json(response)
    for tensor, message in zip([*body["inputs"], *body["outputs"]], [*response.inputs, *response.outputs], strict=True):
        parameters = {
            name: getattr(value, value.WhichOneof("parameter_choice")) for name, value in message.parameters.items()
        }
        if parameters:
            tensor["parameters"] = parameters
        else:
            tensor.pop("parameters", None)
    return body


class Call(Protocol):
    @property
    def request_id(self) -> str: ...


C = TypeVar("C", bound=Call)
Forward = Callable[[str, Any, C], Awaitable[Any]]


class V2Routes(Generic[C]):
    """`admit` refuses while draining (and, on the gateway, authenticates and applies the rate limit) and gives the
    call; `forward` answers one protocol method (its gRPC name) for it."""

    def __init__(
        self,
        calls: InflightCalls,
        admit: Callable[[web.Request], C],
        forward: Forward[C],
        body_timeout_s: float,
    ) -> None:
        self._calls = calls
        self._admit = admit
        self._forward_call = forward
        self._body_timeout_s = body_timeout_s

    def register(self, app: web.Application) -> None:
        app.router.add_get("/v2", self._forward("ServerMetadata", lambda r: pb.ServerMetadataRequest()))
        app.router.add_get("/v2/health/live", self._forward("ServerLive", lambda r: pb.ServerLiveRequest()))
        app.router.add_get("/v2/health/ready", self._forward("ServerReady", lambda r: pb.ServerReadyRequest()))
        for path in (MODEL, VERSION):
            metadata = _model_request(pb.ModelMetadataRequest)
            app.router.add_get(path, self._forward("ModelMetadata", metadata, model_metadata_json))
            app.router.add_get(path + "/ready", self._forward("ModelReady", _model_request(pb.ModelReadyRequest)))
            app.router.add_post(path + "/infer", self._infer)

    def _forward(
        self, method: str, build: Callable[[web.Request], Any], to_json: Callable[[Any], dict[str, Any]] = _as_json
    ) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            async def respond() -> tuple[web.StreamResponse, grpc.StatusCode]:
                call = self._admit(request)
                answer = await self._forward_call(method, build(request), call)
                return web.json_response(to_json(answer), headers={REQUEST_ID: call.request_id}), OK

            return await self._answer(request, method, respond)

        return handle

    async def _infer(self, request: web.Request) -> web.StreamResponse:
        async def respond() -> tuple[web.StreamResponse, grpc.StatusCode]:
            call = self._admit(request)
            if BINARY_HEADER in request.headers:
                raise errors.InvalidArgument("the binary tensor data extension is not supported: send JSON data")
            body = await read_json(request, self._body_timeout_s)
            infer = infer_request(body, request.match_info["name"], request.match_info.get("version", ""))
            answer = await self._forward_call("ModelInfer", infer, call)
            return web.json_response(infer_response(answer), headers={REQUEST_ID: call.request_id}), OK

        return await self._answer(request, "ModelInfer", respond)

    async def _answer(self, request: web.Request, method: str, respond: Respond) -> web.StreamResponse:
        return await counted_answer(self._calls, method, request, respond, error_body)


def _model_request(message: Any) -> Callable[[web.Request], Any]:
    return lambda request: message(name=request.match_info["name"], version=request.match_info.get("version", ""))


def infer_request(body: Any, model: str, version: str) -> pb.ModelInferRequest:
    """A v2 JSON inference request as the gRPC ModelInferRequest (BYTES inputs only: the classifier's)."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise errors.InvalidArgument('the body must be a JSON object with "inputs", a list of tensors')
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=str(body.get("id", "")))
    for name, value in _parameters(body).items():
        _set_parameter(request.parameters[name], name, value)
    for tensor in body["inputs"]:
        if not isinstance(tensor, dict) or tensor.get("datatype") != "BYTES":
            raise errors.InvalidArgument('every input must be {"name", "shape", "datatype": "BYTES", "data"}')
        data = np.asarray(tensor.get("data", []), dtype=object).reshape(-1)
        if not all(isinstance(element, str) for element in data):
            raise errors.InvalidArgument(f'input "{tensor.get("name")}": data must be strings')
        item = request.inputs.add(name=str(tensor.get("name", "")), datatype="BYTES", shape=tensor.get("shape", []))
        item.contents.bytes_contents.extend(element.encode() for element in data)
    for output in body.get("outputs") or []:
        if not isinstance(output, dict):
            raise errors.InvalidArgument('every requested output must be {"name", "parameters"}')
        wanted = request.outputs.add(name=str(output.get("name", "")))
        for name, value in _parameters(output).items():
            if name != BINARY_DATA:  # answered as JSON all the same, which tritonclient reads as well
                _set_parameter(wanted.parameters[name], name, value)
    return request


def _parameters(holder: dict[str, Any]) -> dict[str, Any]:
    parameters = holder.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise errors.InvalidArgument('"parameters" must be a JSON object of name: value')
    return parameters


def _set_parameter(parameter: pb.InferParameter, name: str, value: Any) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    elif isinstance(value, str):
        parameter.string_param = value
    else:
        raise errors.InvalidArgument(f'parameter "{name}" must be a bool, number or string')


def infer_response(response: pb.ModelInferResponse) -> dict[str, Any]:
    """The gRPC ModelInferResponse as v2 JSON: each output's raw bytes as a flat `data` list."""
    outputs = []
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if tensor.datatype == "BYTES":
            data: list[Any] = [element.decode() for element in unpack_bytes(raw)]
        else:
            data = np.frombuffer(raw, dtype="<f4").tolist()
        outputs.append({"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape), "data": data})
    return {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "outputs": outputs,
    }


def error_body(error: BaseException, code: grpc.StatusCode) -> dict[str, Any]:
    """The v2 error shape; unexpected errors say only that they were logged."""
    return {"error": INTERNAL_MESSAGE if code is grpc.StatusCode.INTERNAL else str(error)}
