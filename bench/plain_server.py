"""A plain unbatched grpc.aio classifier: the baseline that `bench.classifier` measures ecomserve against.

`python -m bench.plain_server --models DIR --name NAME --port N` serves ClassifierService.Classify for the highest
version of one exported model the way a 30-line server would: each request's texts are tokenized and run through
an onnxruntime session with its default options in the event loop's default executor, then the top labels are
put in the response. No batching, no limits, no metrics; grpc.health.v1 says SERVING once the model is loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
from ecomserve.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tokenizers import Tokenizer

from services.core.manifest import MODEL_FILE, TOKENIZER_FILE, Manifest, version_folders


class PlainClassifier(classifier_pb2_grpc.ClassifierServiceServicer):
    def __init__(self, folder: Path) -> None:
        manifest = Manifest.read(folder)
        self._labels = manifest.labels
        self._tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        self._tokenizer.enable_truncation(manifest.max_sequence_length)
        self._tokenizer.enable_padding(pad_id=int(manifest.special_tokens.get("pad_token_id") or 0))
        self._session = ort.InferenceSession(str(folder / MODEL_FILE), providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs()]

    def _probabilities(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], np.int64),
        }
        return self._session.run(None, {name: feeds[name] for name in self._inputs})[0]

    async def Classify(
        self, request: classifier_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> classifier_pb2.ClassifyResponse:
        loop = asyncio.get_running_loop()
        probabilities = await loop.run_in_executor(None, self._probabilities, list(request.texts))
        top_k = request.top_k or len(self._labels)
        results = []
        for row in probabilities:
            best = np.argsort(-row)[:top_k]
            labels = [classifier_pb2.LabelScore(label=self._labels[i], score=float(row[i])) for i in best]
            results.append(classifier_pb2.Classification(labels=labels))
        return classifier_pb2.ClassifyResponse(model=request.model, results=results)


async def serve(folder: Path, host: str, port: int) -> None:
    server = grpc.aio.server()
    classifier_pb2_grpc.add_ClassifierServiceServicer_to_server(PlainClassifier(folder), server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plain_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models"), help="model repository")
    parser.add_argument("--name", default="intent", help="classifier model to serve (its highest version)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    versions = version_folders(args.models, args.name)
    if not versions:
        parser.error(f"no model {args.name!r} under {args.models}")
    try:
        asyncio.run(serve(versions[max(versions)], args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
