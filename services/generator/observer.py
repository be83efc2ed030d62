"""SchedulerMetrics: what the generator's scheduler reports to Prometheus, recorded on the event loop from the
policy's state and the executor's step results."""

from __future__ import annotations

from services.core import metrics
from services.generator.executor import StepResult
from services.generator.policy import SchedulingPolicy
from services.generator.prefix_cache import PrefixCache
from services.generator.sequence import Outcome, Sequence

SERVICE = "generator"


class SchedulerMetrics:
    def __init__(self, policy: SchedulingPolicy, prefix_cache: PrefixCache, model_labels: tuple[str, str]) -> None:
        self._labels = (SERVICE, *model_labels)
        self._max_running = policy.budgets.max_running_sequences
        labels = self._labels
        metrics.RUNNING_SEQUENCES.labels(*labels).set_function(lambda: sum(1 for s in policy.running if s.active))
        metrics.WAITING_SEQUENCES.labels(*labels).set_function(lambda: len(policy.waiting))
        metrics.QUEUE_DEPTH.labels(*labels).set_function(lambda: policy.queue_depth)
        metrics.QUEUE_CAPACITY.labels(*labels).set(policy.budgets.max_waiting_requests)
        metrics.PREFIX_CACHE_BYTES.labels(*labels).set_function(lambda: prefix_cache.bytes_held)

    def close(self) -> None:
        """The scheduler stopped (its version is unloaded): drop the gauges that read its state."""
        gauges = (
            metrics.RUNNING_SEQUENCES,
            metrics.WAITING_SEQUENCES,
            metrics.QUEUE_DEPTH,
            metrics.QUEUE_CAPACITY,
            metrics.PREFIX_CACHE_BYTES,
        )
        metrics.forget_version(self._labels, *gauges)

    def step(self, result: StepResult) -> None:
        labels = self._labels
        if not result.rows:
            return
        metrics.STEP_DURATION.labels(*labels, result.phase).observe(result.duration_s)
        metrics.GENERATED_TOKENS.labels(*labels).inc(result.sampled)
        if result.phase == "prefill":
            metrics.PROMPT_TOKENS.labels(*labels).inc(result.prompt_tokens)
            metrics.PREFIX_CACHE_TOKENS.labels(*labels, "hit").inc(result.cached_prompt_tokens)
            metrics.PREFIX_CACHE_TOKENS.labels(*labels, "miss").inc(result.prompt_tokens - result.cached_prompt_tokens)
        else:
            metrics.BATCH_SIZE.labels(*labels).observe(result.rows)
            metrics.BATCH_OCCUPANCY.labels(*labels).observe(result.rows / self._max_running)

    def first_token(self, sequence: Sequence) -> None:
        if (ttft := sequence.time_to_first_token_s()) is not None:
            metrics.TIME_TO_FIRST_TOKEN.labels(*self._labels).observe(ttft)

    def finished(self, sequence: Sequence) -> None:
        assert sequence.finish is not None
        metrics.FINISHED_SEQUENCES.labels(*self._labels, sequence.finish.value).inc()
        if (per_token := sequence.time_per_output_token_s()) is not None:
            metrics.TIME_PER_OUTPUT_TOKEN.labels(*self._labels).observe(per_token)

    def ended(self, sequences: list[Sequence], outcome: Outcome) -> None:
        if sequences:
            metrics.FINISHED_SEQUENCES.labels(*self._labels, outcome.value).inc(len(sequences))

    def stopped_step(self) -> None:
        metrics.STOPPED_STEPS.labels(*self._labels).inc()
