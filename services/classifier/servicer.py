"""ClassifierServicer: thin gRPC translation; validation in ClassifyQuery, work in the models' heads."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from ecomserve.classifier.v1 import classifier_pb2, classifier_pb2_grpc

from services.classifier.heads import Classification, ClassifierModel
from services.core.errors import InvalidArgument
from services.core.repository import Registry
from services.core.server import deadline_of
from services.core.service import model_listing


@dataclass(frozen=True)
class ClassifyQuery:
    model: str
    version: int
    texts: list[str]
    top_k: int
    truncate: bool

    @classmethod
    def from_pb(cls, request: classifier_pb2.ClassifyRequest, max_texts: int) -> ClassifyQuery:
        if not request.model:
            raise InvalidArgument('model is required (e.g. "intent"); ListModels shows what this replica serves')
        if not request.texts:
            raise InvalidArgument("texts is empty; send between 1 and max_texts_per_request texts")
        if len(request.texts) > max_texts:
            raise InvalidArgument(
                f"texts has {len(request.texts)} entries; at most max_texts_per_request={max_texts} per request"
            )
        for index, text in enumerate(request.texts):
            if not text.strip():
                raise InvalidArgument(f"texts[{index}] is empty; every text needs at least one non-space character")
        if request.top_k < 0:
            raise InvalidArgument(f"top_k must be >= 0 (0 = all labels), got {request.top_k}")
        return cls(request.model, request.version, list(request.texts), request.top_k, request.truncate)


class ClassifierServicer(classifier_pb2_grpc.ClassifierServiceServicer):
    def __init__(self, registry: Registry[ClassifierModel], max_texts_per_request: int) -> None:
        self._registry = registry
        self._max_texts = max_texts_per_request

    async def Classify(
        self, request: classifier_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> classifier_pb2.ClassifyResponse:
        query = ClassifyQuery.from_pb(request, self._max_texts)
        version, model = self._registry.get(query.model, query.version)
        results = await model.classify(query.texts, query.top_k, query.truncate, deadline_of(context))
        return classifier_pb2.ClassifyResponse(
            model=query.model, version=version, results=[_to_pb(result) for result in results]
        )

    async def ListModels(
        self, request: classifier_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> classifier_pb2.ListModelsResponse:
        return classifier_pb2.ListModelsResponse(
            models=[
                classifier_pb2.ModelInfo(
                    **common,
                    labels=model.labels,
                    max_sequence_length=model.max_length,
                    status=classifier_pb2.MODEL_STATUS_READY,
                )
                for common, model in model_listing(self._registry)
            ]
        )


def _to_pb(result: Classification) -> classifier_pb2.Classification:
    return classifier_pb2.Classification(
        labels=[classifier_pb2.LabelScore(label=label, score=score) for label, score in result.labels],
        token_count=result.token_count,
        truncated=result.truncated,
    )
