"""Sequence: the state of one generation request from its prompt to its finish reason.

The scheduler's worker thread advances it one token at a time (sampling, detokenizing, finish checks); the event
loop hands its text deltas to the caller through `events` and ends it early (cancelled, deadline, failed). The two
never touch it at the same time: the loop does both only between steps.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import time
from dataclasses import dataclass

import numpy as np
from opentelemetry.context import Context
from tokenizers import Tokenizer

from services.generator.detokenizer import IncrementalDetokenizer
from services.generator.sampling import Sampler, SamplingParams

_ids = itertools.count(1)


class FinishReason(enum.Enum):
    LENGTH = "length"
    STOP_SEQUENCE = "stop_sequence"
    END_OF_TEXT = "end_of_text"


class Outcome(enum.Enum):
    """How a sequence ended without finishing (its value is the finish_reason label of the metrics)."""

    CANCELLED = "cancelled"  # the caller went away
    DEADLINE = "deadline"  # the deadline passed before it started
    FAILED = "error"  # the step that ran it failed


@dataclass(frozen=True)
class TextDelta:
    """New text of a sequence; `finish` is set on its last delta."""

    text: str
    finish: FinishReason | None = None


class Sequence:
    """One request's generation. `max_length` caps prompt + generated tokens at the model's context."""

    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        tokenizer: Tokenizer,
        eos_ids: frozenset[int],
        vocab_size: int,
        max_length: int,
        deadline: float | None = None,
    ) -> None:
        self.id = next(_ids)
        self.prompt_ids = prompt_ids
        self.params = params
        self.deadline = deadline  # absolute loop.time() by which it must have started, or None
        self.received_at = time.perf_counter()
        self.admitted_at: float | None = None  # when its prefill was scheduled
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.cached_prompt_tokens = 0  # prompt tokens whose KV came from the prefix cache
        self.output_ids: list[int] = []
        self.last_token = prompt_ids[-1]
        self.finish: FinishReason | None = None
        self.ended: Outcome | None = None
        self.events: asyncio.Queue[TextDelta | BaseException] = asyncio.Queue()
        self.trace: Context | None = None  # its call's trace context, when tracing is on
        self._sampler = Sampler(params, prompt_ids, vocab_size)
        self._text = IncrementalDetokenizer(tokenizer, params.stop)
        self._eos_ids = eos_ids
        self._max_generated = min(params.max_new_tokens, max_length - len(prompt_ids))

    @property
    def active(self) -> bool:
        return self.finish is None and self.ended is None

    def end(self, outcome: Outcome) -> None:
        """End without finishing; the caller gets no more deltas."""
        self.ended = outcome

    @property
    def reserved_tokens(self) -> int:
        """Cache rows this sequence may grow to: what the token budget of the running batch counts."""
        return len(self.prompt_ids) + self._max_generated

    def advance(self, logits: np.ndarray) -> TextDelta | None:
        """Choose the next token from this sequence's logits row; the delta to publish, if any."""
        token = self._sampler.choose(logits)
        now = time.perf_counter()
        self.output_ids.append(token)
        self.last_token = token
        if self.first_token_at is None:
            self.first_token_at = now
        if token in self._eos_ids:
            self.finish = FinishReason.END_OF_TEXT
        else:
            self._text.add(token)
            if self._text.stopped:
                self.finish = FinishReason.STOP_SEQUENCE
        if self.finish is None and self.generated >= self._max_generated:
            self.finish = FinishReason.LENGTH
        if self.finish is not None:
            self.finished_at = now
        delta = self._text.take(final=self.finish is not None)
        return TextDelta(delta, self.finish) if delta or self.finish else None

    @property
    def generated(self) -> int:
        return len(self.output_ids)

    @property
    def computed_ids(self) -> list[int]:
        """The tokens whose KV its batch row holds: the prompt and every generated token but the newest."""
        return self.prompt_ids + self.output_ids[:-1]

    @property
    def text(self) -> str:
        return self._text.text

    def time_to_first_token_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.received_at

    def time_per_output_token_s(self) -> float | None:
        if self.first_token_at is None or self.finished_at is None or self.generated < 2:
            return None
        return (self.finished_at - self.first_token_at) / (self.generated - 1)
