"""The gateway in front of real classifier and generator replicas: every operation over gRPC and over HTTP,
authentication, validation, deadlines."""

from __future__ import annotations

import time

import grpc
import pytest
from ecomserve.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from ecomserve.gateway.v1 import gateway_pb2
from google.protobuf import json_format

from tests.e2e import http_client
from tests.e2e.conftest import API_KEY, OTHER_KEY, ROUTES, Stack

pytestmark = pytest.mark.e2e

AUTH = (("x-api-key", API_KEY),)
MESSAGE = "Where is my order? It was supposed to arrive yesterday."
PRODUCT = {
    "title": "Trail running shoe",
    "category": "running shoes",
    "attributes": [{"key": "material", "value": "recycled mesh"}, {"key": "weight", "value": "260 g"}],
    "tone": "energetic",
    "maxWords": 20,
    "seed": "11",
}
REPLY = {
    "message": "Where is my order?",
    "order": {"orderId": "4471", "status": "shipped Monday", "items": [{"name": "Trail shoe", "quantity": 1}]},
    "agentName": "Sam",
    "maxWords": 15,
    "seed": "5",
}


def as_json(message: object) -> dict:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)  # type: ignore[arg-type]


def test_route_message_same_over_grpc_and_http(stack: Stack, gateway_stub) -> None:
    request = gateway_pb2.RouteMessageRequest(message=MESSAGE, channel="email", locale="en-US")
    response, call = gateway_stub.RouteMessage.with_call(request, metadata=AUTH, timeout=30)
    assert len(response.intents) == 3
    scores = [intent.score for intent in response.intents]
    assert scores == sorted(scores, reverse=True)
    assert response.queue == ROUTES[response.intents[0].label]
    assert not response.triaged and response.model == "intent"
    assert dict(call.trailing_metadata())["x-request-id"]
    _, call = gateway_stub.RouteMessage.with_call(request, metadata=(*AUTH, ("x-request-id", "abc-123")), timeout=30)
    assert dict(call.trailing_metadata())["x-request-id"] == "abc-123"

    reply = http_client.call(f"{stack.gateway.http}/v1/route-message", as_json(request), API_KEY)
    assert reply.status == 200
    assert reply.body == as_json(response)
    assert reply.headers["x-request-id"]


def test_route_message_agrees_with_the_classifier(stack: Stack, gateway_stub) -> None:
    routed = gateway_stub.RouteMessage(gateway_pb2.RouteMessageRequest(message=MESSAGE), metadata=AUTH, timeout=30)
    with grpc.insecure_channel(stack.classifiers[0].address) as channel:
        direct = classifier_pb2_grpc.ClassifierServiceStub(channel).Classify(
            classifier_pb2.ClassifyRequest(model="intent", texts=[MESSAGE], top_k=3), timeout=30
        )
    assert [(i.label, i.score) for i in routed.intents] == [(i.label, i.score) for i in direct.results[0].labels]


def test_classify_texts_same_over_grpc_and_http(stack: Stack, gateway_stub) -> None:
    request = gateway_pb2.ClassifyTextsRequest(model="sentiment", texts=["great shoes", "arrived broken"], top_k=2)
    with pytest.raises(grpc.RpcError) as error:  # the replicas serve only `intent` here
        gateway_stub.ClassifyTexts(request, metadata=AUTH, timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND and "sentiment" in error.value.details()
    assert http_client.call(f"{stack.gateway.http}/v1/classify-texts", as_json(request), API_KEY).status == 404

    request.model = "intent"
    response = gateway_stub.ClassifyTexts(request, metadata=AUTH, timeout=30)
    assert [len(result.labels) for result in response.results] == [2, 2]
    assert all(result.token_count > 0 for result in response.results)
    reply = http_client.call(f"{stack.gateway.http}/v1/classify-texts", as_json(request), API_KEY)
    assert reply.status == 200 and reply.body == as_json(response)


def test_describe_product_same_over_grpc_and_http(stack: Stack, gateway_stub) -> None:
    request = json_format.ParseDict(PRODUCT, gateway_pb2.DescribeProductRequest())
    response = gateway_stub.DescribeProduct(request, metadata=AUTH, timeout=60)
    assert response.description
    assert response.template == "describe_product/v1" and response.model == "llama"
    assert response.finish_reason != gateway_pb2.FINISH_REASON_UNSPECIFIED
    assert 0 < response.usage.completion_tokens <= 20 * 1.6 + 8
    reply = http_client.call(f"{stack.gateway.http}/v1/describe-product", PRODUCT, API_KEY)
    assert reply.status == 200 and reply.body == as_json(response)


def test_draft_reply_streams_the_same_over_grpc_and_http(stack: Stack, gateway_stub) -> None:
    request = json_format.ParseDict(REPLY, gateway_pb2.DraftReplyRequest())
    messages = list(gateway_stub.DraftReply(request, metadata=AUTH, timeout=60))
    assert len(messages) > 1
    assert all(m.finish_reason == gateway_pb2.FINISH_REASON_UNSPECIFIED for m in messages[:-1])
    last = messages[-1]
    assert last.finish_reason != gateway_pb2.FINISH_REASON_UNSPECIFIED and last.template == "draft_reply/v1"
    text = "".join(m.text for m in messages)
    assert text and last.usage.completion_tokens > 0

    for sse in (False, True):
        reply = http_client.stream(f"{stack.gateway.http}/v1/draft-reply", REPLY, API_KEY, sse=sse)
        assert reply.status == 200
        assert reply.headers["content-type"].startswith("text/event-stream" if sse else "application/x-ndjson")
        assert "".join(frame.get("text", "") for frame in reply.body) == text
        assert reply.body[-1]["finishReason"] == gateway_pb2.FinishReason.Name(last.finish_reason)
        assert reply.body[-1]["usage"]["completionTokens"] == last.usage.completion_tokens


@pytest.mark.parametrize(
    ("metadata", "header_key"),
    [((), None), ((("x-api-key", "not-a-key"),), "not-a-key"), ((("authorization", "Basic abc"),), None)],
    ids=["missing", "wrong", "wrong-scheme"],
)
def test_calls_without_a_valid_key_are_unauthenticated(stack: Stack, gateway_stub, metadata, header_key) -> None:
    request = gateway_pb2.RouteMessageRequest(message=MESSAGE)
    with pytest.raises(grpc.RpcError) as error:
        gateway_stub.RouteMessage(request, metadata=metadata, timeout=30)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    reply = http_client.call(f"{stack.gateway.http}/v1/route-message", {"message": MESSAGE}, header_key)
    assert reply.status == 401 and reply.body["error"]["code"] == "UNAUTHENTICATED"


def test_both_key_headers_and_both_key_forms_are_accepted(stack: Stack, gateway_stub) -> None:
    request = gateway_pb2.RouteMessageRequest(message=MESSAGE)
    for metadata in [(("authorization", f"Bearer {API_KEY}"),), (("x-api-key", OTHER_KEY),)]:
        assert gateway_stub.RouteMessage(request, metadata=metadata, timeout=30).queue
    reply = http_client.call(
        f"{stack.gateway.http}/v1/route-message", {"message": MESSAGE}, authorization=f"Bearer {OTHER_KEY}"
    )
    assert reply.status == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "code", "words"),
    [
        ("RouteMessage", "route-message", {"message": "  "}, grpc.StatusCode.INVALID_ARGUMENT, "message is empty"),
        ("RouteMessage", "route-message", {"message": "x" * 4001}, grpc.StatusCode.INVALID_ARGUMENT, "4000"),
        (
            "RouteMessage",
            "route-message",
            {"message": "hi", "channel": "c" * 65},
            grpc.StatusCode.INVALID_ARGUMENT,
            "channel",
        ),
        ("ClassifyTexts", "classify-texts", {"model": "intent"}, grpc.StatusCode.INVALID_ARGUMENT, "texts is empty"),
        (
            "ClassifyTexts",
            "classify-texts",
            {"model": "intent", "texts": ["a"] * 65},
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_texts_per_request=64",
        ),
        ("ClassifyTexts", "classify-texts", {"model": "nope", "texts": ["a"]}, grpc.StatusCode.NOT_FOUND, "nope"),
        (
            "ClassifyTexts",
            "classify-texts",
            {"model": "intent", "texts": ["a"], "topK": -1},
            grpc.StatusCode.INVALID_ARGUMENT,
            "top_k",
        ),
        ("EmbedTexts", "embed-texts", {"model": "intent"}, grpc.StatusCode.INVALID_ARGUMENT, "texts is empty"),
        (
            "EmbedTexts",
            "embed-texts",
            {"model": "intent", "texts": ["a"]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "is a classification model; call Classify",
        ),
        ("EmbedTexts", "embed-texts", {"model": "e", "texts": ["x" * 4001]}, grpc.StatusCode.INVALID_ARGUMENT, "4000"),
        ("DescribeProduct", "describe-product", {"title": ""}, grpc.StatusCode.INVALID_ARGUMENT, "title"),
        (
            "DescribeProduct",
            "describe-product",
            {"title": "t", "maxWords": 5},
            grpc.StatusCode.INVALID_ARGUMENT,
            "10..300",
        ),
        (
            "DescribeProduct",
            "describe-product",
            {"title": "t", "attributes": [{"key": "k", "value": "v"}] * 33},
            grpc.StatusCode.INVALID_ARGUMENT,
            "over 32",
        ),
        (
            "DescribeProduct",
            "describe-product",
            {"title": "t", "templateVersion": 9},
            grpc.StatusCode.NOT_FOUND,
            "template_version 9",
        ),
    ],
)
def test_bad_input_gets_a_precise_status(stack: Stack, gateway_stub, method, path, body, code, words) -> None:
    request_class = getattr(gateway_pb2, f"{method}Request")
    with pytest.raises(grpc.RpcError) as error:
        getattr(gateway_stub, method)(json_format.ParseDict(body, request_class()), metadata=AUTH, timeout=30)
    assert error.value.code() == code and words in error.value.details()
    reply = http_client.call(f"{stack.gateway.http}/v1/{path}", body, API_KEY)
    assert reply.status == {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404}[code]
    assert reply.body["error"]["code"] == code.name and words in reply.body["error"]["message"]


def test_draft_reply_validation_errors_come_before_the_stream(stack: Stack, gateway_stub) -> None:
    request = gateway_pb2.DraftReplyRequest(message="hi", template_version=7)
    with pytest.raises(grpc.RpcError) as error:
        list(gateway_stub.DraftReply(request, metadata=AUTH, timeout=30))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    reply = http_client.stream(f"{stack.gateway.http}/v1/draft-reply", {"message": ""}, API_KEY)
    assert reply.status == 400 and "message is empty" in reply.body["error"]["message"]


def test_http_rejects_a_body_that_is_not_the_request_message(stack: Stack) -> None:
    reply = http_client.call(f"{stack.gateway.http}/v1/route-message", {"mesage": "typo"}, API_KEY)
    assert reply.status == 400 and "RouteMessageRequest" in reply.body["error"]["message"]


def test_a_tiny_deadline_is_deadline_exceeded_not_a_hang(stack: Stack, gateway_stub) -> None:
    draft, draft_s = a_draft_that_runs_to_its_length(gateway_stub)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as error:
        gateway_stub.DescribeProduct(gateway_pb2.DescribeProductRequest(title="shoe"), metadata=AUTH, timeout=0.005)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # A deadline the backend cannot meet: a quarter of the time the same seeded draft took to run to its length.
    with pytest.raises(grpc.RpcError) as error:
        list(gateway_stub.DraftReply(draft, metadata=AUTH, timeout=draft_s / 4))
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    reply = http_client.call(
        f"{stack.gateway.http}/v1/describe-product", {"title": "shoe"}, API_KEY, **{"x-timeout-ms": "1"}
    )
    assert reply.status == 504 and reply.body["error"]["code"] == "DEADLINE_EXCEEDED"
    assert time.monotonic() - started < 10
    assert gateway_stub.RouteMessage(gateway_pb2.RouteMessageRequest(message=MESSAGE), metadata=AUTH, timeout=30)


def a_draft_that_runs_to_its_length(gateway_stub) -> tuple[gateway_pb2.DraftReplyRequest, float]:
    """A seeded draft that ends by LENGTH (sampling may end others early) and how long it took: the same seed
    gives the same tokens, so a deadline well under that time cannot be met."""
    for seed in range(20):
        request = gateway_pb2.DraftReplyRequest(message="Where is my order?", max_words=100, seed=seed)
        started = time.monotonic()
        final = list(gateway_stub.DraftReply(request, metadata=AUTH, timeout=60))[-1]
        if final.finish_reason == gateway_pb2.FINISH_REASON_LENGTH:
            return request, time.monotonic() - started
    pytest.fail("no seed in 0..19 gave a draft that runs to max_new_tokens")


def test_readiness_and_liveness_over_http(stack: Stack) -> None:
    assert http_client.call(f"{stack.gateway.http}/healthz").status == 200
    ready = http_client.call(f"{stack.gateway.http}/readyz")
    assert ready.status == 200 and ready.body["backends"] == {"classifier": True, "generator": True}
