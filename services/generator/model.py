"""GeneratorModel: prompt preparation (chat template, tokenization, limits) and streaming around one exported
decoder version and its ContinuousScheduler."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tokenizers import Tokenizer

from services.core import tracing
from services.core.errors import InvalidArgument
from services.core.manifest import TOKENIZER_FILE
from services.core.repository import ModelVersion
from services.core.runner import OnnxRunner
from services.generator.batch import DecodeBatch
from services.generator.chat import ChatTemplate
from services.generator.decoder import DecoderRunner
from services.generator.policy import SchedulerBudgets
from services.generator.prefix_cache import PrefixCache
from services.generator.sampling import SamplingParams
from services.generator.scheduler import ContinuousScheduler
from services.generator.sequence import Sequence, TextDelta

log = logging.getLogger(__name__)
WARMUP_PROMPTS = ("warming up", "warming up the decoder with a slightly longer prompt")


@dataclass(frozen=True)
class Prompt:
    """Exactly one of: raw text, or chat messages as (role, content)."""

    text: str | None = None
    messages: tuple[tuple[str, str], ...] = ()


class GeneratorModel:
    """One served generator version. `submit` validates and queues a request; `stream` yields its text deltas until
    the finishing one, and cancels the sequence if the caller stops listening. Raises InvalidArgument (prompt
    too long, no chat template for messages), QueueFull, DeadlineExceeded, Unavailable and ModelFailure."""

    def __init__(
        self,
        version: ModelVersion,
        runner: OnnxRunner,
        budgets: SchedulerBudgets,
        max_input_tokens: int,
        prepare_pool: ThreadPoolExecutor,
        on_fatal: Callable[[str], None],
        prefix_cache_bytes: int,
    ) -> None:
        manifest = version.manifest
        self.version = version
        self.runner = runner
        self.max_sequence_length = manifest.max_sequence_length
        self.max_input_tokens = min(max_input_tokens, manifest.max_sequence_length - 1)
        self.tokenizer = Tokenizer.from_file(str(version.folder / TOKENIZER_FILE))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.chat_template = ChatTemplate.load(version.folder, manifest.special_tokens)
        special = manifest.special_tokens
        self.eos_ids = frozenset(int(i) for i in special.get("eos_token_ids") or [])
        pad_id = special.get("pad_token_id")
        self.pad_id = 0 if pad_id is None else int(pad_id)
        self.vocab_size = int(manifest.outputs[0].shape[-1])
        self.decoder = DecoderRunner(runner, manifest)
        self._label = version.label
        self._prepare_pool = prepare_pool
        self.scheduler = ContinuousScheduler(
            self.decoder, budgets, self.pad_id, version, on_fatal, PrefixCache(prefix_cache_bytes)
        )

    def start_serving(self) -> None:
        self.scheduler.start()

    async def aclose(self) -> None:
        await self.scheduler.aclose()

    def describe(self) -> str:
        return f"{self.decoder.num_layers} layers, max {self.max_input_tokens} input tokens"

    def warm_up(self) -> None:
        """A prefill and a decode step on a two-row batch, so the first request skips onnxruntime's lazy setup."""
        params = SamplingParams(max_new_tokens=2, seed=0)
        sequences = [
            self._sequence(self.tokenizer.encode(p).ids or [self.pad_id], params, None) for p in WARMUP_PROMPTS
        ]
        batch, _ = DecodeBatch.prefill(self.decoder, sequences, self.pad_id)
        batch.decode(self.decoder)

    async def submit(self, prompt: Prompt, params: SamplingParams, deadline: float | None) -> Sequence:
        """Tokenize (off the event loop) and queue; the returned sequence's deltas come from `stream`."""
        loop = asyncio.get_running_loop()
        prompt_ids = await loop.run_in_executor(self._prepare_pool, self.encode, prompt)
        sequence = self._sequence(prompt_ids, params, deadline)
        sequence.trace = tracing.current_context()
        self.scheduler.submit(sequence)
        return sequence

    async def stream(self, sequence: Sequence) -> AsyncIterator[TextDelta]:
        try:
            while True:
                event = await sequence.events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if event.finish is not None:
                    return
        finally:
            self.scheduler.cancel(sequence)  # no-op once finished; otherwise the caller left mid-way
            _trace_sequence(sequence)

    def encode(self, prompt: Prompt) -> list[int]:
        """Prompt token ids: chat messages through the model's template, raw text as it is."""
        if prompt.messages:
            if self.chat_template is None:
                raise InvalidArgument(
                    f"model {self._label} has no chat template; send a raw prompt instead of messages"
                )
            ids = self.tokenizer.encode(self.chat_template.render(list(prompt.messages)), add_special_tokens=False).ids
            what = "messages"
        else:
            ids = self.tokenizer.encode(prompt.text or "").ids
            what = "prompt"
        if not ids:
            raise InvalidArgument(f"{what} encodes to no tokens; send some text")
        if len(ids) > self.max_input_tokens:
            raise InvalidArgument(
                f"{what} is {len(ids)} tokens; the limit is max_input_tokens={self.max_input_tokens}; shorten it"
            )
        return ids

    def _sequence(self, prompt_ids: list[int], params: SamplingParams, deadline: float | None) -> Sequence:
        return Sequence(
            prompt_ids,
            params,
            self.tokenizer,
            self.eos_ids,
            self.vocab_size,
            self.max_sequence_length,
            deadline,
        )


def _trace_sequence(sequence: Sequence) -> None:
    """When its call is traced: the sequence's wait for a slot, its prefill and its decode, as they happened."""
    if sequence.trace is None:
        return
    now = time.perf_counter()
    admitted = sequence.admitted_at or now
    tracing.span_between("generator.queue", sequence.trace, sequence.received_at, admitted)
    if sequence.admitted_at is None:
        return
    first = sequence.first_token_at or now
    tracing.span_between(
        "generator.prefill", sequence.trace, admitted, first, **{"prompt_tokens": len(sequence.prompt_ids)}
    )
    stop = sequence.finish.value if sequence.finish else sequence.ended.value if sequence.ended else "cancelled"
    ttft = sequence.time_to_first_token_s()
    tracing.span_between(
        "generator.decode", sequence.trace, first, sequence.finished_at or now,
        **{"completion_tokens": sequence.generated, "time_to_first_token_ms": round((ttft or 0) * 1000, 2),
           "stop_reason": stop},
    )  # fmt: skip
