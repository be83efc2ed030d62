"""GeneratorServicer: thin gRPC translation; validation in GenerationQuery, work in GeneratorModel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from ecomserve.generator.v1 import generator_pb2, generator_pb2_grpc

from services.core.errors import InvalidArgument
from services.core.logs import add_tokens
from services.core.repository import Registry
from services.core.server import deadline_of
from services.core.service import model_listing
from services.generator.chat import ROLES
from services.generator.model import GeneratorModel, Prompt
from services.generator.sampling import SamplingParams
from services.generator.sequence import FinishReason, Sequence

FINISH_REASON_PB = {
    FinishReason.LENGTH: generator_pb2.FINISH_REASON_LENGTH,
    FinishReason.STOP_SEQUENCE: generator_pb2.FINISH_REASON_STOP_SEQUENCE,
    FinishReason.END_OF_TEXT: generator_pb2.FINISH_REASON_END_OF_TEXT,
}


@dataclass(frozen=True)
class GenerationLimits:
    max_new_tokens: int
    default_max_new_tokens: int
    max_stop_sequences: int


@dataclass(frozen=True)
class GenerationQuery:
    model: str
    version: int
    prompt: Prompt
    params: SamplingParams

    @classmethod
    def from_pb(cls, request: generator_pb2.GenerateRequest, limits: GenerationLimits) -> GenerationQuery:
        if not request.model:
            raise InvalidArgument('model is required (e.g. "smollm2-135m-instruct"); ListModels shows what is served')
        return cls(request.model, request.version, _prompt(request), _params(request.sampling, limits))


def _prompt(request: generator_pb2.GenerateRequest) -> Prompt:
    if request.prompt and request.messages:
        raise InvalidArgument("send either prompt or messages, not both")
    if request.messages:
        for index, message in enumerate(request.messages):
            if message.role not in ROLES:
                raise InvalidArgument(f"messages[{index}].role is {message.role!r}; use one of {', '.join(ROLES)}")
        return Prompt(messages=tuple((m.role, m.content) for m in request.messages))
    if not request.prompt.strip():
        raise InvalidArgument("prompt is empty; send a prompt (raw text) or messages (chat turns)")
    return Prompt(text=request.prompt)


def _params(sampling: generator_pb2.SamplingParameters, limits: GenerationLimits) -> SamplingParams:
    max_new = sampling.max_new_tokens if sampling.HasField("max_new_tokens") else limits.default_max_new_tokens
    if not 1 <= max_new <= limits.max_new_tokens:
        raise InvalidArgument(f"sampling.max_new_tokens must be 1..{limits.max_new_tokens}, got {max_new}")
    temperature = sampling.temperature if sampling.HasField("temperature") else 0.0
    if not temperature >= 0:
        raise InvalidArgument(f"sampling.temperature must be >= 0 (0 = greedy), got {temperature}")
    top_p = sampling.top_p if sampling.HasField("top_p") else 1.0
    if not 0 < top_p <= 1:
        raise InvalidArgument(f"sampling.top_p must be in (0, 1], got {top_p}")
    top_k = sampling.top_k if sampling.HasField("top_k") else 0
    if top_k < 0:
        raise InvalidArgument(f"sampling.top_k must be >= 0 (0 = off), got {top_k}")
    penalty = sampling.repetition_penalty if sampling.HasField("repetition_penalty") else 1.0
    if not penalty > 0:
        raise InvalidArgument(f"sampling.repetition_penalty must be > 0 (1 = off), got {penalty}")
    if len(sampling.stop) > limits.max_stop_sequences:
        raise InvalidArgument(
            f"sampling.stop has {len(sampling.stop)} sequences; at most max_stop_sequences={limits.max_stop_sequences}"
        )
    for index, stop in enumerate(sampling.stop):
        if not stop:
            raise InvalidArgument(f"sampling.stop[{index}] is empty; every stop sequence needs at least one character")
    extra = {"seed": sampling.seed} if sampling.HasField("seed") else {}
    return SamplingParams(
        max_new_tokens=max_new,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=penalty,
        stop=tuple(sampling.stop),
        **extra,
    )


class GeneratorServicer(generator_pb2_grpc.GeneratorServiceServicer):
    def __init__(self, registry: Registry[GeneratorModel], limits: GenerationLimits) -> None:
        self._registry = registry
        self._limits = limits

    async def Generate(
        self, request: generator_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> generator_pb2.GenerateResponse:
        query = GenerationQuery.from_pb(request, self._limits)
        version, model = self._registry.get(query.model, query.version)
        sequence = await model.submit(query.prompt, query.params, deadline_of(context))
        text = "".join([delta.text async for delta in model.stream(sequence)])
        return generator_pb2.GenerateResponse(
            model=query.model,
            version=version,
            text=text,
            finish_reason=FINISH_REASON_PB[sequence.finish] if sequence.finish else None,
            usage=_usage(sequence),
            time_to_first_token_ms=_ttft_ms(sequence),
        )

    async def GenerateStream(
        self, request: generator_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generator_pb2.GenerateStreamResponse]:
        query = GenerationQuery.from_pb(request, self._limits)
        version, model = self._registry.get(query.model, query.version)
        sequence = await model.submit(query.prompt, query.params, deadline_of(context))
        async for delta in model.stream(sequence):
            if delta.finish is None:
                yield generator_pb2.GenerateStreamResponse(text=delta.text)
            else:
                yield generator_pb2.GenerateStreamResponse(
                    text=delta.text,
                    finish_reason=FINISH_REASON_PB[delta.finish],
                    usage=_usage(sequence),
                    model=query.model,
                    version=version,
                    time_to_first_token_ms=_ttft_ms(sequence),
                )

    async def ListModels(
        self, request: generator_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> generator_pb2.ListModelsResponse:
        return generator_pb2.ListModelsResponse(
            models=[
                generator_pb2.ModelInfo(**common)
                if model is None
                else generator_pb2.ModelInfo(
                    **common,
                    max_input_tokens=model.max_input_tokens,
                    max_new_tokens=self._limits.max_new_tokens,
                    max_sequence_length=model.max_sequence_length,
                    has_chat_template=model.chat_template is not None,
                )
                for common, model in model_listing(self._registry)
            ]
        )


def _usage(sequence: Sequence) -> generator_pb2.Usage:
    add_tokens(len(sequence.prompt_ids), sequence.generated)  # on the call's access line
    return generator_pb2.Usage(
        prompt_tokens=len(sequence.prompt_ids),
        completion_tokens=sequence.generated,
        cached_prompt_tokens=sequence.cached_prompt_tokens,
    )


def _ttft_ms(sequence: Sequence) -> float:
    ttft = sequence.time_to_first_token_s()
    return 0.0 if ttft is None else ttft * 1000
