"""Embedding export of tiny models: the graph is body -> pooling -> (normalise), per the options or the folder's
sentence-transformers files; parity, manifest, quantization, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from export.encoder import EncoderExport, export_encoder
from services.core.manifest import Manifest, sha256_of
from tests.onnx_reference import run_padded
from tests.unit.test_export_classifier import assert_one_line_failure, run_cli

TEXTS = ["where is my order", "i want a refund please the blender came broken", "hello"]


def torch_vectors(body_folder: Path, pooling: str, normalize: bool) -> np.ndarray:
    """The vectors computed here from the body's hidden states, independently of export's module."""
    body = AutoModel.from_pretrained(body_folder).eval()
    batch = AutoTokenizer.from_pretrained(body_folder)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = body(**batch).last_hidden_state
    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
    vectors = pooled.numpy()
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True) if normalize else vectors


def test_embedder_manifest_and_parity(model_repo: Path, hf_models: dict[str, Path]) -> None:
    folder = model_repo / "embed" / "1"
    manifest = Manifest.read(folder)
    assert manifest.task == "feature-extraction"
    assert manifest.sha256 == sha256_of(folder / "model.onnx")
    assert manifest.embedding == {"pooling": "mean", "normalized": True, "dimension": 32}
    assert manifest.outputs[0].to_dict() == {"name": "embeddings", "dtype": "float32", "shape": ["batch", 32]}
    assert manifest.parity["min_cosine_fp32_vs_pytorch"] >= 0.9999
    vectors = run_padded(folder, TEXTS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, torch_vectors(hf_models["body"], "mean", True), atol=1e-5)


def test_cls_pooling_without_normalising(tmp_path: Path, hf_models: dict[str, Path]) -> None:
    manifest, folder = export_encoder(
        EncoderExport(model=str(hf_models["body"]), name="cls", out=tmp_path, pooling="cls", normalize=False)
    )
    assert manifest.embedding["pooling"] == "cls" and not manifest.embedding["normalized"]
    np.testing.assert_allclose(run_padded(folder, TEXTS), torch_vectors(hf_models["body"], "cls", False), atol=1e-5)


def test_pooling_and_normalising_default_to_the_sentence_transformers_files(
    tmp_path: Path, hf_models: dict[str, Path]
) -> None:
    body = shutil.copytree(hf_models["body"], tmp_path / "st-body")
    (body / "1_Pooling").mkdir()
    (body / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    modules = [{"type": "sentence_transformers.models.Pooling"}, {"type": "sentence_transformers.models.Normalize"}]
    (body / "modules.json").write_text(json.dumps(modules))
    manifest, folder = export_encoder(EncoderExport(model=str(body), name="st", out=tmp_path / "models"))
    assert manifest.embedding == {"pooling": "cls", "normalized": True, "dimension": 32}
    np.testing.assert_allclose(run_padded(folder, TEXTS), torch_vectors(body, "cls", True), atol=1e-5)


def test_int8_states_its_cosine_with_fp32_and_same_inputs_are_skipped(
    tmp_path: Path, hf_models: dict[str, Path]
) -> None:
    job = EncoderExport(model=str(hf_models["body"]), name="e", out=tmp_path, quantize="int8")
    manifest, folder = export_encoder(job)
    assert manifest.quantization["method"] == "int8-dynamic-per-channel"
    assert 0.5 < manifest.quantization["mean_cosine_vs_fp32"] <= 1.0 + 1e-6
    assert not (folder / "model.fp32.onnx").exists()
    again, _ = export_encoder(job)
    assert again.version == manifest.version == 1


def test_cli_exports_and_refuses_what_it_cannot(tmp_path: Path, hf_models: dict[str, Path]) -> None:
    common = ["encoder", "--model", str(hf_models["body"]), "--name", "e", "--out", str(tmp_path)]
    result = run_cli(*common, "--pooling", "cls", "--no-normalize")
    assert result.returncode == 0, result.stderr
    assert Manifest.read(tmp_path / "e" / "1").embedding["pooling"] == "cls"
    assert run_cli(*common, "--pooling", "max").returncode == 2  # argparse names the choices
    assert_one_line_failure(run_cli(*common, "--version", "1"), "already exists")
    assert run_cli("encoder", "--help").returncode == 0
