"""The generator's scheduling policy, driven step by step with made-up model outputs (no model, no threads):
admission, budgets, order, the stop-the-decode rule, and cancellation, deadlines and failures as distinct
outcomes."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from services.core.errors import QueueFull
from services.generator.policy import Decode, Prefill, SchedulerBudgets, SchedulingPolicy
from services.generator.sampling import SamplingParams
from services.generator.sequence import FinishReason, Outcome, Sequence

VOCAB = {"[eos]": 0, "a": 1, "b": 2, "c": 3}
EOS, WORD = 0, 1


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    words = Tokenizer(models.WordLevel(VOCAB, unk_token="a"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    return words


def budgets(**overrides: int) -> SchedulerBudgets:
    values = {"max_running_sequences": 2, "max_batch_total_tokens": 100, "max_prefill_tokens": 100}
    return SchedulerBudgets(**(values | {"max_waiting_requests": 2} | overrides))


def sequence(tokenizer: Tokenizer, prompt: int = 3, new: int = 4, deadline: float | None = None) -> Sequence:
    return Sequence([WORD] * prompt, SamplingParams(max_new_tokens=new, seed=0), tokenizer, frozenset({EOS}),
                    len(VOCAB), 64, deadline)  # fmt: skip


def model_outputs(step: Prefill | Decode, tokens: dict[int, int] | None = None) -> None:
    """A fake forward pass: every sequence of the step gets logits that make it pick WORD (or its token here)."""
    for s in step.sequences:
        logits = np.full(len(VOCAB), -1e9, np.float32)
        logits[(tokens or {}).get(s.id, WORD)] = 0.0
        s.advance(logits)


def test_admission_refuses_past_running_plus_waiting(tokenizer: Tokenizer) -> None:
    policy = SchedulingPolicy(budgets())
    for _ in range(4):
        policy.accept(sequence(tokenizer))
    with pytest.raises(QueueFull, match="max_running_sequences=2 \\+ max_waiting_requests=2"):
        policy.accept(sequence(tokenizer))
    assert policy.queue_depth == 2  # beyond the two free running slots


def test_prefill_first_within_the_running_slots_then_decode(tokenizer: Tokenizer) -> None:
    policy = SchedulingPolicy(budgets())
    first, second, third = (sequence(tokenizer) for _ in range(3))
    for s in (first, second, third):
        policy.accept(s)
    step = policy.schedule()
    assert isinstance(step, Prefill) and step.sequences == [first, second]
    model_outputs(step)
    step = policy.schedule()
    assert isinstance(step, Decode) and step.sequences == [first, second] and step.stoppable
    assert list(policy.waiting) == [third]
    model_outputs(step, {first.id: EOS})  # `first` finishes: its slot goes to `third`, before any decode
    assert first.finish is FinishReason.END_OF_TEXT
    step = policy.schedule()
    assert isinstance(step, Prefill) and step.sequences == [third]
    assert policy.running == [second, third]


def test_token_budget_and_prefill_budget_bound_what_starts(tokenizer: Tokenizer) -> None:
    policy = SchedulingPolicy(budgets(max_running_sequences=8, max_batch_total_tokens=20, max_prefill_tokens=12))
    big, small = sequence(tokenizer, prompt=6, new=10), sequence(tokenizer, prompt=3, new=4)
    policy.accept(big)
    policy.accept(small)
    step = policy.schedule()  # 16 + 7 reserved tokens > 20: the small one waits, it never overtakes
    assert isinstance(step, Prefill) and step.sequences == [big]
    wide = SchedulingPolicy(budgets(max_running_sequences=8, max_prefill_tokens=12))
    prompts = [sequence(tokenizer, prompt=5) for _ in range(3)]
    for s in prompts:
        wide.accept(s)
    step = wide.schedule()  # padded prefill: 2 x 5 fits in 12, 3 x 5 does not
    assert isinstance(step, Prefill) and step.sequences == prompts[:2]


def test_a_prompt_over_the_prefill_budget_takes_turns_with_the_decodes(tokenizer: Tokenizer) -> None:
    """The executor prefills a long prompt a chunk per step (its sequence gets no token until the last chunk);
    meanwhile chunks and decodes of the running sequences alternate, and it decodes with them once prefilled."""
    policy = SchedulingPolicy(budgets(max_running_sequences=3, max_prefill_tokens=4))
    short, long = sequence(tokenizer, new=10), sequence(tokenizer, prompt=10, new=10)
    policy.accept(short)
    model_outputs(policy.schedule())  # type: ignore[arg-type]
    policy.accept(long)
    steps = []
    for chunk in range(3):  # 10 tokens in chunks of 4
        step = policy.schedule()
        assert isinstance(step, Prefill) and step.sequences == [long]
        if chunk == 2:
            model_outputs(step)  # the last chunk: its first token
        step = policy.schedule()
        assert isinstance(step, Decode)
        steps.append(step.sequences)
        model_outputs(step)
        policy.decode_done()
    assert steps == [[short], [short], [short, long]]
    lone = SchedulingPolicy(budgets(max_prefill_tokens=4))
    lone.accept(alone := sequence(tokenizer, prompt=10))
    assert isinstance(lone.schedule(), Prefill)
    step = lone.schedule()  # nothing to decode: the next chunk at once
    assert isinstance(step, Prefill) and step.sequences == [alone]


def test_prompts_between_chunks_go_on_one_per_step_oldest_first(tokenizer: Tokenizer) -> None:
    policy = SchedulingPolicy(budgets(max_running_sequences=3, max_prefill_tokens=4))
    older, newer = sequence(tokenizer, prompt=10), sequence(tokenizer, prompt=10)
    policy.accept(older)
    policy.accept(newer)
    firsts = [policy.schedule(), policy.schedule()]  # each one's first chunk: a prompt over budget starts alone
    assert [step.sequences for step in firsts if isinstance(step, Prefill)] == [[older], [newer]]
    step = policy.schedule()
    assert isinstance(step, Prefill) and step.sequences == [older]


def test_a_newcomer_may_stop_a_decode_but_never_two_in_a_row(tokenizer: Tokenizer) -> None:
    policy = SchedulingPolicy(budgets(max_running_sequences=3))
    running = sequence(tokenizer, new=10)
    policy.accept(running)
    model_outputs(policy.schedule())  # type: ignore[arg-type]
    step = policy.schedule()
    assert isinstance(step, Decode) and step.stoppable
    newcomer = sequence(tokenizer)
    policy.accept(newcomer)
    assert policy.starts_at_once(newcomer)
    policy.decode_stopped()  # the executor gave the decode up for the newcomer's prefill
    step = policy.schedule()
    assert isinstance(step, Prefill) and step.sequences == [newcomer]
    model_outputs(step)
    step = policy.schedule()
    assert isinstance(step, Decode) and not step.stoppable  # this decode must go through
    model_outputs(step)
    policy.decode_done()
    step = policy.schedule()
    assert isinstance(step, Decode) and step.stoppable


def test_a_request_that_must_wait_does_not_stop_the_decode(tokenizer: Tokenizer) -> None:
    policy = SchedulingPolicy(budgets(max_running_sequences=1))
    policy.accept(sequence(tokenizer, new=10))
    model_outputs(policy.schedule())  # type: ignore[arg-type]
    waiting = sequence(tokenizer)
    policy.accept(waiting)
    assert not policy.starts_at_once(waiting)  # no free slot


def test_cancellation_takes_effect_between_steps_as_its_own_outcome(tokenizer: Tokenizer) -> None:
    policy = SchedulingPolicy(budgets())
    kept, left = sequence(tokenizer, new=10), sequence(tokenizer, new=10)
    policy.accept(kept)
    policy.accept(left)
    step = policy.schedule()
    assert isinstance(step, Prefill)
    policy.cancel(left)  # while the step runs: the sequence is not touched yet
    assert left.active and left.ended is None
    model_outputs(step)
    assert policy.apply_cancellations() == [left]
    assert left.ended is Outcome.CANCELLED and left.finish is None
    step = policy.schedule()
    assert isinstance(step, Decode) and step.sequences == [kept]  # its slot and cache rows are free
    policy.cancel(kept)
    model_outputs(step, {kept.id: EOS})  # finished in the same step: a finish, not a cancellation
    assert policy.apply_cancellations() == []
    assert kept.finish is FinishReason.END_OF_TEXT and kept.ended is None


def test_deadlines_end_only_waiting_requests(tokenizer: Tokenizer) -> None:
    policy = SchedulingPolicy(budgets(max_running_sequences=1))
    started, late, patient = (
        sequence(tokenizer, deadline=5.0),
        sequence(tokenizer, deadline=5.0),
        sequence(tokenizer, deadline=50.0),
    )
    for s in (started, late, patient):
        policy.accept(s)
    model_outputs(policy.schedule())  # type: ignore[arg-type]
    assert policy.expire(now=10.0) == [late]  # `started` started in time; its deadline no longer applies
    assert late.ended is Outcome.DEADLINE and started.active and patient.active
    assert list(policy.waiting) == [late, patient]
    policy.schedule()
    assert list(policy.waiting) == [patient]


def test_a_failed_step_fails_the_running_sequences_only(tokenizer: Tokenizer) -> None:
    policy = SchedulingPolicy(budgets(max_running_sequences=1))
    running, waiting = sequence(tokenizer), sequence(tokenizer)
    policy.accept(running)
    policy.accept(waiting)
    policy.schedule()
    assert policy.fail_running() == [running]
    assert running.ended is Outcome.FAILED and waiting.active
    step = policy.schedule()
    assert isinstance(step, Prefill) and step.sequences == [waiting]
