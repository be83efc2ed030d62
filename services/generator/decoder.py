"""DecoderRunner: the exported KV-cache decoder graph (see export/generator.py) as one synchronous call.

It knows the graph's inputs and outputs and nothing of batching or requests: ids, attention mask, position ids and
the past key/values in; the last position's logits and the present key/values out.
"""

from __future__ import annotations

import numpy as np

from services.core.errors import ModelFailure
from services.core.manifest import Manifest
from services.core.runner import OnnxRunner, RunStop


class DecoderRunner:
    def __init__(self, runner: OnnxRunner, manifest: Manifest) -> None:
        decoder = manifest.decoder
        self.runner = runner
        self.num_layers = int(decoder["num_layers"])
        self.num_kv_heads = int(decoder["num_kv_heads"])
        self.head_dim = int(decoder["head_dim"])
        self.kv_dtype = np.dtype(decoder.get("kv_dtype", "float32"))
        self._past_names: list[str] = list(decoder["past_inputs"])
        self._outputs = ["logits", *decoder["present_outputs"]]
        missing = set(self._past_names) - set(runner.input_names)
        if missing:
            raise ModelFailure(f"{manifest.name} v{manifest.version}: graph lacks past inputs {sorted(missing)}")

    def empty_past(self, batch: int) -> list[np.ndarray]:
        shape = (batch, self.num_kv_heads, 0, self.head_dim)
        return [np.zeros(shape, self.kv_dtype) for _ in self._past_names]

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: list[np.ndarray],
        stop: RunStop | None = None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """(logits of each row's last position [batch, vocab], present key/values)."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        feeds.update(zip(self._past_names, past, strict=True))
        logits, *present = self.runner.run(feeds, self._outputs, stop)
        return logits[:, -1, :], present
