"""WriteMarketingCopy: variants of copy for one channel, generated together (the generator batches them) and
streamed as they are written, each within the channel's character limit."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeAlias

from ecomserve.gateway.v1 import gateway_pb2
from ecomserve.generator.v1 import generator_pb2

from services.core import errors
from services.gateway import fields
from services.gateway.backends import Backend, CallContext
from services.gateway.templates import PromptTemplate, PromptTemplates

OPERATION = "marketing_copy"  # one template per channel: marketing_copy/<channel>/v<N>.toml
MAX_VARIANTS = 8
MAX_AUDIENCE_CHARS = 200
SEEDS = 2**64  # seeds are uint64 on the wire; variant i's seed wraps around
LAST_SPACE = re.compile(r"\s+\S*\Z")  # the space after the last whole word, and the word still being written


class WordBoundedText:
    """A generated text let out in whole words, so that what was let out never has to be taken back: leading
    space is dropped, a word is let out once the space after it arrives, and nothing past `max_chars` (0: no
    limit) is let out; the text is then cut at the last word boundary that fits and `cut` is set. `text` is
    everything let out so far."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.text = ""
        self.cut = False
        self._pending = ""

    def feed(self, piece: str) -> str:
        """The part of the text that `piece` completes (possibly nothing)."""
        if self.cut:
            return ""
        pending = self._pending + piece
        if not self.text:
            pending = pending.lstrip()
        tail = LAST_SPACE.search(pending)
        if tail is None:
            self._pending = pending
            return ""
        self._pending = pending[tail.start() :]
        return self._let_out(pending[: tail.start()])

    def finish(self) -> str:
        """The rest, once the model has finished (trailing space dropped)."""
        if self.cut:
            return ""
        rest, self._pending = self._pending.rstrip(), ""
        return self._let_out(rest)

    def _let_out(self, words: str) -> str:
        text = self.text + words
        if self.max_chars and len(text) > self.max_chars:
            text = fields.cut_at_word(text, self.max_chars)
            self.cut = True
        released = text[len(self.text) :]
        self.text = text
        return released


class MarketingCopyWriter:
    """Renders the channel's template once and generates every variant as its own generator stream (seed, seed
    + 1, ...), concurrently, so the generator's continuous batching decodes them together. The first error of any
    variant fails the call and cancels the others; so does the caller going away."""

    def __init__(self, generator: Callable[[], Backend], generator_model: str, templates: PromptTemplates) -> None:
        self._generator = generator
        self._generator_model = generator_model
        self._templates = templates

    @staticmethod
    def check(templates: PromptTemplates) -> None:
        """Every channel's template has a [length] table (ValueError naming the template otherwise)."""
        for channel in templates.kinds(OPERATION):
            for template in templates.versions(f"{OPERATION}/{channel}"):
                if template.length is None:
                    raise ValueError(f"prompt template {template.name} needs a [length] table")

    def channels(self) -> list[str]:
        return self._templates.kinds(OPERATION)

    async def write(
        self, request: gateway_pb2.WriteMarketingCopyRequest, call: CallContext
    ) -> AsyncIterator[gateway_pb2.WriteMarketingCopyResponse]:
        product = fields.product(request)
        fields.limit("audience", request.audience, MAX_AUDIENCE_CHARS)
        tone = fields.tone(request.tone)
        template = self._template(request.channel, request.template_version)
        length = template.length
        assert length is not None  # checked when the templates were loaded
        max_words = fields.words("max_words", request.max_words, length.default_words, 1, length.max_words)
        count = request.variants or 1
        if not 1 <= count <= MAX_VARIANTS:
            raise errors.InvalidArgument(f"variants must be 1..{MAX_VARIANTS} (0 means 1), got {count}")
        messages = template.render(
            product=product, audience=request.audience.strip(), tone=tone, max_words=max_words, channel=request.channel
        )
        first_seed = request.seed if request.HasField("seed") else secrets.randbits(63)
        generator = self._generator()
        events: asyncio.Queue[Event] = asyncio.Queue()
        variants = [
            asyncio.create_task(
                _write_variant(
                    generator,
                    template.generation(self._generator_model, messages, max_words, (first_seed + index) % SEEDS),
                    index,
                    length.max_chars,
                    call,
                    events,
                )
            )
            for index in range(count)
        ]
        try:
            last = gateway_pb2.WriteMarketingCopyResponse(template=template.name)
            finished: list[gateway_pb2.MarketingVariant] = []
            while len(finished) < count:
                event = await events.get()
                if isinstance(event, BaseException):
                    raise event
                if isinstance(event, VariantDone):
                    finished.append(event.variant)
                    last.model, last.model_version = event.model, event.model_version
                    continue
                yield event
            last.variants.extend(sorted(finished, key=lambda variant: variant.index))
            yield last
        finally:
            for variant in variants:
                variant.cancel()
            await asyncio.gather(*variants, return_exceptions=True)

    def _template(self, channel: str, version: int) -> PromptTemplate:
        channels = self.channels()
        if channel not in channels:
            known = ", ".join(channels)
            raise errors.InvalidArgument(
                f"channel is required, one of: {known}"
                if not channel
                else f"channel {channel!r} is not one of: {known}"
            )
        return self._templates.get(f"{OPERATION}/{channel}", version)


@dataclass(frozen=True)
class VariantDone:
    variant: gateway_pb2.MarketingVariant
    model: str
    model_version: int


Event: TypeAlias = gateway_pb2.WriteMarketingCopyResponse | VariantDone | BaseException


async def _write_variant(
    generator: Backend,
    request: generator_pb2.GenerateRequest,
    index: int,
    max_chars: int,
    call: CallContext,
    events: asyncio.Queue[Event],
) -> None:
    """Streams one variant's pieces into `events`, then its VariantDone (or the error that ended it). After a cut
    the generation still runs to its end, whose usage the caller is billed for."""
    try:
        text = WordBoundedText(max_chars)
        final = None
        async for delta in generator.stream("GenerateStream", request, call):
            if piece := text.feed(delta.text):
                events.put_nowait(gateway_pb2.WriteMarketingCopyResponse(variant=index, text=piece))
            if delta.finish_reason:
                final = delta
        if piece := text.finish():
            events.put_nowait(gateway_pb2.WriteMarketingCopyResponse(variant=index, text=piece))
        if final is None:
            raise RuntimeError("the generator's stream ended without its final message")
        variant = gateway_pb2.MarketingVariant(
            index=index,
            seed=request.sampling.seed,
            text=text.text,
            finish_reason=gateway_pb2.FINISH_REASON_LENGTH if text.cut else final.finish_reason,
            usage=fields.usage(final.usage),
            cut_to_limit=text.cut,
        )
        events.put_nowait(VariantDone(variant, final.model, final.version))
    except BaseException as error:  # the writer raises it, and gathers this task: never "never retrieved"
        events.put_nowait(error)
        raise
