"""A Llama-family decoder written directly as an ONNX graph, instead of traced from PyTorch.

Tracing a transformers model turns every view and reshape of every layer into a chain of Shape, Gather,
Unsqueeze and Concat nodes: SmolLM2-135M's fp32 graph traces to 6,210 nodes, 2,577 after onnxruntime's
optimizations, and their dispatch cost a decode step about a sixth of its time. Here each layer is a dozen nodes of
ONNX opset 23 (Attention with grouped key/value heads and a KV cache, RotaryEmbedding) and onnxruntime's
SkipSimplifiedLayerNormalization; the attention bias (causal and left padding) is built once for all layers.

Inputs and outputs are the traced graph's (export/generator.py), and every projection is a MatMul by its
transposed weight, so the GGUF transcoding (export/gguf_blocks.py) finds them the same way. The export's parity
checks compare this graph with the PyTorch model as they do a traced one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

OPSET = 23
PROTOBUF_LIMIT_BYTES = 2_000_000_000
# transformers' configurations this graph reproduces: rotary attention without a sliding window, RMS norms,
# a SiLU-gated MLP, and optional q/k/v biases (qwen2).
ARCHITECTURES = ("llama", "mistral", "qwen2")


def supports(config: Any) -> bool:
    """Whether `build` reproduces this model exactly; other models are traced."""
    return (
        config.model_type in ARCHITECTURES
        and getattr(config, "hidden_act", None) == "silu"
        and not getattr(config, "sliding_window", None)
        and not getattr(config, "mlp_bias", False)
        and getattr(config, "head_dim", None) in (None, _head_dim(config))
    )


def _head_dim(config: Any) -> int:
    """The width of one attention head: the hidden size shared out among the query heads."""
    return int(config.hidden_size // config.num_attention_heads)


def build(model: Any, past_names: list[str], present_names: list[str], path: Path) -> None:
    """Write `model` (a transformers causal LM that `supports`) as an ONNX decoder with its KV cache."""
    import onnx

    graph = _Builder(model)
    nodes = graph.decoder(past_names, present_names)
    config = model.config
    kv_heads, head_dim = config.num_key_value_heads, _head_dim(config)
    batch_past = ["batch", kv_heads, "past_sequence", head_dim]
    batch_total = ["batch", kv_heads, "total_sequence", head_dim]
    float32, int64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    inputs = [
        onnx.helper.make_tensor_value_info("input_ids", int64, ["batch", "sequence"]),
        onnx.helper.make_tensor_value_info("attention_mask", int64, ["batch", "total_sequence"]),
        onnx.helper.make_tensor_value_info("position_ids", int64, ["batch", "sequence"]),
        *(onnx.helper.make_tensor_value_info(name, float32, batch_past) for name in past_names),
    ]
    outputs = [
        onnx.helper.make_tensor_value_info("logits", float32, ["batch", 1, int(config.vocab_size)]),
        *(onnx.helper.make_tensor_value_info(name, float32, batch_total) for name in present_names),
    ]
    onnx_graph = onnx.helper.make_graph(nodes, "decoder", inputs, outputs, graph.initializers)
    opsets = [onnx.helper.make_opsetid("", OPSET), onnx.helper.make_opsetid("com.microsoft", 1)]
    onnx_model = onnx.helper.make_model(onnx_graph, opset_imports=opsets, producer_name="ecomserve.export")
    onnx_model.ir_version = 10
    # A protobuf holds at most 2 GB: larger models keep their weights in a file next to the graph, as a trace does.
    large = sum(i.ByteSize() for i in graph.initializers) > PROTOBUF_LIMIT_BYTES
    onnx.save(onnx_model, str(path), save_as_external_data=large, location=f"{path.name}.data")


class _Builder:
    """Nodes and initializers of one decoder graph, from the model's weights."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.config = model.config
        self.initializers: list[Any] = []
        self.nodes: list[Any] = []

    def decoder(self, past_names: list[str], present_names: list[str]) -> list[Any]:
        inner = self.model.model
        head = self._weight("lm_head", self.model.lm_head.weight.T)
        embedded = self._embedding(inner.embed_tokens.weight, head)
        first_norm = self._weight("layers.0.input_norm", inner.layers[0].input_layernorm.weight)
        hidden = self._node(
            "SimplifiedLayerNormalization", [embedded, first_norm], axis=-1, epsilon=float(self.config.rms_norm_eps)
        )
        residual, bias, rotary = embedded, self._attention_bias(), self._rotary_caches()
        for index, layer in enumerate(inner.layers):
            name = f"layers.{index}"
            cache = (*past_names[2 * index : 2 * index + 2], *present_names[2 * index : 2 * index + 2])
            attended = self._attention(name, layer.self_attn, hidden, bias, rotary, cache)
            hidden, residual = self._add_and_norm(
                attended, residual, f"{name}.post_norm", layer.post_attention_layernorm
            )
            mlp = self._mlp(name, layer.mlp, hidden)
            if index + 1 < len(inner.layers):
                following = inner.layers[index + 1].input_layernorm
                hidden, residual = self._add_and_norm(mlp, residual, f"layers.{index + 1}.input_norm", following)
        # Only the last position's logits are wanted: slice before the last norm and the vocabulary product.
        final, _ = self._add_and_norm(self._last_position(mlp), self._last_position(residual), "norm", inner.norm)
        self._node("MatMul", [final, head], outputs=["logits"], name="lm_head")
        return self.nodes

    def _embedding(self, table: Any, head: str) -> str:
        """The input tokens' rows of the embedding table [batch, sequence, hidden]. A model whose output layer is
        its embedding table (tied, as SmolLM2's) gathers the columns of the output layer's [hidden, vocab] weight
        instead of keeping the same values twice."""
        if table.data_ptr() != self.model.lm_head.weight.data_ptr():
            return self._node("Gather", [self._weight("embed_tokens", table), "input_ids"])
        columns = self._node("Gather", [head, "input_ids"], axis=1)  # [hidden, batch, sequence]
        return self._node("Transpose", [columns], perm=[1, 2, 0])

    def _attention(
        self, name: str, attention: Any, hidden: str, bias: str, rotary: tuple[str, str], cache: tuple[str, ...]
    ) -> str:
        """Grouped-query attention over the past and the new tokens; `cache` names the layer's past key and value
        inputs and its present key and value outputs."""
        heads, kv_heads = self.config.num_attention_heads, self.config.num_key_value_heads
        query = self._linear(f"{name}.q_proj", attention.q_proj, hidden)
        key = self._linear(f"{name}.k_proj", attention.k_proj, hidden)
        value = self._linear(f"{name}.v_proj", attention.v_proj, hidden)
        query = self._node("RotaryEmbedding", [query, *rotary, "position_ids"], num_heads=heads)
        key = self._node("RotaryEmbedding", [key, *rotary, "position_ids"], num_heads=kv_heads)
        attended = f"{name}.attention"
        self._node(
            "Attention",
            [query, key, value, bias, *cache[:2]],
            outputs=[attended, *cache[2:]],
            name=attended,
            q_num_heads=heads,
            kv_num_heads=kv_heads,
            scale=float(attention.scaling),
        )
        return self._linear(f"{name}.o_proj", attention.o_proj, attended)

    def _mlp(self, name: str, mlp: Any, hidden: str) -> str:
        gate = self._linear(f"{name}.gate_proj", mlp.gate_proj, hidden)
        up = self._linear(f"{name}.up_proj", mlp.up_proj, hidden)
        activated = self._node("Mul", [gate, self._node("Sigmoid", [gate])])
        return self._linear(f"{name}.down_proj", mlp.down_proj, self._node("Mul", [activated, up]))

    def _add_and_norm(self, value: str, residual: str, name: str, norm: Any) -> tuple[str, str]:
        """(norm(residual + value), residual + value) in one onnxruntime kernel."""
        normed, summed = f"{name}.out", f"{name}.residual"
        self._node(
            "SkipSimplifiedLayerNormalization",
            [value, residual, self._weight(name, norm.weight)],
            outputs=[normed, "", "", summed],
            name=name,
            domain="com.microsoft",
            epsilon=float(self.config.rms_norm_eps),
        )
        return normed, summed

    def _linear(self, name: str, linear: Any, x: str) -> str:
        """x @ W.T (+ b): a MatMul by the transposed weight, the form the GGUF transcoding replaces."""
        product = self._node("MatMul", [x, self._weight(name, linear.weight.T)], name=name)
        if linear.bias is None:
            return product
        return self._node("Add", [product, self._weight(f"{name}.bias", linear.bias)])

    def _attention_bias(self) -> str:
        """[batch, 1, sequence, total] additive bias: 0 where a query may see a key (a real token, not after it),
        the float32 minimum elsewhere (finite, so a padding row's softmax stays finite: 0 x NaN is NaN)."""
        total = self._node("Gather", [self._node("Shape", ["attention_mask"]), self._constant("one", 1)])
        length = self._node("Gather", [self._node("Shape", ["input_ids"]), self._constant("one", 1)])
        zero, step = self._constant("zero", 0), self._constant("one", 1)
        keys = self._node("Range", [zero, total, step])
        queries = self._node("Range", [self._node("Sub", [total, length]), total, step])
        causal = self._node(
            "LessOrEqual",
            [self._node("Unsqueeze", [keys, self._constant("axis_0", [0])]),
             self._node("Unsqueeze", [queries, self._constant("axis_1", [1])])],
        )  # fmt: skip
        real = self._node("Cast", ["attention_mask"], to=9)  # bool
        real = self._node("Unsqueeze", [real, self._constant("axes_1_2", [1, 2])])
        allowed = self._node("And", [causal, real])
        blocked = np.array(np.finfo(np.float32).min, np.float32)
        return self._node("Where", [allowed, self._constant("open", np.float32(0)), self._constant("blocked", blocked)])

    def _rotary_caches(self) -> tuple[str, str]:
        """cos and sin [positions, head_dim / 2] from the model's own rotary embedding (its scaling included)."""
        import torch

        positions = int(self.config.max_position_embeddings)
        head_dim = _head_dim(self.config)
        probe = torch.zeros(1, 1, head_dim)
        with torch.no_grad():
            cos, sin = self.model.model.rotary_emb(probe, torch.arange(positions)[None])
        half = head_dim // 2
        return self._weight("rotary.cos", cos[0, :, :half]), self._weight("rotary.sin", sin[0, :, :half])

    def _last_position(self, value: str) -> str:
        start, end = self._constant("minus_one", [-1]), self._constant("end", [np.iinfo(np.int64).max])
        return self._node("Slice", [value, start, end, self._constant("axis_1", [1])])

    def _weight(self, name: str, tensor: Any) -> str:
        from onnx import numpy_helper

        array = np.ascontiguousarray(tensor.detach().numpy(), np.float32)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def _constant(self, name: str, value: Any) -> str:
        from onnx import numpy_helper

        full = f"const.{name}"
        if not any(i.name == full for i in self.initializers):
            array = np.asarray(value, np.int64 if isinstance(value, (int, list)) else None)
            self.initializers.append(numpy_helper.from_array(array, full))
        return full

    def _node(
        self,
        op: str,
        inputs: list[str],
        outputs: list[str] | None = None,
        name: str | None = None,
        domain: str = "",
        **attributes: Any,
    ) -> str:
        from onnx import helper

        name = name or f"{op}.{len(self.nodes)}"
        outputs = outputs or [f"{name}.out"]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attributes))
        return outputs[0]
