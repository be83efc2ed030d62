"""GGUF blocks transcoded into MatMulNBits (export/gguf_blocks.py): exact for Q4_0 and Q4_1 with fp32 compute, Q8_0
too with int8 compute, the Llama query/key rows in the order transformers gives them on load, F32 left alone, weights
of one type and input packed into one product."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from gguf import GGMLQuantizationType as Q
from onnx import TensorProto, helper, numpy_helper
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from export.errors import ExportError
from export.gguf_blocks import transcode

HEADS, KV_HEADS, HIDDEN = 4, 2, 64
# name: (type, output rows)
TENSORS = {
    "blk.0.attn_q.weight": (Q.Q4_1, 64),
    "blk.0.attn_k.weight": (Q.Q4_0, 32),
    "blk.0.ffn_up.weight": (Q.Q4_1, 96),
    "blk.0.ffn_down.weight": (Q.Q8_0, 64),
}


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """A GGUF file with quantized weights, and the fp32 graph transformers' loading of it would give: x @ W.T for
    each weight, dequantized, query and key rows reordered by transformers' own Llama processor."""
    rng = np.random.default_rng(7)
    writer = gguf.GGUFWriter(str(tmp_path / "tiny.gguf"), "llama")
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    processor = LlamaTensorProcessor(config={"num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS})
    nodes, initializers, outputs = [], [], []
    for index, (name, (kind, rows)) in enumerate(TENSORS.items()):
        raw = gguf.quants.quantize(rng.standard_normal((rows, HIDDEN)).astype(np.float32), kind)
        writer.add_tensor(name, raw, raw_dtype=kind)
        weight = processor.process(gguf.quants.dequantize(raw, kind), name).weights
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(weight.T, np.float32), f"w{index}"))
        nodes.append(helper.make_node("MatMul", ["x", f"w{index}"], [f"y{index}"], name=f"/{name}/MatMul"))
        outputs.append(helper.make_tensor_value_info(f"y{index}", TensorProto.FLOAT, ["batch", "sequence", rows]))
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(HIDDEN, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", HIDDEN])
    graph = helper.make_graph(nodes, "tiny", [x], outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "fp32.onnx"))
    return tmp_path / "tiny.gguf", tmp_path / "fp32.onnx"


def _outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _op_types(path: Path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


def test_fp32_compute_is_exact_for_4_bit_blocks_and_keeps_q8_0_as_fp32(checkpoint: tuple[Path, Path]) -> None:
    gguf_path, fp32 = checkpoint
    target = fp32.with_name("blocks.onnx")
    report = transcode(gguf_path, fp32, target, "fp32")
    assert report["transcoded"] == {"Q4_1": 2, "Q4_0": 1}
    assert report["kept_fp32"] == {"Q8_0": 1}
    # The two Q4_1 weights of the same input are one product, split into their outputs; Q4_0's is another.
    assert _op_types(target).count("MatMulNBits") == 2
    assert _op_types(target).count("Split") == 1
    x = np.random.default_rng(1).standard_normal((3, 5, HIDDEN)).astype(np.float32)
    for expected, got in zip(_outputs(fp32, x), _outputs(target, x), strict=True):
        assert np.abs(got - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))


def test_int8_compute_transcodes_q8_0_too_and_stays_close(checkpoint: tuple[Path, Path]) -> None:
    gguf_path, fp32 = checkpoint
    target = fp32.with_name("blocks_int8.onnx")
    report = transcode(gguf_path, fp32, target, "int8")
    assert report["transcoded"] == {"Q4_1": 2, "Q4_0": 1, "Q8_0": 1}
    assert _op_types(target).count("MatMulNBits") == 3
    x = np.random.default_rng(2).standard_normal((2, 4, HIDDEN)).astype(np.float32)
    for expected, got in zip(_outputs(fp32, x), _outputs(target, x), strict=True):
        assert np.abs(got - expected).max() <= 0.05 * float(np.abs(expected).max())


def test_a_graph_without_the_files_weights_is_refused(checkpoint: tuple[Path, Path], tmp_path: Path) -> None:
    gguf_path, fp32 = checkpoint
    model = onnx.load(str(fp32))
    for initializer in model.graph.initializer:
        initializer.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(initializer) * 2, initializer.name))
    other = tmp_path / "other.onnx"
    onnx.save(model, str(other))
    with pytest.raises(ExportError, match="no MatMul weight"):
        transcode(gguf_path, other, tmp_path / "out.onnx", "fp32")
