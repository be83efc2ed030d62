"""GeneratorConfig: every knob of the generator service, with flags and ECOMSERVE_GENERATOR_* twins."""

from __future__ import annotations

from dataclasses import dataclass

from services.core.config import knob, require
from services.core.service import ModelServerConfig


@dataclass(frozen=True)
class GeneratorConfig(ModelServerConfig):
    port: int = knob(50052, "gRPC port (0 picks a free one)")
    metrics_port: int = knob(9102, "Prometheus /metrics port (0 disables)")
    model_names: tuple[str, ...] = knob((), "comma-separated model names to serve (default: every generator)")
    grace_period_s: float = knob(30.0, "on SIGTERM, how long running streams may take to finish")
    max_running_sequences: int = knob(32, "most sequences decoded together in one step (the batch size)")
    max_batch_total_tokens: int = knob(
        16384, "most prompt + max_new_tokens tokens summed over the running sequences (bounds the KV cache)"
    )
    max_prefill_tokens: int = knob(
        256,
        "most (padded) prompt tokens prefilled in one step; a longer prompt is prefilled in chunks of this many "
        "tokens with decode steps between them, so it stalls running streams for one chunk at a time",
    )
    max_input_tokens: int = knob(1024, "longest prompt in tokens, chat template included")
    max_new_tokens: int = knob(512, "most tokens one request may generate")
    default_max_new_tokens: int = knob(128, "max_new_tokens of a request that sets none")
    max_waiting_requests: int = knob(
        64,
        "most requests waiting to start beyond the running ones: past max_running_sequences + this many requests "
        "running or waiting, RESOURCE_EXHAUSTED at once",
    )
    max_stop_sequences: int = knob(8, "most stop sequences per request")
    prefix_cache_mb: int = knob(
        256,
        "memory per model version for the KV of recent prompts' prefixes, reused by prompts that start with the same "
        "tokens (a chat template's system prompt, a template's instructions, a conversation so far); 0 disables it",
    )
    intra_op_threads: int = knob(0, "onnxruntime intra-op threads (0: one per core)")
    spin_threads: bool = knob(
        True,
        "onnxruntime's intra-op threads spin between a step's parallel sections instead of sleeping: faster steps, "
        "cores kept busy while decoding (--no-spin-threads: leave them to other processes)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.max_running_sequences >= 1, f"max_running_sequences must be >= 1, got {self.max_running_sequences}"
        )
        require(self.max_input_tokens >= 1, f"max_input_tokens must be >= 1, got {self.max_input_tokens}")
        require(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        require(
            1 <= self.default_max_new_tokens <= self.max_new_tokens,
            f"default_max_new_tokens must be 1..max_new_tokens ({self.max_new_tokens}), "
            f"got {self.default_max_new_tokens}",
        )
        require(
            self.max_batch_total_tokens >= self.max_input_tokens + self.max_new_tokens,
            f"max_batch_total_tokens ({self.max_batch_total_tokens}) must hold at least one full request: "
            f"max_input_tokens + max_new_tokens = {self.max_input_tokens + self.max_new_tokens}",
        )
        require(self.max_prefill_tokens >= 1, f"max_prefill_tokens must be >= 1, got {self.max_prefill_tokens}")
        require(self.max_waiting_requests >= 1, f"max_waiting_requests must be >= 1, got {self.max_waiting_requests}")
        require(self.max_stop_sequences >= 0, f"max_stop_sequences must be >= 0, got {self.max_stop_sequences}")
        require(self.prefix_cache_mb >= 0, f"prefix_cache_mb must be >= 0, got {self.prefix_cache_mb}")
        require(self.intra_op_threads >= 0, f"intra_op_threads must be >= 0, got {self.intra_op_threads}")
