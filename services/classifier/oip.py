"""The Open Inference Protocol (v2) over gRPC for the classifier service's models, so that KServe's and Triton's
clients (tritonclient) call them unchanged. Translation only: texts come in as a BYTES tensor named "text"
(shape [N] or [N, 1]), and go through the same models, batching, limits and errors as Classify and Embed.
Outputs: classification models answer "probabilities" (FP32 [N, labels], in the labels' order) and "label"
(BYTES [N], the best one; [N, top_k] with the "top_k" parameter); embedding models "embeddings" (FP32
[N, dimension]). Outputs travel as raw bytes. Triton's classification extension is served: "probabilities" asked
for with the output parameter "classification" k comes as BYTES [N, k] of "score:index:label", best first, which
is how Triton's clients read a classifier's labels.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
from inference import grpc_predict_v2_pb2 as pb
from inference import grpc_predict_v2_pb2_grpc as pb_grpc

from services.classifier.heads import ClassifierModel, EmbedderModel
from services.core.encoder import BatchedEncoder
from services.core.errors import InvalidArgument
from services.core.oip_rest import version_number
from services.core.repository import Registry
from services.core.server import deadline_of
from services.core.tensors import pack_bytes, unpack_bytes
from services.core.texts import check_texts

TEXT_INPUT = "text"
PLATFORM = "onnxruntime_onnx"
ANY = -1
LABELS = "labels"  # the metadata parameter of "probabilities" that names its columns
CLASSIFICATION = "classification"  # Triton's extension: the output parameter, and its name in ServerMetadata


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, registry: Registry[BatchedEncoder], ready: Callable[[], bool], max_texts: int) -> None:
        self._registry = registry
        self._ready = ready
        self._max_texts = max_texts

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        self._model(request.name, request.version)
        return pb.ModelReadyResponse(ready=self._ready())

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="ecomserve", version=_version(), extensions=[CLASSIFICATION])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        _, model = self._model(request.name, request.version)
        versions = [str(v) for name, v, _, _ in self._registry if name == request.name]
        return pb.ModelMetadataResponse(
            name=request.name,
            versions=versions,
            platform=PLATFORM,
            inputs=[pb.ModelMetadataResponse.TensorMetadata(name=TEXT_INPUT, datatype="BYTES", shape=[ANY])],
            outputs=[
                pb.ModelMetadataResponse.TensorMetadata(
                    name=name, datatype=datatype, shape=shape, parameters=_tensor_parameters(name, model)
                )
                for name, datatype, shape in _outputs_of(model)
            ],
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        return await self.infer(request, deadline_of(context))

    async def answer(self, method: str, request: Any, deadline: float | None) -> Any:
        """One call of the protocol by its gRPC method name, in-process (the REST form on the classifier's own
        HTTP port): the same answers and errors as over gRPC."""
        if method == "ModelInfer":
            return await self.infer(request, deadline)
        return await getattr(self, method)(request, None)  # the other methods do not use their context

    async def infer(self, request: pb.ModelInferRequest, deadline: float | None) -> pb.ModelInferResponse:
        version, model = self._model(request.model_name, request.model_version)
        texts = _texts(request)
        check_texts(request.model_name, texts, self._max_texts)
        wanted = _requested(request, model)
        truncate = _flag(request, "truncate")
        tensors: dict[str, tuple[str, list[int], bytes]] = {}
        if isinstance(model, EmbedderModel):
            embedded = await model.embed(texts, truncate, _flag(request, "normalize"), deadline)
            vectors = np.stack([e.vector for e in embedded]).astype("<f4")
            tensors["embeddings"] = ("FP32", list(vectors.shape), vectors.tobytes())
        elif isinstance(model, ClassifierModel):
            top_k = _top_k(request, len(model.labels))
            rows = np.stack([row.output for row in await model.encode(texts, truncate, deadline)]).astype("<f4")
            classes = wanted.get("probabilities", 0)
            if classes:
                tensors["probabilities"] = _classes(rows, model.labels, classes)
            else:
                tensors["probabilities"] = ("FP32", list(rows.shape), rows.tobytes())
            labels = [model.labels[i].encode() for i in _best(rows, top_k).reshape(-1)]
            shape = [len(texts)] if top_k == 1 else [len(texts), top_k]
            tensors["label"] = ("BYTES", shape, pack_bytes(labels))
        response = pb.ModelInferResponse(model_name=request.model_name, model_version=str(version), id=request.id)
        for name in wanted:
            datatype, shape, raw = tensors[name]
            response.outputs.add(name=name, datatype=datatype, shape=shape)
            response.raw_output_contents.append(raw)
        return response

    def _model(self, name: str, version: str) -> tuple[int, BatchedEncoder]:
        if not name:
            raise InvalidArgument("model name is required; ModelMetadata and ListModels show what is served")
        return self._registry.get(name, version_number(name, version))


def _outputs_of(model: BatchedEncoder) -> list[tuple[str, str, list[int]]]:
    if isinstance(model, EmbedderModel):
        return [("embeddings", "FP32", [ANY, model.dimension])]
    assert isinstance(model, ClassifierModel)
    return [("probabilities", "FP32", [ANY, len(model.labels)]), ("label", "BYTES", [ANY])]


def _best(rows: np.ndarray, count: int) -> np.ndarray:
    """Per row, the indices of its `count` highest scores, best first (ties: the lower index)."""
    return np.argsort(-rows, axis=1, kind="stable")[:, :count]


def _tensor_parameters(output: str, model: BatchedEncoder) -> dict[str, pb.InferParameter]:
    """A classifier's labels on its "probabilities" metadata, in column order (a JSON array)."""
    if output == "probabilities" and isinstance(model, ClassifierModel):
        return {LABELS: pb.InferParameter(string_param=json.dumps(model.labels))}
    return {}


def _texts(request: pb.ModelInferRequest) -> list[str]:
    """The "text" input's strings, from its contents or from raw_input_contents."""
    names = [tensor.name for tensor in request.inputs]
    if names != [TEXT_INPUT]:
        raise InvalidArgument(f'send one input named "{TEXT_INPUT}" (BYTES, shape [N] or [N, 1]); got {names}')
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise InvalidArgument(f'input "{TEXT_INPUT}" must be BYTES (UTF-8 strings), got {tensor.datatype}')
    shape = list(tensor.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise InvalidArgument(f'input "{TEXT_INPUT}" must have shape [N] or [N, 1], got {shape}')
    if request.raw_input_contents:
        elements = unpack_bytes(request.raw_input_contents[0])
    else:
        elements = list(tensor.contents.bytes_contents)
    if len(elements) != shape[0]:
        raise InvalidArgument(f'input "{TEXT_INPUT}" has shape {shape} but {len(elements)} elements')
    try:
        return [element.decode() for element in elements]
    except UnicodeDecodeError:
        raise InvalidArgument(f'input "{TEXT_INPUT}" holds bytes that are not UTF-8 text') from None


def _requested(request: pb.ModelInferRequest, model: BatchedEncoder) -> dict[str, int]:
    """The outputs to answer, in order, each with its "classification" count (0: the tensor itself)."""
    served = [name for name, _, _ in _outputs_of(model)]
    wanted = {output.name: _class_count(output, model) for output in request.outputs} or dict.fromkeys(served, 0)
    unknown = [name for name in wanted if name not in served]
    if unknown:
        raise InvalidArgument(f"unknown output(s) {unknown}; model {request.model_name!r} has {served}")
    return wanted


def _class_count(output: pb.ModelInferRequest.InferRequestedOutputTensor, model: BatchedEncoder) -> int:
    parameter = output.parameters.get(CLASSIFICATION)
    if parameter is None:
        return 0
    labels = len(model.labels) if isinstance(model, ClassifierModel) else 0
    if output.name != "probabilities" or not labels:
        raise InvalidArgument(f'the "{CLASSIFICATION}" parameter applies to a classifier\'s "probabilities" only')
    if parameter.WhichOneof("parameter_choice") != "int64_param" or not 1 <= parameter.int64_param <= labels:
        raise InvalidArgument(f'parameter "{CLASSIFICATION}" must be an integer in 1..{labels} (the model\'s labels)')
    return parameter.int64_param


def _classes(rows: np.ndarray, labels: list[str], count: int) -> tuple[str, list[int], bytes]:
    """Triton's classification output: the `count` best labels per row as "score:index:label", best first."""
    best = _best(rows, count)
    elements = [
        f"{row[i]:f}:{i}:{labels[i]}".encode() for row, indices in zip(rows, best, strict=True) for i in indices
    ]
    return "BYTES", [len(rows), count], pack_bytes(elements)


def _top_k(request: pb.ModelInferRequest, labels: int) -> int:
    """The "top_k" parameter (int64): how many labels "label" holds per text, best first (default 1)."""
    parameter = request.parameters.get("top_k")
    if parameter is None:
        return 1
    if parameter.WhichOneof("parameter_choice") != "int64_param" or not 1 <= parameter.int64_param <= labels:
        raise InvalidArgument(f'parameter "top_k" must be an integer in 1..{labels} (the model\'s labels)')
    return parameter.int64_param


def _flag(request: pb.ModelInferRequest, name: str) -> bool:
    parameter = request.parameters.get(name)
    if parameter is None:
        return False
    if parameter.WhichOneof("parameter_choice") != "bool_param":
        raise InvalidArgument(f'parameter "{name}" must be a bool')
    return parameter.bool_param


def _version() -> str:
    try:
        return importlib.metadata.version("ecomserve")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
