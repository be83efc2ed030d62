"""Greedy agreement benchmark (JSON): how often each exported version of a generator, and optionally a peer server
on the same weights (llama.cpp's `/completion`), picks the token the fp32 graph picks.

Every version decodes the same prompts greedily (the export's parity prompts and customer messages, as user turns
through the model's chat template and tokenizer, as the generator serves them) for --tokens tokens. The share of
positions that match the fp32 version's tokens is the agreement `export defaults` holds a variant to (>= 0.98 to be
served); the peer gets the same token ids at temperature 0, so its number says how faithful the arithmetic of the
peer is to the dequantized weights (llama.cpp multiplies 4-bit weights with int8-quantized activations).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from export.defaults import MIN_GENERATOR_AGREEMENT
from export.generator import GREEDY_TOKENS, _OnnxDecoder, _token_agreement
from export.samples import GENERATOR_PROMPTS, customer_messages
from services.core.manifest import MODEL_FILE, TOKENIZER_FILE, Manifest, version_folders
from services.core.wire import DEFAULT_GENERATOR_MODEL
from services.generator.chat import ChatTemplate

END = -1  # every end-of-text id counts as this one token: servers differ in which they report


def run(models: Path, name: str, messages: int, tokens: int, peer_url: str | None) -> dict[str, Any]:
    versions = {v: (folder, Manifest.read(folder)) for v, folder in sorted(version_folders(models, name).items())}
    fp32 = next((v for v, (_, manifest) in versions.items() if manifest.quantization.get("method") == "none"), None)
    if fp32 is None:
        raise SystemExit(f"no fp32 version of {name!r} under {models}; run `python -m export defaults --out {models}`")
    folder, manifest = versions[fp32]
    prompts = _prompts(folder, manifest, messages)
    eos = [int(i) for i in manifest.special_tokens.get("eos_token_ids") or []]
    pad = manifest.special_tokens.get("pad_token_id")
    layers = int(manifest.decoder["num_layers"])

    def greedy(version_folder: Path) -> list[list[int]]:
        print(f"[bench] greedy decoding with {version_folder}", file=sys.stderr, flush=True)
        decoded = _OnnxDecoder(version_folder / MODEL_FILE, layers).greedy(prompts, pad or 0, eos, tokens)
        return [_ended(row, eos) for row in decoded]

    reference = greedy(folder)
    report: dict[str, Any] = {
        "model": name,
        "reference": f"v{fp32} (fp32)",
        "prompts": len(prompts),
        "greedy_tokens": tokens,
        "served_at_least": MIN_GENERATOR_AGREEMENT,
        "versions": {},
    }
    for version, (version_folder, version_manifest) in versions.items():
        if version == fp32:
            continue
        method = version_manifest.quantization.get("method", "none")
        report["versions"][f"v{version}"] = {"method": method, **_compare(greedy(version_folder), reference)}
    if peer_url:
        print(f"[bench] greedy decoding with {peer_url}", file=sys.stderr, flush=True)
        peer = [_peer_tokens(peer_url, prompt, tokens, eos) for prompt in prompts]
        report["peer"] = {"url": peer_url, **_compare(peer, reference)}
    return report


def _prompts(folder: Path, manifest: Manifest, messages: int) -> list[list[int]]:
    """Token ids of the parity prompts and the first `messages` customer messages, each a user turn."""
    tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
    template = ChatTemplate.load(folder, manifest.special_tokens)
    texts = [*GENERATOR_PROMPTS, *customer_messages()[:messages]]
    if template is None:
        return [tokenizer.encode(text).ids for text in texts]
    return [tokenizer.encode(template.render([("user", text)]), add_special_tokens=False).ids for text in texts]


def _peer_tokens(peer_url: str, prompt: list[int], tokens: int, eos: list[int]) -> list[int]:
    """llama.cpp server's greedy tokens for the prompt's ids (no penalty, no prompt cache between prompts)."""
    body = {
        "prompt": prompt,
        "n_predict": tokens,
        "temperature": 0,
        "repeat_penalty": 1.0,
        "return_tokens": True,
        "cache_prompt": False,
    }
    request = urllib.request.Request(
        f"{peer_url.removesuffix('/')}/completion", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.load(response)
    generated = _ended([int(t) for t in answer["tokens"]], eos)
    if answer.get("stop_type") == "eos" and (not generated or generated[-1] != END):
        generated.append(END)  # llama.cpp leaves the end-of-text token out of the tokens it returns
    return generated


def _ended(row: list[int], eos: list[int]) -> list[int]:
    """The row up to its first end-of-text token, which becomes END."""
    for index, token in enumerate(row):
        if token in eos:
            return [*row[:index], END]
    return row


def _compare(rows: list[list[int]], reference: list[list[int]]) -> dict[str, Any]:
    agreement = _token_agreement(rows, reference)["token_agreement"]
    return {
        "token_agreement": round(agreement, 3),
        "prompts_identical": sum(1 for row, want in zip(rows, reference, strict=True) if row == want),
        "first_token_differs": sum(1 for row, want in zip(rows, reference, strict=True) if row[:1] != want[:1]),
        "agrees_enough_to_serve": agreement >= MIN_GENERATOR_AGREEMENT,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agreement", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models"), help="model repository")
    parser.add_argument("--name", default=DEFAULT_GENERATOR_MODEL, help="generator model")
    parser.add_argument("--messages", type=int, default=24, help="customer messages to decode, beside 3 prompts")
    parser.add_argument("--tokens", type=int, default=GREEDY_TOKENS, help="greedy tokens per prompt")
    parser.add_argument("--peer-url", help="a llama.cpp server on the same GGUF, e.g. http://127.0.0.1:8088")
    options = parser.parse_args(argv)
    report = run(options.models, options.name, options.messages, options.tokens, options.peer_url)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
