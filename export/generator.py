"""Export decoder-only causal LMs to ONNX with their KV cache, for continuous batching in the generator service.

The graph: inputs input_ids [batch, sequence], attention_mask [batch, past_sequence + sequence],
position_ids [batch, sequence] and past_key_values.<layer>.key|value [batch, kv_heads, past_sequence, head_dim];
outputs logits [batch, 1, vocab] of the LAST position only (all a generator samples from; a prefill of n tokens
would otherwise spend a fifth of SmolLM2's work, and n x vocab floats, on logits it throws away) and
present.<layer>.key|value [batch, kv_heads, total_sequence, head_dim]. A prefill passes a past of length 0.
Sequences of different lengths share a batch through LEFT padding: padded positions have attention_mask 0, and
position ids count real tokens only (cumsum(mask) - 1), so every row's newest token is in the last position.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer, DynamicCache, GenerationConfig
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from export import decoder_graph, gguf_blocks, quantize, sources
from export.errors import ExportError
from export.package import choose_version, earlier_export
from export.pipeline import OPSET, write_version
from export.progress import say, step
from export.samples import GENERATOR_PROMPTS
from services.core.manifest import (
    CHAT_TEMPLATE_FILE,
    TASK_GENERATION,
    TOKENIZER_FILE,
    Manifest,
    TensorSpec,
)

FP32_LOGITS_TOLERANCE = 1e-3
GREEDY_TOKENS = 20
QUANTIZERS = {"int8": quantize.quantize_int8_decoder, "int4": quantize.quantize_int4_weight_only}
# A GGUF checkpoint's own blocks as MatMulNBits (export/gguf_blocks.py), by the compute they multiply in.
GGUF_TRANSCODES = {"gguf": "fp32", "gguf-int8": "int8"}
QUANTIZE_CHOICES = (*QUANTIZERS, *GGUF_TRANSCODES)
# The decode step the manifest times: batch sizes of one stream and of a loaded server, over this much context.
TIMED_BATCHES, TIMED_PAST_TOKENS, TIMED_STEPS = (1, 16), 64, 8
# Part of the digest that lets `export defaults` skip a model exported before: a new graph layout is re-exported.
GRAPH_REVISION = 3  # 2: logits of the last position only, grouped-query attention without repeat_kv; 3: built
# graphs (export/decoder_graph.py) for the architectures it supports
GROUPED_QUERY_ATTENTION = "ecomserve_grouped_query"
# Architectures whose attention is transformers' standard eager attention, so the grouped form may replace it.
GROUPED_QUERY_ARCHITECTURES = ("llama", "mistral", "qwen2")


@dataclass(frozen=True)
class GeneratorExport:
    """What to export and where; built from the CLI or by `export defaults`."""

    model: str
    name: str
    out: Path
    gguf_file: str | None = None
    version: int | None = None
    quantize: str | None = None  # None or one of QUANTIZE_CHOICES
    force: bool = False


class _DecoderWithCache(torch.nn.Module):
    """Flat tensors in and out around a Hugging Face causal LM, so the KV cache crosses the ONNX boundary."""

    def __init__(self, model: torch.nn.Module, num_layers: int) -> None:
        super().__init__()
        self.model = model
        self.config: Any = model.config
        self.num_layers = num_layers

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.num_layers)]
        cache = DynamicCache(pairs, config=self.config)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        present = [t for layer in out.cache.layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)


def _grouped_query_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' eager attention, with each key/value head multiplied by its group of query heads instead of
    being copied to every query head first (repeat_kv). The traced graph then has no Expand of the whole cache in
    every layer at every step: 14% of a 16-row SmolLM2 decode step on CPU."""
    batch, heads, length, head_dim = query.shape
    kv_heads, total = key.shape[1], key.shape[2]
    # Query head h uses key/value head h // groups, so heads reshape into [kv_heads, groups * length] rows.
    grouped = query.reshape(batch, kv_heads, heads // kv_heads * length, head_dim)
    weights = (torch.matmul(grouped, key.transpose(2, 3)) * scaling).reshape(batch, heads, length, total)
    if attention_mask is not None:
        weights = weights + attention_mask[:, :, :, :total]
    weights = torch.nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    output = torch.matmul(weights.reshape(batch, kv_heads, -1, total), value)
    return output.reshape(batch, heads, length, head_dim).transpose(1, 2).contiguous(), weights


AttentionInterface.register(GROUPED_QUERY_ATTENTION, _grouped_query_attention)
AttentionMaskInterface.register(GROUPED_QUERY_ATTENTION, eager_mask)


@contextlib.contextmanager
def _traced_attention(model: Any) -> Iterator[None]:
    """Trace grouped-query models with `_grouped_query_attention`; the parity checks then compare the graph with
    the model's own attention."""
    config = model.config
    if config.model_type not in GROUPED_QUERY_ARCHITECTURES or config.num_key_value_heads >= config.num_attention_heads:
        yield
        return
    original = config._attn_implementation
    config._attn_implementation = GROUPED_QUERY_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = original


def export_generator(job: GeneratorExport) -> tuple[Manifest, Path]:
    """Export with KV cache, check parity and greedy decoding, optionally quantize, write the version folder."""
    folder = sources.check_source(job.model, job.gguf_file)
    if job.quantize not in (None, *QUANTIZE_CHOICES):
        raise ExportError(f"--quantize {job.quantize}: generators support {', '.join(QUANTIZE_CHOICES)}")
    if job.quantize in GGUF_TRANSCODES and not job.gguf_file:
        raise ExportError(f"--quantize {job.quantize} transcodes a GGUF checkpoint's blocks: pass --gguf-file")
    digest = None
    if folder is not None:
        extra = json.dumps(
            {"task": "generator", "gguf": job.gguf_file, "quantize": job.quantize, "graph": GRAPH_REVISION}
        )
        inputs = [folder / job.gguf_file] if job.gguf_file else [folder]
        digest = sources.inputs_digest(inputs, extra)
    if previous := earlier_export(job.out, job.name, job.version, digest):
        return previous
    version = choose_version(job.out, job.name, job.version, job.force)

    model, tokenizer = load_causal_lm(job.model, job.gguf_file)
    source = {
        "model": job.model,
        "file": job.gguf_file,
        "kind": "local" if folder else "hub",
        "architecture": model.config.model_type,
        "inputs_sha256": digest,
    }
    gguf_path = None
    if job.quantize in GGUF_TRANSCODES and job.gguf_file:
        gguf_path = sources.gguf_path(job.model, folder, job.gguf_file)
    steps = _DecoderSteps(model, tokenizer, gguf_path)
    return write_version(job.out, job.name, version, steps, job.quantize, task=TASK_GENERATION, source=source)


class _DecoderSteps:
    """The pipeline's steps (export.pipeline.ExportSteps) for a causal LM with its KV cache."""

    def __init__(self, model: Any, tokenizer: Any, gguf_path: Path | None) -> None:
        self.model, self.tokenizer, self.gguf_path = model, tokenizer, gguf_path
        self.layers, self.pad_id, self.eos_ids = _describe(model, tokenizer)
        self.module = _DecoderWithCache(model, self.layers).eval()
        self.graph = _GraphNames(self.layers)
        self.kv_shape: list[int] = []  # set by trace, with how the graph was made and its opset
        self.graph_kind, self.opset = "traced", OPSET
        self.greedy: _GreedyReference | None = None  # set by check
        self.has_chat_template = False  # set by save_files

    def trace(self, path: Path) -> None:
        if decoder_graph.supports(self.model.config):
            with step("writing the decoder as an ONNX graph (opset 23 attention and rotary embedding)"):
                decoder_graph.build(self.model, self.graph.past, self.graph.present, path)
            self.kv_shape, self.opset, self.graph_kind = _kv_shape(self.model), decoder_graph.OPSET, "built"
        else:
            self.kv_shape = _trace(self.module, self.model, self.graph, path)

    def check(self, fp32_path: Path) -> dict[str, Any]:
        fp32 = _OnnxDecoder(fp32_path, self.layers)
        parity, self.greedy = _parity(self.module, fp32, self.model, self.tokenizer, self.pad_id, self.eos_ids)
        return parity

    def publish(self, method: str | None, fp32_path: Path, model_path: Path) -> dict[str, Any]:
        assert self.greedy is not None, "check runs before publish"
        if method in GGUF_TRANSCODES:
            assert self.gguf_path is not None, "export_generator resolves the GGUF file of a transcode"
            return _publish_transcoded(
                GGUF_TRANSCODES[method], self.gguf_path, fp32_path, model_path, self.greedy, self
            )
        return _publish(method, fp32_path, model_path, self.greedy, self.tokenizer)

    def save_files(self, folder: Path) -> None:
        self.has_chat_template = _save_tokenizer(self.tokenizer, folder)

    def manifest_fields(self) -> dict[str, Any]:
        tokenizer = self.tokenizer
        return {
            "max_sequence_length": _max_positions(self.model.config),
            "inputs": self.graph.inputs(self.kv_shape),
            "outputs": self.graph.outputs(self.kv_shape, int(self.model.config.vocab_size)),
            "padding_side": "left",
            "special_tokens": {
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_ids": self.eos_ids,
                "pad_token_id": self.pad_id,
                "bos_token": tokenizer.bos_token,
                "eos_token": tokenizer.eos_token,
                "chat_template": CHAT_TEMPLATE_FILE if self.has_chat_template else None,
            },
            "decoder": {**self.graph.description(self.kv_shape), "graph": self.graph_kind},
            "opset": self.opset,
        }

    def summary(self) -> str:
        return f"{self.layers} layers"


class _GraphNames:
    """The decoder graph's inputs and outputs: ids, mask, positions and one key and one value cache per layer."""

    INPUTS = ("input_ids", "attention_mask", "position_ids")

    def __init__(self, layers: int) -> None:
        self.layers = layers
        self.past = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
        self.present = [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes: dict[str, dict[int, str]] = {
            "input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "total_sequence"},
            "position_ids": {0: "batch", 1: "sequence"},
            "logits": {0: "batch"},
        }
        axes.update({n: {0: "batch", 2: "past_sequence"} for n in self.past})
        axes.update({n: {0: "batch", 2: "total_sequence"} for n in self.present})
        return axes

    def inputs(self, kv_shape: list[int]) -> list[TensorSpec]:
        return [
            TensorSpec("input_ids", "int64", ["batch", "sequence"]),
            TensorSpec("attention_mask", "int64", ["batch", "total_sequence"]),
            TensorSpec("position_ids", "int64", ["batch", "sequence"]),
            *(TensorSpec(n, "float32", ["batch", kv_shape[1], "past_sequence", kv_shape[3]]) for n in self.past),
        ]

    def outputs(self, kv_shape: list[int], vocab_size: int) -> list[TensorSpec]:
        return [
            TensorSpec("logits", "float32", ["batch", 1, vocab_size]),
            *(TensorSpec(n, "float32", ["batch", kv_shape[1], "total_sequence", kv_shape[3]]) for n in self.present),
        ]

    def description(self, kv_shape: list[int]) -> dict[str, Any]:
        """The manifest's `decoder` entry: what the generator service needs to feed the cache."""
        return {
            "num_layers": self.layers,
            "num_kv_heads": kv_shape[1],
            "head_dim": kv_shape[3],
            "past_inputs": self.past,
            "present_outputs": self.present,
            "kv_dtype": "float32",
            "position_ids": "cumsum(attention_mask) - 1",
        }


def _trace(module: torch.nn.Module, model: Any, graph: _GraphNames, path: Path) -> list[int]:
    """torch.onnx.export of the decoder with its cache; returns the shape of one layer's tracing cache."""
    with step("exporting to ONNX with KV cache"), torch.no_grad(), _traced_attention(model):
        args = _tracing_inputs(model, graph.layers)
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=[*graph.INPUTS, *graph.past],
            output_names=["logits", *graph.present],
            dynamic_axes=graph.dynamic_axes(),
            opset_version=OPSET,
            dynamo=False,
        )
    return list(args[3].shape)


def _kv_shape(model: Any) -> list[int]:
    """The shape of one layer's cache for a batch of one over one token: [1, kv_heads, 1, head_dim]."""
    with torch.no_grad():
        probe = model(input_ids=torch.ones(1, 1, dtype=torch.long), use_cache=True).cache
    return list(probe.layers[0].keys.shape)


@dataclass(frozen=True)
class _GreedyReference:
    """The parity check's greedy decoding: its prompts, special ids, and the fp32 graph's tokens."""

    layers: int
    prompts: list[list[int]]
    pad_id: int
    eos_ids: list[int]
    fp32_tokens: list[list[int]]

    def tokens_of(self, path: Path) -> list[list[int]]:
        """Greedy tokens of another graph of the same model on the same prompts."""
        return _OnnxDecoder(path, self.layers).greedy(self.prompts, self.pad_id, self.eos_ids, GREEDY_TOKENS)


def _parity(
    module: _DecoderWithCache, fp32: _OnnxDecoder, model: Any, tokenizer: Any, pad_id: int, eos_ids: list[int]
) -> tuple[dict[str, Any], _GreedyReference]:
    """Logits of a prefill and two cached decode steps, then greedy tokens on a left-padded batch, against
    PyTorch; raises when either differs. Returns the parity entry and the greedy reference."""
    with step("parity check: prefill and two cached decode steps vs PyTorch"):
        logits_diff = _logits_parity(module, fp32, tokenizer, module.num_layers)
    say(f"[export] logits max abs diff vs PyTorch: {logits_diff:.2e} (limit {FP32_LOGITS_TOLERANCE:.0e})")
    if not logits_diff <= FP32_LOGITS_TOLERANCE:
        raise ExportError(
            f"parity check failed: ONNX logits differ from PyTorch by {logits_diff:.2e} "
            f"(limit {FP32_LOGITS_TOLERANCE:.0e})"
        )
    with step(f"parity check: greedy {GREEDY_TOKENS} tokens on a left-padded batch vs PyTorch generate"):
        prompts = sample_prompts(tokenizer)
        expected = [_torch_greedy(model, ids, pad_id, eos_ids) for ids in prompts]
        fp32_tokens = fp32.greedy(prompts, pad_id, eos_ids, GREEDY_TOKENS)
    if fp32_tokens != expected:
        raise ExportError(
            "parity check failed: greedy decoding through onnxruntime on a left-padded batch differs from "
            f"PyTorch generate on each prompt alone (onnx {fp32_tokens}, torch {expected})"
        )
    parity = {
        "reference": "pytorch",
        "logits_max_abs_diff": logits_diff,
        "logits_tolerance": FP32_LOGITS_TOLERANCE,
        "logits_checked": "prefill (left-padded batch, last position) + 2 cached decode steps",
        "greedy_tokens": GREEDY_TOKENS,
        "greedy_prompts": len(prompts),
        "greedy_identical_to_generate": True,
        "greedy_samples": [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in fp32_tokens],
    }
    return parity, _GreedyReference(module.num_layers, prompts, pad_id, eos_ids, fp32_tokens)


def _publish(
    method: str | None, fp32_path: Path, model_path: Path, greedy: _GreedyReference, tokenizer: Any
) -> dict[str, Any]:
    """Write the served graph to model_path: the fp32 one, or its quantization, whose greedy tokens on the parity
    prompts are compared with fp32's. Returns the manifest's quantization entry."""
    if not method:
        fp32_path.rename(model_path)
        return {"method": "none", "decode_step_ms": decode_step_ms(model_path, greedy.layers)}
    done = QUANTIZERS[method](fp32_path, model_path)
    quantization = {"method": done, **_agreement_and_speed(model_path, greedy, tokenizer)}
    fp32_path.unlink()
    return quantization


def _publish_transcoded(
    compute: str, gguf_path: Path, fp32_path: Path, model_path: Path, greedy: _GreedyReference, steps: _DecoderSteps
) -> dict[str, Any]:
    """The GGUF blocks as MatMulNBits. With fp32 compute the graph must match PyTorch as the fp32 one does (logits
    within the tolerance, the same greedy tokens); with int8 compute its agreement is recorded."""
    details = gguf_blocks.transcode(gguf_path, fp32_path, model_path, compute)
    with step("parity check of the transcoded graph: prefill and two cached decode steps vs PyTorch"):
        logits_diff = _logits_parity(
            steps.module, _OnnxDecoder(model_path, greedy.layers), steps.tokenizer, greedy.layers
        )
    say(f"[export] transcoded graph: logits max abs diff vs PyTorch {logits_diff:.2e}")
    quantization = {
        "method": f"gguf-blocks-matmulnbits-{compute}",
        **details,
        "logits_max_abs_diff_vs_pytorch": logits_diff,
        **_agreement_and_speed(model_path, greedy, steps.tokenizer),
    }
    if compute == "fp32" and not (logits_diff <= FP32_LOGITS_TOLERANCE and quantization["token_agreement"] == 1.0):
        raise ExportError(
            f"the transcoded graph is not faithful: logits differ from PyTorch by {logits_diff:.2e} (limit "
            f"{FP32_LOGITS_TOLERANCE:.0e}), greedy agreement with fp32 {quantization['token_agreement']:.3f} "
            "(expected 1.0)"
        )
    fp32_path.unlink()
    return quantization


def _agreement_and_speed(model_path: Path, greedy: _GreedyReference, tokenizer: Any) -> dict[str, Any]:
    """Greedy tokens of a quantized graph against the fp32 graph's, its samples, and its decode step time."""
    with step("greedy-token agreement of the quantized model with fp32"):
        quantized_tokens = greedy.tokens_of(model_path)
    agreement = _token_agreement(quantized_tokens, greedy.fp32_tokens)
    say(f"[export] greedy-token agreement with fp32: {agreement['token_agreement']:.3f}")
    return {
        **agreement,
        "greedy_samples": [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in quantized_tokens],
        "decode_step_ms": decode_step_ms(model_path, greedy.layers),
    }


def decode_step_ms(path: Path, layers: int) -> dict[str, float]:
    """Median time of one cached decode step at each TIMED_BATCHES size, in this process, on this machine: what the
    manifest records."""
    return compare_decode_steps({"model": path}, layers)["model"]


def compare_decode_steps(paths: dict[Any, Path], layers: int, rounds: int = 1) -> dict[Any, dict[str, float]]:
    """decode_step_ms of several graphs of one model, timed in alternating rounds (medians over all of them), so
    that the machine's changing load weighs on each alike: what `export defaults` compares to pick the served
    variant."""
    decoders = {key: _OnnxDecoder(path, layers) for key, path in paths.items()}
    durations: dict[Any, dict[int, list[float]]] = {key: {batch: [] for batch in TIMED_BATCHES} for key in paths}
    with step(f"timing decode steps at batch {' and '.join(map(str, TIMED_BATCHES))}"):
        for _ in range(rounds):
            for key, decoder in decoders.items():
                for batch in TIMED_BATCHES:
                    durations[key][batch] += _time_decode_steps(decoder, batch, layers)
    timings = {
        key: {f"batch_{batch}": round(float(np.median(times)) * 1000, 2) for batch, times in by_batch.items()}
        for key, by_batch in durations.items()
    }
    for key, timing in timings.items():
        say(f"[export] decode step{'' if len(paths) == 1 else f' of {key}'}: "
            f"{', '.join(f'{k} {v} ms' for k, v in timing.items())}")  # fmt: skip
    return timings


def _time_decode_steps(decoder: _OnnxDecoder, batch: int, layers: int) -> list[float]:
    """Seconds of TIMED_STEPS decode steps over a TIMED_PAST_TOKENS cache, after two untimed ones."""
    past = [
        np.zeros((batch, decoder.kv_heads, TIMED_PAST_TOKENS, decoder.head_dim), np.float32) for _ in range(2 * layers)
    ]
    ids = np.ones((batch, 1), np.int64)
    mask = np.ones((batch, TIMED_PAST_TOKENS + 1), np.int64)
    positions = np.full((batch, 1), TIMED_PAST_TOKENS, np.int64)
    durations = []
    for _ in range(TIMED_STEPS + 2):
        started = time.perf_counter()
        decoder.step(ids, mask, positions, past)
        durations.append(time.perf_counter() - started)
    return durations[2:]


def _save_tokenizer(tokenizer: Any, stage: Path) -> bool:
    """tokenizer.json without fixed padding or truncation, and the chat template when there is one (True)."""
    chat_template = getattr(tokenizer, "chat_template", None)
    if isinstance(chat_template, str) and chat_template:
        (stage / CHAT_TEMPLATE_FILE).write_text(chat_template)
    backend = tokenizer.backend_tokenizer
    backend.no_padding()
    backend.no_truncation()
    backend.save(str(stage / TOKENIZER_FILE))
    return bool(chat_template)


def load_causal_lm(model_id: str, gguf_file: str | None) -> tuple[Any, Any]:
    """Load tokenizer and fp32 model (GGUF weights are dequantized by transformers); check the architecture."""
    kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    with step(f"loading {model_id}" + (f" ({gguf_file})" if gguf_file else "")):
        tokenizer = sources.load(model_id, "tokenizer", AutoTokenizer.from_pretrained, **kwargs)
        model = sources.load(model_id, "model", AutoModelForCausalLM.from_pretrained, dtype=torch.float32, **kwargs)
    if model.config.model_type not in sources.SUPPORTED_GENERATORS:
        raise ExportError(
            f"unsupported architecture {model.config.model_type!r}: the generator export supports "
            f"{', '.join(sources.SUPPORTED_GENERATORS)} (decoder-only causal LMs)"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"{model_id} has no fast tokenizer (tokenizer.json); the services need one")
    return model.eval(), tokenizer


def _describe(model: Any, tokenizer: Any) -> tuple[int, int, list[int]]:
    """Number of layers, pad token id (eos when the model has none) and every end-of-text token id."""
    eos: set[int] = set()
    for source in (model.generation_config.eos_token_id, model.config.eos_token_id, tokenizer.eos_token_id):
        if source is not None:
            eos.update(source if isinstance(source, list) else [source])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos, default=0)
    layers = int(model.config.get_text_config().num_hidden_layers)
    return layers, int(pad), sorted(eos)


def _max_positions(config: Any) -> int:
    for attribute in ("max_position_embeddings", "n_positions"):
        if getattr(config, attribute, None):
            return int(getattr(config, attribute))
    return 2048


def _tracing_inputs(model: Any, layers: int) -> tuple[torch.Tensor, ...]:
    """A batch of two with a left-padded row and a non-empty past, so no shape is specialised while tracing."""
    _, kv_heads, _, head_dim = _kv_shape(model)
    past_len = 3
    input_ids = torch.tensor([[5, 6], [7, 8]], dtype=torch.long)
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.long)
    positions = torch.tensor([[2, 3], [3, 4]], dtype=torch.long)
    past = [torch.randn(2, kv_heads, past_len, head_dim) for _ in range(2 * layers)]
    return (input_ids, mask, positions, *past)


class _OnnxDecoder:
    """Plain onnxruntime decoding over the exported graph, for the parity and agreement checks."""

    def __init__(self, path: Path, layers: int) -> None:
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.layers = layers
        past = self.session.get_inputs()[3]
        self.kv_heads, self.head_dim = int(past.shape[1]), int(past.shape[3])

    def step(
        self, input_ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        feeds = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}
        feeds.update({f"past_key_values.{i // 2}.{('key', 'value')[i % 2]}": t for i, t in enumerate(past)})
        logits, *present = self.session.run(None, feeds)
        return logits, present

    def empty_past(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, self.kv_heads, 0, self.head_dim), np.float32) for _ in range(2 * self.layers)]

    def greedy(self, prompts: list[list[int]], pad_id: int, eos_ids: list[int], steps: int) -> list[list[int]]:
        """Greedy tokens per prompt, all prompts in one left-padded batch; a row stops after its first eos."""
        ids, mask = _left_pad(prompts, pad_id)
        positions = np.clip(mask.cumsum(axis=1) - 1, 0, None)
        logits, past = self.step(ids, mask, positions, self.empty_past(len(prompts)))
        outputs: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        for _ in range(steps):
            next_ids = logits[:, -1, :].argmax(axis=-1)
            for row, token in enumerate(next_ids.tolist()):
                if not done[row]:
                    outputs[row].append(token)
                    done[row] = token in eos_ids
            if all(done):
                break
            positions = positions[:, -1:] + 1
            mask = np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], axis=1)
            logits, past = self.step(next_ids[:, None].astype(np.int64), mask, positions, past)
        return outputs


def sample_prompts(tokenizer: Any) -> list[list[int]]:
    """Token ids of the sample prompts, as chat turns when the model has a chat template (how it is served)."""
    if getattr(tokenizer, "chat_template", None):
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
            for p in GENERATOR_PROMPTS
        ]
        return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return [tokenizer(p, add_special_tokens=True)["input_ids"] for p in GENERATOR_PROMPTS]


def _left_pad(prompts: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, np.int64)
    mask = np.zeros((len(prompts), width), np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = prompt
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def _logits_parity(module: _DecoderWithCache, onnx: _OnnxDecoder, tokenizer: Any, layers: int) -> float:
    """Max abs logits difference of a left-padded prefill and two decode steps (the last position of each row)."""
    prompts = sample_prompts(tokenizer)
    ids, mask = _left_pad(prompts, 0)
    positions = np.clip(mask.cumsum(axis=1) - 1, 0, None)
    torch_past: list[torch.Tensor] = [torch.from_numpy(t) for t in onnx.empty_past(len(prompts))]
    onnx_past = onnx.empty_past(len(prompts))
    worst = 0.0
    for _ in range(3):
        with torch.no_grad():
            expected, *torch_past = module(
                torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(positions), *torch_past
            )
        got, onnx_past = onnx.step(ids, mask, positions, onnx_past)
        worst = max(worst, float(np.abs(got - expected.numpy()).max()))
        ids = got[:, -1, :].argmax(axis=-1)[:, None].astype(np.int64)
        positions = positions[:, -1:] + 1
        mask = np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], axis=1)
    return worst


def _torch_greedy(model: Any, prompt: list[int], pad_id: int, eos_ids: list[int]) -> list[int]:
    config = GenerationConfig(do_sample=False, max_new_tokens=GREEDY_TOKENS, eos_token_id=eos_ids, pad_token_id=pad_id)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)), generation_config=config
        )
    tokens = out[0, len(prompt) :].tolist()
    for index, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: index + 1]
    return tokens


def _token_agreement(candidate: list[list[int]], reference: list[list[int]]) -> dict[str, Any]:
    """Share of greedy positions where the quantized model picks the fp32 model's token, and shared prefixes."""
    matches = total = 0
    prefixes = []
    for got, want in zip(candidate, reference, strict=True):
        length = max(len(got), len(want))
        matches += sum(1 for a, b in zip(got, want, strict=False) if a == b)
        total += length
        prefix = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
        prefixes.append(prefix)
    return {
        "token_agreement": matches / total if total else 1.0,
        "identical_prefix_tokens": prefixes,
        "greedy_tokens": GREEDY_TOKENS,
        "prompts": len(reference),
    }
