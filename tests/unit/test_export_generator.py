"""Generator export of tiny Llama and GPT-2 models: KV-cache graph, parity, manifest, quantization, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.generator import GeneratorExport, export_generator
from services.core.manifest import Manifest, sha256_of
from tests import fixtures
from tests.unit.test_export_classifier import assert_one_line_failure, run_cli


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gpt2"])
def test_decoder_export_with_kv_cache(tmp_path: Path, causal_lms: dict[str, Path], architecture: str) -> None:
    source = causal_lms.get(architecture) or fixtures.build_causal_lm(tmp_path / architecture, architecture)
    manifest, folder = export_generator(GeneratorExport(model=str(source), name="lm", out=tmp_path))
    # Llama-family decoders are written as ONNX opset 23 graphs; others are traced from PyTorch.
    built = architecture != "gpt2"
    assert (manifest.decoder["graph"], manifest.opset) == (("built", 23) if built else ("traced", 17))
    if built:  # a tied output layer (the Qwen2 fixture's) is stored once, for the embedding lookup too
        graph = onnx.load(str(folder / "model.onnx")).graph
        vocab = manifest.outputs[0].shape[-1]
        tables = [i.name for i in graph.initializer if vocab in i.dims]
        assert len(tables) == (1 if architecture == "qwen2" else 2)
    assert manifest.task == "text-generation"
    assert manifest.padding_side == "left"
    assert manifest.sha256 == sha256_of(folder / "model.onnx")
    assert manifest.parity["logits_max_abs_diff"] <= 1e-3
    assert manifest.parity["greedy_identical_to_generate"] is True
    assert manifest.special_tokens["eos_token_ids"]
    assert manifest.special_tokens["chat_template"] == "chat_template.jinja"
    assert (folder / "chat_template.jinja").read_text() == fixtures.CHAT_TEMPLATE
    assert (folder / "tokenizer.json").is_file()
    layers = manifest.decoder["num_layers"]
    assert layers == 2
    names = [spec.name for spec in manifest.inputs]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert names[3:] == [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]

    # Dynamic axes: a prefill (past of length 0) at batch 3, then one decode step reusing the cache.
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    heads, dim = manifest.decoder["num_kv_heads"], manifest.decoder["head_dim"]
    past = {n: np.zeros((3, heads, 0, dim), np.float32) for n in names[3:]}
    ids = np.array([[5, 6, 7, 8], [0, 0, 9, 10], [0, 11, 12, 13]], np.int64)
    mask = (ids != 0).astype(np.int64)
    positions = np.clip(mask.cumsum(axis=1) - 1, 0, None)
    logits, *present = session.run(None, {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past})
    assert logits.shape[:2] == (3, 1)  # the last position only: all a generator samples from
    assert present[0].shape == (3, heads, 4, dim)
    step = {n: t for n, t in zip(names[3:], present, strict=True)}
    mask = np.concatenate([mask, np.ones((3, 1), np.int64)], axis=1)
    logits, *present = session.run(
        None, {"input_ids": ids[:, -1:], "attention_mask": mask, "position_ids": positions[:, -1:] + 1, **step}
    )
    assert logits.shape[:2] == (3, 1)
    assert present[0].shape == (3, heads, 5, dim)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quantized_decoder_records_agreement(tmp_path: Path, causal_lms: dict[str, Path], method: str) -> None:
    manifest, folder = export_generator(
        GeneratorExport(model=str(causal_lms["llama"]), name="lm", out=tmp_path, quantize=method)
    )
    assert manifest.quantization["method"].startswith(method)
    assert 0.0 <= manifest.quantization["token_agreement"] <= 1.0
    assert len(manifest.quantization["greedy_samples"]) == 3
    assert set(manifest.quantization["decode_step_ms"]) == {"batch_1", "batch_16"}
    Manifest.read(folder)


def test_cli_gguf_transcoding_needs_a_gguf_file(tmp_path: Path, causal_lms: dict[str, Path]) -> None:
    result = run_cli(
        "generator", "--model", str(causal_lms["llama"]), "--quantize", "gguf", "--name", "x", "--out", str(tmp_path)
    )
    assert_one_line_failure(result, "--quantize gguf transcodes a GGUF checkpoint's blocks: pass --gguf-file")


def test_cli_unsupported_architecture_names_the_supported_ones(tmp_path: Path, hf_models: dict[str, Path]) -> None:
    result = run_cli("generator", "--model", str(hf_models["body"]), "--name", "x", "--out", str(tmp_path))
    assert_one_line_failure(result, "unsupported architecture 'bert'", "llama", "gpt2")


def test_cli_missing_gguf_file(tmp_path: Path, causal_lms: dict[str, Path]) -> None:
    result = run_cli(
        "generator",
        "--model",
        str(causal_lms["llama"]),
        "--gguf-file",
        "nope.gguf",
        "--name",
        "x",
        "--out",
        str(tmp_path),
    )
    assert_one_line_failure(result, "nope.gguf", "not found")


def test_cli_generator_export_and_version_increment(tmp_path: Path, causal_lms: dict[str, Path]) -> None:
    base = ["generator", "--model", str(causal_lms["gpt2"]), "--name", "g", "--out", str(tmp_path)]
    assert run_cli(*base).returncode == 0
    assert run_cli(*base, "--quantize", "int8").returncode == 0
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["1", "2"]
    assert Manifest.read(tmp_path / "g" / "2").quantization["method"] == "int8-dynamic"


def test_a_written_decoder_over_the_protobuf_limit_keeps_its_weights_beside_it(
    tmp_path: Path, causal_lms: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from export import decoder_graph

    monkeypatch.setattr(decoder_graph, "PROTOBUF_LIMIT_BYTES", 1000)  # the tiny model stands for a 2 GB one
    manifest, folder = export_generator(GeneratorExport(model=str(causal_lms["llama"]), name="lm", out=tmp_path))
    assert manifest.parity["greedy_identical_to_generate"] is True
    assert (folder / "model.fp32.onnx.data").is_file()
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    assert any(i.data_location == onnx.TensorProto.EXTERNAL for i in graph.initializer)
