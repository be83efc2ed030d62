"""Classifier export of tiny models: parity, manifest, onnxruntime loading, quantization, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from services.core.manifest import Manifest, sha256_of
from tests import fixtures


def test_sequence_classifier_manifest_and_parity(model_repo: Path) -> None:
    folder = model_repo / "sentiment" / "1"
    manifest = Manifest.read(folder)
    assert manifest.task == "text-classification"
    assert manifest.labels == fixtures.LABELS
    assert manifest.sha256 == sha256_of(folder / "model.onnx")
    assert manifest.parity["fp32_max_abs_diff"] <= 1e-4
    assert manifest.quantization == {"method": "none"}
    assert [spec.name for spec in manifest.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest.max_sequence_length == 64
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= set(manifest.tool_versions)
    assert manifest.source["kind"] == "local"
    raw = json.loads((folder / "manifest.json").read_text())
    assert raw["outputs"][0] == {"name": "probabilities", "dtype": "float32", "shape": ["batch", 3]}


def test_exported_classifier_runs_with_dynamic_batch_and_sequence(model_repo: Path) -> None:
    folder = model_repo / "sentiment" / "1"
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for texts in (
        ["hello"],
        ["where is my order", "i want a refund please the blender came broken", "thanks"],
    ):
        tokenizer.enable_padding()
        encodings = tokenizer.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
        }
        (probabilities,) = session.run(None, feeds)
        assert probabilities.shape == (len(texts), 3)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_embedding_body_with_linear_head(model_repo: Path) -> None:
    fp32 = Manifest.read(model_repo / "intent" / "1")
    int8 = Manifest.read(model_repo / "intent" / "2")
    assert sorted(fp32.labels) == ["human", "order_status", "refund"]
    assert fp32.source["architecture"] == "embedding+linear-head"
    assert fp32.parity["fp32_max_abs_diff"] <= 1e-4
    assert int8.quantization["method"] == "int8-dynamic-per-channel"
    assert 0.0 <= int8.quantization["top1_agreement_vs_fp32"] <= 1.0
    assert (model_repo / "intent" / "2" / "model.onnx").stat().st_size < (
        model_repo / "intent" / "1" / "model.onnx"
    ).stat().st_size


def test_head_matches_sklearn_predict_proba(model_repo: Path, hf_models: dict[str, Path]) -> None:
    """The ONNX graph is body -> mean pool -> L2 normalise -> head: same probabilities as scikit-learn."""
    import joblib
    import torch
    from transformers import AutoModel, AutoTokenizer

    head = joblib.load(hf_models["head"])
    body = AutoModel.from_pretrained(hf_models["body"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(hf_models["body"])
    texts = ["where is my order", "i want a refund please"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = body(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
    expected = head.predict_proba(pooled)
    session = ort.InferenceSession(str(model_repo / "intent" / "1" / "model.onnx"))
    got = session.run(None, {k: v.numpy() for k, v in batch.items()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_versions_increment_and_same_inputs_are_skipped(tmp_path: Path, hf_models: dict[str, Path]) -> None:
    from export.classifier import ClassifierExport, export_classifier

    job = ClassifierExport(model=str(hf_models["bert"]), name="s", out=tmp_path)
    first, _ = export_classifier(job)
    again, _ = export_classifier(job)
    assert first.version == again.version == 1
    other, _ = export_classifier(ClassifierExport(model=str(hf_models["bert"]), name="s", out=tmp_path, max_length=32))
    assert other.version == 2
    assert other.max_sequence_length == 32


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "export", *args], capture_output=True, text=True, timeout=300, check=False
    )


def assert_one_line_failure(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    failure = [line for line in result.stderr.splitlines() if line.startswith("export failed:")]
    assert len(failure) == 1, result.stderr
    for needle in needles:
        assert needle in failure[0]


def test_cli_missing_folder(tmp_path: Path) -> None:
    result = run_cli("classifier", "--model", str(tmp_path / "nope"), "--name", "x", "--out", str(tmp_path))
    assert_one_line_failure(result, "does not exist")


def test_cli_hub_id_without_network(tmp_path: Path) -> None:
    result = run_cli("classifier", "--model", "someone/some-classifier", "--name", "x", "--out", str(tmp_path))
    assert_one_line_failure(result, "hub", "local folder")


def test_cli_head_dimension_mismatch(tmp_path: Path, hf_models: dict[str, Path]) -> None:
    head = fixtures.build_linear_head(tmp_path / "h.joblib", dim=16, classes=["a", "b"])
    result = run_cli(
        "classifier",
        "--model",
        str(hf_models["body"]),
        "--head",
        str(head),
        "--name",
        "x",
        "--out",
        str(tmp_path),
    )
    assert_one_line_failure(result, "16", "32")


def test_cli_refuses_existing_version_without_force(model_repo: Path, hf_models: dict[str, Path]) -> None:
    args = ["classifier", "--model", str(hf_models["bert"]), "--name", "sentiment", "--out", str(model_repo)]
    assert_one_line_failure(run_cli(*args, "--version", "1"), "already exists", "--force")


def test_cli_help() -> None:
    for command in ([], ["classifier"], ["generator"], ["defaults"]):
        assert run_cli(*command, "--help").returncode == 0
