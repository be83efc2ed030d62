"""AnalyzeReviews: reviews classified in calls within the classifier's limits, summed up per label, checked
against their star ratings, and (on request) summarized by the generator from as many reviews as fit its input."""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from types import SimpleNamespace as Namespace
from typing import Any

from ecomserve.classifier.v1 import classifier_pb2
from ecomserve.gateway.v1 import gateway_pb2
from ecomserve.generator.v1 import generator_pb2

from services.core import errors
from services.core.tasks import all_or_first_error
from services.gateway import fields
from services.gateway.backends import Backend, CallContext
from services.gateway.templates import PromptTemplate, PromptTemplates

MAX_REVIEWS = 200
MAX_REVIEW_ID_CHARS = 64
SUMMARY_OPERATION = "summarize_reviews"
DEFAULT_SUMMARY_WORDS = 120
# A review's share of the summary prompt at most (cut at a word), so that one long review cannot crowd out the rest.
REVIEW_CHARS = 600
# Prompt length is estimated at the gateway, which has no tokenizer: BPE vocabularies average about 4 characters
# per token on English, 3 leaves room for other languages; the chat template's own tokens come on top.
CHARS_PER_TOKEN = 3.0
CHAT_TEMPLATE_TOKENS = 32
TEXT_INDEX = re.compile(r"\btexts\[(\d+)\]")
POSITIVE, NEGATIVE = "positive", "negative"


@dataclass(frozen=True)
class ReviewsConfig:
    """Which classifier model answers when a request names none, and how many texts one Classify call may
    carry (the classifier replicas' max_texts_per_request)."""

    default_model: Callable[[], str]  # the routing table's model, as the table is now
    max_texts_per_call: int
    max_text_chars: int


class ReviewAnalyzer:
    """Classification and summary run side by side (the summary does not depend on the labels); the first error
    of either fails the call and cancels the other."""

    def __init__(
        self,
        classifier: Backend,
        generator: Callable[[], Backend],
        generator_model: str,
        templates: PromptTemplates,
        config: ReviewsConfig,
    ) -> None:
        self._classifier = classifier
        self._generator = generator
        self._generator_model = generator_model
        self._templates = templates
        self._config = config

    async def analyze(
        self, request: gateway_pb2.AnalyzeReviewsRequest, call: CallContext
    ) -> gateway_pb2.AnalyzeReviewsResponse:
        self._check(request)
        response = gateway_pb2.AnalyzeReviewsResponse()
        jobs = [self._classify_into(response, request, call)]
        if request.summarize:
            template = self._templates.get(SUMMARY_OPERATION, request.template_version)
            max_words = fields.words("summary_max_words", request.summary_max_words, DEFAULT_SUMMARY_WORDS)
            jobs.append(self._summarize_into(response.summary, request, template, max_words, call))
        await all_or_first_error(*jobs)
        return response

    def _check(self, request: gateway_pb2.AnalyzeReviewsRequest) -> None:
        if not request.reviews:
            raise errors.InvalidArgument("reviews is empty; send 1 to 200 reviews")
        if len(request.reviews) > MAX_REVIEWS:
            raise errors.InvalidArgument(f"reviews has {len(request.reviews)} entries, over the limit of {MAX_REVIEWS}")
        for index, review in enumerate(request.reviews):
            fields.required_text(f"reviews[{index}].text", review.text, self._config.max_text_chars)
            fields.limit(f"reviews[{index}].id", review.id, MAX_REVIEW_ID_CHARS)
            if review.HasField("rating") and not 1 <= review.rating <= 5:
                raise errors.InvalidArgument(f"reviews[{index}].rating must be 1..5, got {review.rating}")
        if request.top_k < 0:
            raise errors.InvalidArgument(f"top_k must be >= 0, got {request.top_k}")
        fields.limit("product", request.product, fields.MAX_TITLE_CHARS)

    async def _classify_into(
        self,
        response: gateway_pb2.AnalyzeReviewsResponse,
        request: gateway_pb2.AnalyzeReviewsRequest,
        call: CallContext,
    ) -> None:
        texts = [review.text for review in request.reviews]
        calls = math.ceil(len(texts) / self._config.max_texts_per_call)
        size = math.ceil(len(texts) / calls)  # even calls: the replicas answer them side by side
        model = request.model or self._config.default_model()

        def classify(start: int, version: int) -> Coroutine[Any, Any, classifier_pb2.ClassifyResponse]:
            chunk = classifier_pb2.ClassifyRequest(
                # top_k 0: every label, which the aggregate needs
                model=model,
                version=version,
                texts=texts[start : start + size],
                top_k=0,
                truncate=request.truncate,
            )
            return self._classify(chunk, start, call)

        starts = range(0, len(texts), size)
        answers = await all_or_first_error(*(classify(start, request.version) for start in starts))
        newest = max(answer.version for answer in answers)
        stale = [index for index, answer in enumerate(answers) if answer.version != newest]
        if stale:  # replicas in the middle of a rollout: every review gets the same version's answer
            redone = await all_or_first_error(*(classify(starts[index], newest) for index in stale))
            for index, answer in zip(stale, redone, strict=True):
                answers[index] = answer
        response.model, response.version = answers[0].model, newest
        _aggregate(response, request, [result for answer in answers for result in answer.results])

    async def _classify(
        self, chunk: classifier_pb2.ClassifyRequest, start: int, call: CallContext
    ) -> classifier_pb2.ClassifyResponse:
        """One Classify call for the reviews from `start` on."""
        try:
            return await self._classifier.unary("Classify", chunk, call)
        except errors.InvalidArgument as error:  # the classifier counts from this call's first text
            message = TEXT_INDEX.sub(lambda match: f"reviews[{start + int(match.group(1))}].text", str(error))
            raise errors.InvalidArgument(message) from None

    async def _summarize_into(
        self,
        summary: gateway_pb2.ReviewSummary,
        request: gateway_pb2.AnalyzeReviewsRequest,
        template: PromptTemplate,
        max_words: int,
        call: CallContext,
    ) -> None:
        generator = self._generator()
        budget = await self._input_tokens(generator, call) - CHAT_TEMPLATE_TOKENS
        reviews = [
            Namespace(text=_shorten(review.text.strip(), REVIEW_CHARS), rating=review.rating or None)
            for review in request.reviews
        ]

        def prompt(count: int) -> list[tuple[str, str]]:
            return template.render(reviews=reviews[:count], product=request.product.strip(), max_words=max_words)

        used = _most_that_fit(len(reviews), lambda count: _estimated_tokens(prompt(count)) <= budget)
        if used == 0:
            raise errors.InvalidArgument(
                f"the generator's max_input_tokens ({budget + CHAT_TEMPLATE_TOKENS}) holds no review with the "
                f"{template.name} prompt; ask without summarize"
            )
        seed = request.seed if request.HasField("seed") else secrets.randbits(63)
        while True:
            generate = template.generation(self._generator_model, prompt(used), max_words, seed)
            try:
                answer = await generator.unary("Generate", generate, call)
                break
            except errors.InvalidArgument as error:
                # The estimate ran over (a language with fewer characters per token): halve until it fits.
                if "max_input_tokens" not in str(error) or used == 1:
                    raise
                used //= 2
        summary.text = answer.text.strip()
        summary.reviews_used = used
        summary.finish_reason = answer.finish_reason  # type: ignore[assignment]
        summary.usage.CopyFrom(fields.usage(answer.usage))
        summary.template, summary.model, summary.model_version = template.name, answer.model, answer.version

    async def _input_tokens(self, generator: Backend, call: CallContext) -> int:
        """The longest prompt the generator model takes, in tokens (its default version's)."""
        listed = await generator.unary("ListModels", generator_pb2.ListModelsRequest(), call)
        for model in listed.models:
            if model.name == self._generator_model and model.is_default:
                return int(model.max_input_tokens)
        raise errors.Unavailable(f"the generator backend does not serve {self._generator_model!r}")


def _aggregate(
    response: gateway_pb2.AnalyzeReviewsResponse,
    request: gateway_pb2.AnalyzeReviewsRequest,
    results: Sequence[classifier_pb2.Classification],
) -> None:
    """Per review its top_k labels and whether its rating disagrees; per label its count and mean score."""
    labels = {label.label for label in results[0].labels}
    response.rating_checked = {POSITIVE, NEGATIVE} <= {label.lower() for label in labels}
    counts = dict.fromkeys(labels, 0)
    score_sums = dict.fromkeys(labels, 0.0)
    for index, (review, result) in enumerate(zip(request.reviews, results, strict=True)):
        best = result.labels[0].label
        counts[best] += 1
        for label in result.labels:
            score_sums[label.label] += label.score
        disagrees = response.rating_checked and review.HasField("rating") and _contradicts(best, review.rating)
        if disagrees:
            response.rating_disagreements.append(index)
        kept = result.labels[: request.top_k] if request.top_k else result.labels
        response.results.append(
            gateway_pb2.ReviewResult(
                id=review.id,
                labels=[gateway_pb2.LabelScore(label=label.label, score=label.score) for label in kept],
                token_count=result.token_count,
                truncated=result.truncated,
                disagrees_with_rating=disagrees,
            )
        )
    stats = [
        gateway_pb2.LabelStats(label=label, count=count, mean_score=score_sums[label] / len(results))
        for label, count in counts.items()
        if count
    ]
    response.labels.extend(sorted(stats, key=lambda stat: (-stat.count, -stat.mean_score, stat.label)))


def _contradicts(label: str, rating: int) -> bool:
    """A best label that says the opposite of the stars: negative with 4-5, positive with 1-2 (3 is neither)."""
    label = label.lower()
    return (label == NEGATIVE and rating >= 4) or (label == POSITIVE and rating <= 2)


def _shorten(text: str, max_chars: int) -> str:
    cut = fields.cut_at_word(text, max_chars)
    return cut if cut == text else cut + " ..."


def _estimated_tokens(messages: list[tuple[str, str]]) -> int:
    return math.ceil(sum(len(content) for _, content in messages) / CHARS_PER_TOKEN)


def _most_that_fit(total: int, fits: Callable[[int], bool]) -> int:
    """The largest count in 0..total for which `fits` holds, `fits` being true up to some count and false after."""
    low, high = 0, total
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low
