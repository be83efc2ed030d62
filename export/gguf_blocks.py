"""Lossless transcoding of a GGUF file's quantized blocks into onnxruntime's MatMulNBits.

transformers loads a GGUF checkpoint by dequantizing it, so the fp32 graph the export traces holds exactly the
values the blocks encode. This pass puts the blocks themselves back: every MatMul whose weight is bit-for-bit a
dequantized GGUF tensor of a supported type is replaced by MatMulNBits over the same blocks of 32.

- Q4_0 (w = d * (q - 8)) is MatMulNBits' own 4-bit form with its default zero point 8.
- Q4_1 (w = d * q + m) would need float zero points (-m / d), which take onnxruntime's slow path (a SmolLM2
  decode step on AVX2: 148 ms instead of 15 with int8 compute). The same product, exactly:
  w = d * (q - 8) + (m + 8 d), so
  x @ W = MatMulNBits(x; q, d) + (x summed per block of 32) @ (m + 8 d), a second product 32 times smaller.
- Q8_0 (w = d * q, q signed) is 8-bit MatMulNBits with q + 128 stored and the default zero point 128. onnxruntime
  has no fp32-compute kernel for 8 bits (it dequantizes on every call: 6x slower than the fp32 MatMul), so Q8_0
  tensors are transcoded only for int8 compute and otherwise stay as their dequantized fp32 values.

Weights of one type multiplied with the same input (a Llama layer's q, k and v projections; its gate and up
projections) become one MatMulNBits, split into their outputs: the same arithmetic per output column, in fewer and
wider products (a SmolLM2 decode step with fp32 compute: 13.7 instead of 15.6 ms at batch 1).

Compute: "fp32" (accuracy_level 1) multiplies with the exact weights in fp32; "int8" (accuracy_level 4) also
quantizes the activations to int8 per block, which is faster and no longer exact. Weights stored as F16/F32, and
quantized types without an exact MatMulNBits form (K-quants, Q5), stay as the fp32 graph has them.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError
from export.progress import step

BLOCK = 32
COMPUTE_ACCURACY_LEVELS = {"fp32": 1, "int8": 4}


@dataclass(frozen=True)
class _Blocks:
    """One GGUF tensor's blocks as MatMulNBits inputs, for a weight of N output rows and K inputs."""

    kind: str  # "Q4_0", "Q4_1" or "Q8_0"
    rows: int  # N
    depth: int  # K
    packed: np.ndarray  # uint8 [N, K / 32, 16 or 32]
    scales: np.ndarray  # float32 [N * K / 32]
    offsets: np.ndarray | None  # float32 [K / 32, N]: Q4_1's m + 8 d per block, else None

    @property
    def bits(self) -> int:
        return 8 if self.kind == "Q8_0" else 4


def transcode(gguf_path: Path, source: Path, target: Path, compute: str) -> dict[str, Any]:
    """Write `source` (the fp32 graph traced from `gguf_path`) to `target` with its quantized weights as blocks.
    Returns what the manifest records: the transcoded tensors per GGUF type and what stayed fp32."""
    import onnx

    if compute not in COMPUTE_ACCURACY_LEVELS:
        raise ExportError(f"compute {compute!r}: choose one of {', '.join(COMPUTE_ACCURACY_LEVELS)}")
    with step(f"transcoding the GGUF blocks into MatMulNBits ({compute} compute)"):
        model = onnx.load(str(source))
        weights = _matmul_weights(model)
        transcoded: Counter[str] = Counter()
        kept: Counter[str] = Counter()
        # One product per input and GGUF type (see above: q/k/v, gate/up).
        by_input: dict[tuple[str, str], list[tuple[Any, _Blocks]]] = {}
        for digest, kind, blocks in _quantized_tensors(gguf_path, weights, compute):
            nodes = weights.pop(digest, []) if blocks is not None else []
            for node in nodes:
                by_input.setdefault((node.input[0], kind), []).append((node, blocks))
            (transcoded if nodes else kept)[kind] += 1
        if not transcoded:
            raise ExportError(f"{gguf_path.name}: no MatMul weight of the graph is a Q4_0, Q4_1 or Q8_0 tensor")
        for products in by_input.values():
            _replace(model, products, COMPUTE_ACCURACY_LEVELS[compute])
        _drop_unused_initializers(model)
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
        onnx.save(model, str(target))
    return {"transcoded": dict(transcoded), "kept_fp32": dict(kept), "block_size": BLOCK, "compute": compute}


def _matmul_weights(model: Any) -> dict[str, list[Any]]:
    """MatMul nodes by the sha256 of their constant right-hand side (a [K, N] fp32 initializer)."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    by_digest: dict[str, list[Any]] = {}
    for node in model.graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is not None and len(weight.dims) == 2:
            array = np.ascontiguousarray(numpy_helper.to_array(weight), np.float32)
            by_digest.setdefault(_digest(array), []).append(node)
    return by_digest


def _quantized_tensors(gguf_path: Path, weights: dict[str, list[Any]], compute: str) -> Any:
    """(digest, GGUF type, blocks) for each quantized GGUF tensor; blocks None: it stays fp32 (not a MatMul
    weight of the graph, no exact MatMulNBits form, or Q8_0 under fp32 compute)."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    heads = _head_counts(reader)
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        if tensor.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            continue
        raw = np.asarray(tensor.data)
        for order in _row_orders(tensor.name, raw.shape[0], heads):
            rows = raw[order]
            dequantized = gguf.quants.dequantize(rows, tensor.tensor_type)
            digest = _digest(np.ascontiguousarray(dequantized.T, np.float32))
            if digest in weights:
                exact = kind in ("Q4_0", "Q4_1") or (kind == "Q8_0" and compute == "int8")
                yield digest, kind, _blocks(kind, rows) if exact else None
                break
        else:
            yield "", kind, None


def _head_counts(reader: Any) -> dict[str, int]:
    architecture = bytes(reader.fields["general.architecture"].parts[-1]).decode()

    def field(key: str) -> int | None:
        found = reader.fields.get(f"{architecture}.attention.{key}")
        return None if found is None else int(found.parts[-1][0])

    heads = field("head_count")
    return {"attn_q": heads, "attn_k": field("head_count_kv") or heads} if heads else {}


def _row_orders(name: str, rows: int, heads: dict[str, int]) -> list[np.ndarray]:
    """Row orders to try against the graph: as stored, then with llama.cpp's rotary interleave of the query and
    key rows undone (what transformers does on load for Llama-family models)."""
    identity = np.arange(rows)
    count = heads.get(name.split(".")[-2]) if name.startswith("blk.") else None
    if not count or rows % (2 * count):
        return [identity]
    return [identity, identity.reshape(count, rows // count // 2, 2).swapaxes(1, 2).reshape(rows)]


def _blocks(kind: str, rows: np.ndarray) -> _Blocks:
    """GGUF blocks (ggml layout: f16 scale [, f16 min], then the quants) as MatMulNBits tensors."""
    count = rows.shape[0]
    if kind == "Q8_0":
        blocks = rows.reshape(count, -1, 2 + BLOCK)
        scales = _half(blocks[:, :, 0:2])
        packed = (blocks[:, :, 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        return _Blocks(kind, count, blocks.shape[1] * BLOCK, packed, scales.reshape(-1), None)
    header = 4 if kind == "Q4_1" else 2
    blocks = rows.reshape(count, -1, header + BLOCK // 2)
    scales = _half(blocks[:, :, 0:2])
    quants = blocks[:, :, header:]
    # ggml keeps element j in the low nibble of byte j and element j + 16 in its high nibble; MatMulNBits wants
    # elements 2i and 2i + 1 in the low and high nibble of byte i.
    ordered = np.concatenate([quants & 0x0F, quants >> 4], axis=2)
    packed = (ordered[:, :, 0::2] | (ordered[:, :, 1::2] << 4)).astype(np.uint8)
    offsets = None
    if kind == "Q4_1":
        offsets = np.ascontiguousarray((_half(blocks[:, :, 2:4]) + 8 * scales).T)
    return _Blocks(kind, count, blocks.shape[1] * BLOCK, packed, scales.reshape(-1), offsets)


def _half(pairs: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(pairs).view(np.float16)[..., 0].astype(np.float32)


def _replace(model: Any, products: list[tuple[Any, _Blocks]], accuracy_level: int) -> None:
    """Swap MatMul nodes x @ W of one input (with their weights' blocks) for one MatMulNBits over all the blocks,
    plus Q4_1's per-block offsets, and a Split into the nodes' outputs when there are several."""
    from onnx import helper, numpy_helper

    nodes = [node for node, _ in products]
    blocks = _concatenated([b for _, b in products])
    base = nodes[0].name.strip("/").replace("/", "_") or nodes[0].output[0]
    x = nodes[0].input[0]
    y = nodes[0].output[0] if len(nodes) == 1 else f"{base}.packed"
    added = [
        numpy_helper.from_array(blocks.packed, f"{base}.blocks"),
        numpy_helper.from_array(blocks.scales, f"{base}.scales"),
    ]
    product = f"{y}.blocks" if blocks.offsets is not None else y
    new_nodes = [
        helper.make_node(
            "MatMulNBits",
            [x, f"{base}.blocks", f"{base}.scales"],
            [product],
            name=f"{base}.nbits",
            domain="com.microsoft",
            K=blocks.depth,
            N=blocks.rows,
            bits=blocks.bits,
            block_size=BLOCK,
            accuracy_level=accuracy_level,
        )
    ]
    if blocks.offsets is not None:
        sums = _block_sums_name(model, blocks.depth)
        added.append(numpy_helper.from_array(blocks.offsets, f"{base}.offsets"))
        new_nodes += [
            helper.make_node("MatMul", [x, sums], [f"{y}.block_sums"], name=f"{base}.block_sums"),
            helper.make_node("MatMul", [f"{y}.block_sums", f"{base}.offsets"], [f"{y}.offsets"], name=f"{base}.offs"),
            helper.make_node("Add", [product, f"{y}.offsets"], [y], name=f"{base}.add"),
        ]
    if len(nodes) > 1:
        widths = np.array([b.rows for _, b in products], np.int64)
        added.append(numpy_helper.from_array(widths, f"{base}.widths"))
        outputs = [node.output[0] for node in nodes]
        new_nodes.append(helper.make_node("Split", [y, f"{base}.widths"], outputs, name=f"{base}.split", axis=-1))
    model.graph.initializer.extend(added)
    graph_nodes = model.graph.node
    # Every node of the group reads the same input, so the first one's place comes after it and before any reader
    # of their outputs.
    order = list(graph_nodes)
    at = min(order.index(node) for node in nodes)
    for node in nodes:
        graph_nodes.remove(node)
    for offset, new in enumerate(new_nodes):
        graph_nodes.insert(at + offset, new)


def _concatenated(parts: list[_Blocks]) -> _Blocks:
    """The blocks of several weights of one input as one weight of all their output rows."""
    if len(parts) == 1:
        return parts[0]
    offsets = [p.offsets for p in parts if p.offsets is not None]  # all or none: the parts are of one type
    return _Blocks(
        parts[0].kind,
        sum(p.rows for p in parts),
        parts[0].depth,
        np.concatenate([p.packed for p in parts]),
        np.concatenate([p.scales for p in parts]),
        np.ascontiguousarray(np.concatenate(offsets, axis=1)) if offsets else None,
    )


def _block_sums_name(model: Any, depth: int) -> str:
    """A [K, K / 32] matrix of ones per block, shared by every weight of that depth: x @ it sums x per block."""
    from onnx import numpy_helper

    name = f"gguf.block_sums.{depth}"
    if not any(i.name == name for i in model.graph.initializer):
        ones = np.zeros((depth, depth // BLOCK), np.float32)
        ones[np.arange(depth), np.arange(depth) // BLOCK] = 1.0
        model.graph.initializer.append(numpy_helper.from_array(ones, name))
    return name


def _drop_unused_initializers(model: Any) -> None:
    used = {name for node in model.graph.node for name in node.input}
    unused = [i for i in model.graph.initializer if i.name not in used]
    for initializer in unused:
        model.graph.initializer.remove(initializer)


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(array.tobytes()).hexdigest() + str(array.shape)
