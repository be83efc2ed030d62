"""MessageClassifier: RouteMessage's classifications, coalesced into shared Classify calls.

Every RouteMessage classifies one text with the same model, top_k and truncation. Sent one by one, each message
costs a gRPC call on the gateway's client side and on the classifier's server side, and on a busy CPU those calls
cost more than the gateway's own work. So messages queue in a DynamicBatcher while `max_calls` Classify calls are
in flight, and the messages that queued meanwhile go out together as one call (the classifier batches its texts
with everything else it has). A message that finds a call slot free goes out at once, alone: coalescing never
waits to fill a call, it only groups messages that would have waited anyway.

A coalesced call carries the messages' request ids and the latest of their deadlines; each caller still waits
no longer than its own deadline (minus the gateway's margin), and a backend error reaches every caller of the call.
A classifier that refuses a coalesced call as INVALID_ARGUMENT (it allows fewer texts per request) gets the
messages one by one instead, so that each caller gets its own answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ecomserve.classifier.v1 import classifier_pb2

from services.core import errors, metrics
from services.core.batcher import DynamicBatcher
from services.gateway.backends import Backend, CallContext
from services.gateway.routing import RoutingTable

log = logging.getLogger(__name__)

# The coalesced call's x-request-id lists the callers' ids up to this many characters (gRPC refuses metadata over
# 8 KiB by default; a caller's id may be 128 characters).
MAX_REQUEST_IDS_CHARS = 2048
# Messages waiting for a call slot; past it RouteMessage answers RESOURCE_EXHAUSTED (the rate limits per API key
# normally stop a flood well before).
MAX_WAITING_MESSAGES = 10_000


@dataclass(frozen=True)
class ClassifiedMessage:
    labels: list[classifier_pb2.LabelScore]  # best first, at most the routing table's top_k
    model: str
    version: int


class MessageClassifier:
    """`classify(text, call)` for RouteMessage; `start` inside the event loop, `aclose` when the gateway stops
    (messages already queued are still sent)."""

    def __init__(
        self, backend: Backend, routing: Callable[[], RoutingTable], *, max_texts_per_call: int, max_calls: int
    ) -> None:
        self._backend = backend
        self._routing = routing  # the table in force (it is re-read when its file changes)
        self._batcher: DynamicBatcher[tuple[str, CallContext], ClassifiedMessage] = DynamicBatcher(
            self._classify_together,
            max_batch_size=max_texts_per_call,
            max_wait_s=0.0,
            max_queue_size=MAX_WAITING_MESSAGES,
            max_concurrent_batches=max_calls,
        )

    def start(self) -> None:
        self._batcher.start()

    async def aclose(self) -> None:
        await self._batcher.aclose()

    async def classify(self, text: str, call: CallContext) -> ClassifiedMessage:
        timeout = None if call.deadline is None else self._backend.remaining_time(call)
        try:
            return await asyncio.wait_for(self._batcher.submit((text, call), call.deadline), timeout)
        except TimeoutError:
            raise errors.DeadlineExceeded(
                f"deadline exceeded while the {self._backend.name} backend worked on the request"
            ) from None

    async def _classify_together(
        self, messages: list[tuple[str, CallContext]]
    ) -> list[ClassifiedMessage | BaseException]:
        try:
            return list(await self._classify(messages))
        except errors.InvalidArgument as refused:
            if len(messages) == 1:
                raise
            # The gateway validated every message, so a classifier that refuses several together most likely
            # allows fewer texts per request than --route-max-texts-per-call: send them one by one instead.
            log.warning(
                "the %s backend refused %d messages in one call (%s); sending them one by one: keep "
                "--route-max-texts-per-call within the classifiers' --max-texts-per-request",
                self._backend.name,
                len(messages),
                refused,
            )
            alone = await asyncio.gather(*(self._classify([message]) for message in messages), return_exceptions=True)
            return [result[0] if isinstance(result, list) else result for result in alone]

    async def _classify(self, messages: list[tuple[str, CallContext]]) -> list[ClassifiedMessage]:
        deadlines = [call.deadline for _, call in messages]
        together = CallContext(
            caller=",".join(sorted({call.caller for _, call in messages})),
            request_id=joined_request_ids([call.request_id for _, call in messages]),
            deadline=None if None in deadlines else max(d for d in deadlines if d is not None),
            trace=messages[0][1].trace,
        )
        routing = self._routing()
        # A long message is cut to the model's length rather than refused: routing must not fail on it.
        request = classifier_pb2.ClassifyRequest(
            model=routing.model, texts=[text for text, _ in messages], top_k=routing.top_k, truncate=True
        )
        metrics.COALESCED_TEXTS.labels(self._backend.name, "Classify").observe(len(messages))
        response = await self._backend.unary("Classify", request, together)
        return [ClassifiedMessage(list(result.labels), response.model, response.version) for result in response.results]


def joined_request_ids(ids: list[str]) -> str:
    """The ids, comma-separated, and how many more when they would pass MAX_REQUEST_IDS_CHARS."""
    joined = ""
    for count, request_id in enumerate(ids):
        if len(joined) + len(request_id) + 1 > MAX_REQUEST_IDS_CHARS:
            return f"{joined},+{len(ids) - count} more"
        joined = f"{joined},{request_id}" if joined else request_id
    return joined
