"""The gateway's operations, transport-agnostic: validate, build the backend request, call, translate back.

The gRPC servicer and the HTTP bridge both call these with the request message and a CallContext; errors are
domain exceptions (services.core.errors), mapped to gRPC or HTTP statuses by each transport in one place.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace as Namespace  # template variables: attributes, never dict methods (`items`)

from ecomserve.classifier.v1 import classifier_pb2
from ecomserve.gateway.v1 import gateway_pb2

from services.core import errors
from services.core.texts import check_texts
from services.gateway import fields
from services.gateway.backends import Backend, CallContext, configured_generator
from services.gateway.coalescing import MessageClassifier
from services.gateway.marketing import MarketingCopyWriter
from services.gateway.reviews import ReviewAnalyzer, ReviewsConfig
from services.gateway.routing import RoutingTable
from services.gateway.templates import PromptTemplates

DEFAULT_DESCRIPTION_WORDS = 80
DEFAULT_REPLY_WORDS = 120


@dataclass(frozen=True)
class OperationLimits:
    max_text_chars: int
    max_texts_per_request: int
    route_max_texts_per_call: int
    route_max_calls: int


class GatewayOperations:
    """RouteMessage, ClassifyTexts, EmbedTexts, DescribeProduct, DraftReply, WriteMarketingCopy and AnalyzeReviews
    over the classifier and generator backends."""

    def __init__(
        self,
        classifier: Backend,
        generator: Backend | None,
        generator_model: str,
        routing: RoutingTable,
        templates: PromptTemplates,
        limits: OperationLimits,
    ) -> None:
        MarketingCopyWriter.check(templates)
        self._classifier = classifier
        self._routing = routing
        self._messages = MessageClassifier(
            classifier,
            lambda: self._routing,
            max_texts_per_call=limits.route_max_texts_per_call,
            max_calls=limits.route_max_calls,
        )
        self._generator = generator
        self._generator_model = generator_model
        self._templates = templates
        self._limits = limits
        self._marketing = MarketingCopyWriter(self._generator_backend, generator_model, templates)
        self._reviews = ReviewAnalyzer(
            classifier,
            self._generator_backend,
            generator_model,
            templates,
            ReviewsConfig(lambda: self._routing.model, limits.max_texts_per_request, limits.max_text_chars),
        )

    def replace_routing(self, routing: RoutingTable) -> None:
        """A re-read routing table: the next RouteMessage (and AnalyzeReviews' default model) follow it."""
        self._routing = routing

    def replace_templates(self, templates: PromptTemplates) -> None:
        """Re-read prompt templates, once they pass the checks the ones at start passed: the next call uses them."""
        MarketingCopyWriter.check(templates)
        self._templates.replace_with(templates)

    def start(self) -> None:
        """Inside the event loop, before the first call."""
        self._messages.start()

    async def aclose(self) -> None:
        """Once no call arrives any more: sends what is queued."""
        await self._messages.aclose()

    async def route_message(
        self, request: gateway_pb2.RouteMessageRequest, call: CallContext
    ) -> gateway_pb2.RouteMessageResponse:
        fields.required_text("message", request.message, self._limits.max_text_chars)
        fields.limit("channel", request.channel, fields.MAX_CHANNEL_CHARS)
        fields.limit("locale", request.locale, fields.MAX_LOCALE_CHARS)
        classified = await self._messages.classify(request.message, call)
        best = classified.labels[0]
        route = self._routing.decide(best.label, best.score)
        return gateway_pb2.RouteMessageResponse(
            queue=route.queue,
            intents=[gateway_pb2.LabelScore(label=label.label, score=label.score) for label in classified.labels],
            triaged=route.triaged,
            reason=route.reason,
            model=classified.model,
            model_version=classified.version,
        )

    async def classify_texts(
        self, request: gateway_pb2.ClassifyTextsRequest, call: CallContext
    ) -> gateway_pb2.ClassifyTextsResponse:
        self._check_texts(request.model, request.texts)
        classify = classifier_pb2.ClassifyRequest(
            model=request.model,
            version=request.version,
            texts=request.texts,
            top_k=request.top_k,
            truncate=request.truncate,
        )
        response = await self._classifier.unary("Classify", classify, call)
        return gateway_pb2.ClassifyTextsResponse(
            model=response.model,
            version=response.version,
            results=[
                gateway_pb2.TextClassification(
                    labels=[gateway_pb2.LabelScore(label=label.label, score=label.score) for label in result.labels],
                    token_count=result.token_count,
                    truncated=result.truncated,
                )
                for result in response.results
            ],
        )

    async def embed_texts(
        self, request: gateway_pb2.EmbedTextsRequest, call: CallContext
    ) -> gateway_pb2.EmbedTextsResponse:
        self._check_texts(request.model, request.texts)
        embed = classifier_pb2.EmbedRequest(
            model=request.model,
            version=request.version,
            texts=request.texts,
            truncate=request.truncate,
            normalize=request.normalize,
        )
        response = await self._classifier.unary("Embed", embed, call)
        return gateway_pb2.EmbedTextsResponse(
            model=response.model,
            version=response.version,
            dimension=response.dimension,
            embeddings=[
                gateway_pb2.TextEmbedding(values=e.values, token_count=e.token_count, truncated=e.truncated)
                for e in response.embeddings
            ],
        )

    async def describe_product(
        self, request: gateway_pb2.DescribeProductRequest, call: CallContext
    ) -> gateway_pb2.DescribeProductResponse:
        product = fields.product(request)
        tone = fields.tone(request.tone)
        max_words = fields.words("max_words", request.max_words, DEFAULT_DESCRIPTION_WORDS)
        template = self._templates.get("describe_product", request.template_version)
        messages = template.render(product=product, tone=tone, max_words=max_words)
        generate = template.generation(self._generator_model, messages, max_words, _seed(request))
        response = await self._generator_backend().unary("Generate", generate, call)
        return gateway_pb2.DescribeProductResponse(
            description=response.text.strip(),
            finish_reason=response.finish_reason,
            usage=fields.usage(response.usage),
            template=template.name,
            model=response.model,
            model_version=response.version,
        )

    async def draft_reply(
        self, request: gateway_pb2.DraftReplyRequest, call: CallContext
    ) -> AsyncIterator[gateway_pb2.DraftReplyResponse]:
        fields.required_text("message", request.message, self._limits.max_text_chars)
        fields.limit("agent_name", request.agent_name, fields.MAX_SHORT_FIELD_CHARS)
        order = request.order if request.HasField("order") else None
        if order is not None:
            fields.limit("order.order_id", order.order_id, fields.MAX_SHORT_FIELD_CHARS)
            fields.limit("order.status", order.status, fields.MAX_STATUS_CHARS)
            if len(order.items) > fields.MAX_ORDER_ITEMS:
                raise errors.InvalidArgument(
                    f"order.items has {len(order.items)} entries, over {fields.MAX_ORDER_ITEMS}"
                )
            for index, item in enumerate(order.items):
                fields.limit(f"order.items[{index}].name", item.name, fields.MAX_TITLE_CHARS)
                fields.limit(f"order.items[{index}].status", item.status, fields.MAX_SHORT_FIELD_CHARS)
        max_words = fields.words("max_words", request.max_words, DEFAULT_REPLY_WORDS)
        template = self._templates.get("draft_reply", request.template_version)
        messages = template.render(
            message=request.message.strip(),
            order=None
            if order is None
            else Namespace(
                order_id=order.order_id,
                status=order.status,
                items=[Namespace(name=i.name, quantity=i.quantity, status=i.status) for i in order.items],
            ),
            agent_name=request.agent_name.strip(),
            max_words=max_words,
        )
        generate = template.generation(self._generator_model, messages, max_words, _seed(request))
        async for delta in self._generator_backend().stream("GenerateStream", generate, call):
            yield gateway_pb2.DraftReplyResponse(
                text=delta.text,
                finish_reason=delta.finish_reason,
                usage=fields.usage(delta.usage) if delta.HasField("usage") else None,
                template=template.name if delta.finish_reason else "",
                model=delta.model,
                model_version=delta.version,
            )

    def write_marketing_copy(
        self, request: gateway_pb2.WriteMarketingCopyRequest, call: CallContext
    ) -> AsyncIterator[gateway_pb2.WriteMarketingCopyResponse]:
        return self._marketing.write(request, call)

    async def analyze_reviews(
        self, request: gateway_pb2.AnalyzeReviewsRequest, call: CallContext
    ) -> gateway_pb2.AnalyzeReviewsResponse:
        return await self._reviews.analyze(request, call)

    def _generator_backend(self) -> Backend:
        return configured_generator(self._generator)

    def _check_texts(self, model: str, texts: Sequence[str]) -> None:
        check_texts(model, texts, self._limits.max_texts_per_request, self._limits.max_text_chars)


def _seed(request: gateway_pb2.DescribeProductRequest | gateway_pb2.DraftReplyRequest) -> int | None:
    return request.seed if request.HasField("seed") else None
