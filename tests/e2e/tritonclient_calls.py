"""`python -m tests.e2e.tritonclient_calls HOST:PORT` (gRPC, straight to the classifier), `... --http HOST:PORT
API_KEY` (REST, through the gateway) or `... --http HOST:PORT` (REST on the classifier's own HTTP port, no key):
the Open Inference Protocol calls of the e2e tests, made with tritonclient and printed as JSON.

It runs in a process of its own: tritonclient registers the protocol's messages (package `inference`) in the
protobuf pool under its own file, and so does ecomserve's generated code, which the test process imports.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from tests.fixtures import TEXTS


def text_input(texts: list[str]) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    return tensor


def error_of(call: Any) -> str:
    try:
        call()
    except InferenceServerException as error:
        return f"{error.status()} {error.message()}"
    return "no error"


def main(address: str) -> dict[str, Any]:
    client = triton.InferenceServerClient(address)
    sentiment = client.infer("sentiment", [text_input(TEXTS)])
    embed = client.infer(
        "embed",
        [text_input(TEXTS)],
        outputs=[triton.InferRequestedOutput("embeddings")],
        parameters={"truncate": True},
    )
    labels = sentiment.as_numpy("label")
    top2 = client.infer("sentiment", [text_input(TEXTS)], parameters={"top_k": 2}).as_numpy("label")
    classes = client.infer(
        "sentiment", [text_input(TEXTS)], outputs=[triton.InferRequestedOutput("probabilities", class_count=2)]
    ).as_numpy("probabilities")
    embed_classes = [triton.InferRequestedOutput("embeddings", class_count=1)]
    return {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("sentiment"),
        "server": client.get_server_metadata(as_json=True),
        "sentiment_metadata": client.get_model_metadata("sentiment", as_json=True),
        "embed_metadata": client.get_model_metadata("embed", as_json=True),
        "probabilities": sentiment.as_numpy("probabilities").tolist(),
        "labels": [label.decode() for label in labels],
        "top2": [[label.decode() for label in row] for row in top2],
        "classes": [[entry.decode() for entry in row] for row in classes],
        "embeddings": embed.as_numpy("embeddings").tolist(),
        "embed_outputs": [output["name"] for output in embed.get_response(as_json=True)["outputs"]],
        "unknown_model": error_of(lambda: client.infer("nope", [text_input(TEXTS)])),
        "too_long": error_of(lambda: client.infer("sentiment", [text_input(["refund " * 80])])),
        "wrong_input": error_of(lambda: client.infer("sentiment", [triton.InferInput("ids", [1], "INT64")])),
        "classes_of_embeddings": error_of(lambda: client.infer("embed", [text_input(TEXTS)], outputs=embed_classes)),
    }


def over_rest(address: str, api_key: str | None) -> dict[str, Any]:
    """The same model over v2 REST, JSON tensors: through the gateway with its API key, or on the classifier."""
    client = triton_http.InferenceServerClient(address)
    auth = {"x-api-key": api_key} if api_key else {}
    text = triton_http.InferInput("text", [len(TEXTS)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=np.object_), binary_data=False)
    wanted = [triton_http.InferRequestedOutput(n, binary_data=False) for n in ("probabilities", "label")]
    result = client.infer("sentiment", [text], outputs=wanted, headers=auth, parameters={"top_k": 2})
    wrong = triton_http.InferInput("text", [1], "INT64")
    wrong.set_data_from_numpy(np.array([1], dtype=np.int64), binary_data=False)
    classes = client.infer(
        "sentiment",
        [text],
        outputs=[triton_http.InferRequestedOutput("probabilities", binary_data=False, class_count=2)],
        headers=auth,
    ).as_numpy("probabilities")
    return {
        "live": client.is_server_live(headers=auth),
        "ready": client.is_server_ready(headers=auth),
        "model_ready": client.is_model_ready("sentiment", headers=auth),
        "sentiment_metadata": client.get_model_metadata("sentiment", headers=auth),
        "probabilities": result.as_numpy("probabilities").tolist(),
        "top2": [
            [label.decode() if isinstance(label, bytes) else label for label in row] for row in result.as_numpy("label")
        ],
        "classes": [[entry.decode() if isinstance(entry, bytes) else entry for entry in row] for row in classes],
        "unknown_model": error_of(lambda: client.infer("nope", [text], headers=auth)),
        "no_key": error_of(lambda: client.infer("sentiment", [text], outputs=wanted)),
        "wrong_datatype": error_of(lambda: client.infer("sentiment", [wrong], headers=auth)),
    }


if __name__ == "__main__":
    if sys.argv[1] == "--http":
        print(json.dumps(over_rest(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)))
    else:
        print(json.dumps(main(sys.argv[1])))
