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
from ecomserve.generator.v1 import generator_pb2

from services.core import errors
from services.core.texts import check_texts
from services.gateway.backends import Backend, CallContext
from services.gateway.coalescing import MessageClassifier
from services.gateway.routing import RoutingTable
from services.gateway.templates import PromptTemplate, PromptTemplates

# Field limits beyond max_text_chars; the proto comments state them too.
MAX_CHANNEL_CHARS = 64
MAX_LOCALE_CHARS = 35
MAX_TITLE_CHARS = 200
MAX_CATEGORY_CHARS = 100
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_KEY_CHARS = 64
MAX_ATTRIBUTE_VALUE_CHARS = 256
MAX_TONE_CHARS = 32
MAX_ORDER_ITEMS = 20
MAX_SHORT_FIELD_CHARS = 64
MAX_STATUS_CHARS = 200
MIN_WORDS, MAX_WORDS = 10, 300
DEFAULT_DESCRIPTION_WORDS = 80
DEFAULT_REPLY_WORDS = 120
DEFAULT_TONE = "friendly"


@dataclass(frozen=True)
class OperationLimits:
    max_text_chars: int
    max_texts_per_request: int
    route_max_texts_per_call: int
    route_max_calls: int


class GatewayOperations:
    """RouteMessage, ClassifyTexts, EmbedTexts, DescribeProduct and DraftReply over the classifier and generator
    backends."""

    def __init__(
        self,
        classifier: Backend,
        generator: Backend | None,
        generator_model: str,
        routing: RoutingTable,
        templates: PromptTemplates,
        limits: OperationLimits,
    ) -> None:
        self._classifier = classifier
        self._messages = MessageClassifier(
            classifier, routing, max_texts_per_call=limits.route_max_texts_per_call, max_calls=limits.route_max_calls
        )
        self._generator = generator
        self._generator_model = generator_model
        self._routing = routing
        self._templates = templates
        self._limits = limits

    def start(self) -> None:
        """Inside the event loop, before the first call."""
        self._messages.start()

    async def aclose(self) -> None:
        """Once no call arrives any more: sends what is queued."""
        await self._messages.aclose()

    async def route_message(
        self, request: gateway_pb2.RouteMessageRequest, call: CallContext
    ) -> gateway_pb2.RouteMessageResponse:
        self._require_text("message", request.message)
        _limit("channel", request.channel, MAX_CHANNEL_CHARS)
        _limit("locale", request.locale, MAX_LOCALE_CHARS)
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
        if not request.title.strip():
            raise errors.InvalidArgument("title is required")
        _limit("title", request.title, MAX_TITLE_CHARS)
        _limit("category", request.category, MAX_CATEGORY_CHARS)
        _limit("tone", request.tone, MAX_TONE_CHARS)
        if len(request.attributes) > MAX_ATTRIBUTES:
            raise errors.InvalidArgument(f"attributes has {len(request.attributes)} entries, over {MAX_ATTRIBUTES}")
        for index, attribute in enumerate(request.attributes):
            if not attribute.key.strip() or not attribute.value.strip():
                raise errors.InvalidArgument(f"attributes[{index}] needs a non-empty key and value")
            _limit(f"attributes[{index}].key", attribute.key, MAX_ATTRIBUTE_KEY_CHARS)
            _limit(f"attributes[{index}].value", attribute.value, MAX_ATTRIBUTE_VALUE_CHARS)
        max_words = _words("max_words", request.max_words, DEFAULT_DESCRIPTION_WORDS)
        template = self._templates.get("describe_product", request.template_version)
        messages = template.render(
            product=Namespace(
                title=request.title.strip(),
                category=request.category.strip(),
                attributes=[Namespace(key=a.key.strip(), value=a.value.strip()) for a in request.attributes],
            ),
            tone=request.tone.strip() or DEFAULT_TONE,
            max_words=max_words,
        )
        generate = self._generation(template, messages, max_words, request.seed if request.HasField("seed") else None)
        response = await self._generator_backend().unary("Generate", generate, call)
        return gateway_pb2.DescribeProductResponse(
            description=response.text.strip(),
            finish_reason=response.finish_reason,
            usage=gateway_pb2.Usage(
                prompt_tokens=response.usage.prompt_tokens, completion_tokens=response.usage.completion_tokens
            ),
            template=template.name,
            model=response.model,
            model_version=response.version,
        )

    async def draft_reply(
        self, request: gateway_pb2.DraftReplyRequest, call: CallContext
    ) -> AsyncIterator[gateway_pb2.DraftReplyResponse]:
        self._require_text("message", request.message)
        _limit("agent_name", request.agent_name, MAX_SHORT_FIELD_CHARS)
        order = request.order if request.HasField("order") else None
        if order is not None:
            _limit("order.order_id", order.order_id, MAX_SHORT_FIELD_CHARS)
            _limit("order.status", order.status, MAX_STATUS_CHARS)
            if len(order.items) > MAX_ORDER_ITEMS:
                raise errors.InvalidArgument(f"order.items has {len(order.items)} entries, over {MAX_ORDER_ITEMS}")
            for index, item in enumerate(order.items):
                _limit(f"order.items[{index}].name", item.name, MAX_TITLE_CHARS)
                _limit(f"order.items[{index}].status", item.status, MAX_SHORT_FIELD_CHARS)
        max_words = _words("max_words", request.max_words, DEFAULT_REPLY_WORDS)
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
        generate = self._generation(template, messages, max_words, request.seed if request.HasField("seed") else None)
        async for delta in self._generator_backend().stream("GenerateStream", generate, call):
            yield gateway_pb2.DraftReplyResponse(
                text=delta.text,
                finish_reason=delta.finish_reason,
                usage=gateway_pb2.Usage(
                    prompt_tokens=delta.usage.prompt_tokens, completion_tokens=delta.usage.completion_tokens
                )
                if delta.HasField("usage")
                else None,
                template=template.name if delta.finish_reason else "",
                model=delta.model,
                model_version=delta.version,
            )

    def _generation(
        self, template: PromptTemplate, messages: list[tuple[str, str]], max_words: int, seed: int | None
    ) -> generator_pb2.GenerateRequest:
        sampling = template.sampling
        return generator_pb2.GenerateRequest(
            model=self._generator_model,
            messages=[generator_pb2.ChatMessage(role=role, content=content) for role, content in messages],
            sampling=generator_pb2.SamplingParameters(
                max_new_tokens=sampling.max_new_tokens(max_words),
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                repetition_penalty=sampling.repetition_penalty,
                stop=sampling.stop,
                seed=seed,
            ),
        )

    def _generator_backend(self) -> Backend:
        if self._generator is None:
            raise errors.Unavailable("no generator backend is configured on this gateway (--generator)")
        return self._generator

    def _check_texts(self, model: str, texts: Sequence[str]) -> None:
        check_texts(model, texts, self._limits.max_texts_per_request, self._limits.max_text_chars)

    def _require_text(self, field: str, text: str) -> None:
        if not text.strip():
            raise errors.InvalidArgument(f"{field} is empty")
        _limit(field, text, self._limits.max_text_chars)


def _limit(field: str, value: str, max_chars: int) -> None:
    if len(value) > max_chars:
        raise errors.InvalidArgument(f"{field} has {len(value)} characters, over the limit of {max_chars}")


def _words(field: str, value: int, default: int) -> int:
    if value == 0:
        return default
    if not MIN_WORDS <= value <= MAX_WORDS:
        raise errors.InvalidArgument(f"{field} must be {MIN_WORDS}..{MAX_WORDS} (0 means {default}), got {value}")
    return value
