"""ClassifierServicer: thin gRPC translation; validation in the query types, work in the models' heads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
from ecomserve.classifier.v1 import classifier_pb2, classifier_pb2_grpc

from services.classifier.heads import Classification, ClassifierModel, EmbedderModel, Embedding
from services.core.encoder import BatchedEncoder
from services.core.errors import InvalidArgument
from services.core.repository import Registry
from services.core.server import deadline_of
from services.core.service import model_listing
from services.core.texts import check_texts

Head = TypeVar("Head", bound=BatchedEncoder)
KINDS: dict[type[BatchedEncoder], tuple[str, str]] = {
    ClassifierModel: ("a classification model", "Classify"),
    EmbedderModel: ("an embedding model", "Embed"),
}


@dataclass(frozen=True)
class TextsQuery:
    """What every request of this service names: a model, its version and the texts."""

    model: str
    version: int
    texts: list[str]
    truncate: bool

    @classmethod
    def checked(cls, model: str, version: int, texts: Sequence[str], truncate: bool, max_texts: int) -> TextsQuery:
        check_texts(model, texts, max_texts)
        return cls(model, version, list(texts), truncate)


def classify_query(request: classifier_pb2.ClassifyRequest, max_texts: int) -> tuple[TextsQuery, int]:
    """The request's texts and its top_k."""
    query = TextsQuery.checked(request.model, request.version, request.texts, request.truncate, max_texts)
    if request.top_k < 0:
        raise InvalidArgument(f"top_k must be >= 0 (0 = all labels), got {request.top_k}")
    return query, request.top_k


class ClassifierServicer(classifier_pb2_grpc.ClassifierServiceServicer):
    def __init__(self, registry: Registry[BatchedEncoder], max_texts_per_request: int) -> None:
        self._registry = registry
        self._max_texts = max_texts_per_request

    async def Classify(
        self, request: classifier_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> classifier_pb2.ClassifyResponse:
        query, top_k = classify_query(request, self._max_texts)
        version, model = self._model(query, ClassifierModel)
        results = await model.classify(query.texts, top_k, query.truncate, deadline_of(context))
        return classifier_pb2.ClassifyResponse(
            model=query.model, version=version, results=[_classification_pb(result) for result in results]
        )

    async def Embed(
        self, request: classifier_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> classifier_pb2.EmbedResponse:
        query = TextsQuery.checked(request.model, request.version, request.texts, request.truncate, self._max_texts)
        version, model = self._model(query, EmbedderModel)
        vectors = await model.embed(query.texts, query.truncate, request.normalize, deadline_of(context))
        return classifier_pb2.EmbedResponse(
            model=query.model,
            version=version,
            dimension=model.dimension,
            embeddings=[_embedding_pb(vector) for vector in vectors],
        )

    async def ListModels(
        self, request: classifier_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> classifier_pb2.ListModelsResponse:
        return classifier_pb2.ListModelsResponse(
            models=[
                classifier_pb2.ModelInfo(**common) if model is None else _model_info(common, model)
                for common, model in model_listing(self._registry)
            ]
        )

    def _model(self, query: TextsQuery, kind: type[Head]) -> tuple[int, Head]:
        version, model = self._registry.get(query.model, query.version)
        if not isinstance(model, kind):
            what, method = KINDS[type(model)]
            raise InvalidArgument(f"model {query.model!r} is {what}; call {method} with it")
        return version, model


def _model_info(common: dict[str, object], model: BatchedEncoder) -> classifier_pb2.ModelInfo:
    info = classifier_pb2.ModelInfo(**common, max_sequence_length=model.max_length)
    if isinstance(model, EmbedderModel):
        info.kind = classifier_pb2.MODEL_KIND_EMBEDDING
        info.dimension = model.dimension
        info.normalized = model.normalized
    elif isinstance(model, ClassifierModel):
        info.kind = classifier_pb2.MODEL_KIND_CLASSIFICATION
        info.labels.extend(model.labels)
    return info


def _classification_pb(result: Classification) -> classifier_pb2.Classification:
    return classifier_pb2.Classification(
        labels=[classifier_pb2.LabelScore(label=label, score=score) for label, score in result.labels],
        token_count=result.token_count,
        truncated=result.truncated,
    )


def _embedding_pb(embedding: Embedding) -> classifier_pb2.Embedding:
    return classifier_pb2.Embedding(
        values=embedding.vector.tolist(), token_count=embedding.token_count, truncated=embedding.truncated
    )
