"""WriteMarketingCopy and AnalyzeReviews through the gateway, in front of real classifier and generator replicas on
tiny models: variants differ, reproduce by seed and stream in pieces that add up; channel limits hold; reviews
are classified in order across several Classify calls and summed up; the summary fits the generator's input; bad
input gets its status; the README's JSON examples run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from ecomserve.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from ecomserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from google.protobuf import json_format

from bench.load import DEFAULT_MODELS, GATEWAY_METHODS
from services.dev.launcher import free_port
from services.gateway.config import PACKAGE_DIR
from services.generator.sequence import FinishReason
from tests.e2e import http_client
from tests.e2e.conftest import (
    API_KEY,
    GENERATOR_MODEL,
    Launcher,
    Process,
    cancelled_sequences,
    finished_sequences,
    load_report,
    readme_json_requests,
    wait_until,
)

pytestmark = pytest.mark.e2e

AUTH = (("x-api-key", API_KEY),)
ATTEMPTS, VARIANTS = 5, 8  # a caller leaving mid-generation
TEXTS_PER_CALL = 16  # the gateway's --max-texts-per-request: 40 reviews take three Classify calls
# Two channels with the same prompt, one limited to a few characters: the same seed writes the same text in both.
SHORT_CHANNEL, SHORT_CHANNEL_CHARS, UNLIMITED_CHANNEL = "tiny_banner", 24, "tiny_banner_unlimited"
PRODUCT = {
    "title": "Merino wool hiking socks",
    "category": "socks",
    "attributes": [{"key": "material", "value": "merino wool"}, {"key": "pack", "value": "3 pairs"}],
}


@dataclass
class Jobs:
    classifier: Process
    generator: Process
    generator_metrics_port: int
    gateway: Process
    stub: gateway_pb2_grpc.GatewayServiceStub


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory, model_repo: Path, generator_repo: Path) -> Iterator[Jobs]:
    folder = tmp_path_factory.mktemp("jobs")
    templates = folder / "templates"
    shutil.copytree(PACKAGE_DIR / "templates", templates)
    banner = (templates / "marketing_copy" / "banner" / "v1.toml").read_text().replace('stop = ["\\n"]', "stop = []")
    for channel, max_chars in ((SHORT_CHANNEL, SHORT_CHANNEL_CHARS), (UNLIMITED_CHANNEL, 0)):
        (templates / "marketing_copy" / channel).mkdir()
        (templates / "marketing_copy" / channel / "v1.toml").write_text(
            banner.replace("max_chars = 60", f"max_chars = {max_chars}")
        )
    launcher = Launcher(folder)
    metrics_port = free_port()
    try:
        classifier = launcher.start(
            "services.classifier", "--models", str(model_repo), "--model-names", "intent,sentiment,embed"
        )
        generator = launcher.start(
            "services.generator", "--models", str(generator_repo), "--model-names", GENERATOR_MODEL,
            "--metrics-port", str(metrics_port),
        )  # fmt: skip
        # No rate limit: the load-generator tests send hundreds of calls a second with one key, one after another,
        # and 200/s with a burst of 400 refused some of them depending on how fast this machine was.
        gateway = launcher.gateway(
            [classifier],
            generator,
            "--templates",
            str(templates),
            "--max-texts-per-request",
            str(TEXTS_PER_CALL),
            "--rate-limit-per-s",
            "0",
        )
        for process in (classifier, generator, gateway):
            process.wait_serving()
        with grpc.insecure_channel(gateway.address) as channel:
            yield Jobs(classifier, generator, metrics_port, gateway, gateway_pb2_grpc.GatewayServiceStub(channel))
    finally:
        launcher.stop_all()


def marketing(**fields: object) -> gateway_pb2.WriteMarketingCopyRequest:
    return json_format.ParseDict({**PRODUCT, **fields}, gateway_pb2.WriteMarketingCopyRequest())


def write(
    jobs: Jobs, request: gateway_pb2.WriteMarketingCopyRequest
) -> tuple[dict[int, str], gateway_pb2.WriteMarketingCopyResponse]:
    """The streamed pieces put together per variant, and the last message."""
    *pieces, last = jobs.stub.WriteMarketingCopy(request, metadata=AUTH, timeout=120)
    texts: dict[int, str] = {}
    for piece in pieces:
        assert piece.HasField("variant") and not piece.variants
        texts[piece.variant] = texts.get(piece.variant, "") + piece.text
    assert not last.HasField("variant")
    return texts, last


def test_variants_differ_and_their_pieces_add_up(jobs: Jobs) -> None:
    texts, last = write(jobs, marketing(channel="sms", audience="hikers", variants=4, seed="100"))
    assert [variant.index for variant in last.variants] == [0, 1, 2, 3]
    assert [variant.seed for variant in last.variants] == [100, 101, 102, 103]
    assert {i: v.text for i, v in enumerate(last.variants) if v.text} == texts
    assert len({variant.text for variant in last.variants}) > 1, "different seeds wrote the same copy"
    assert last.template == "marketing_copy/sms/v1" and last.model == GENERATOR_MODEL and last.model_version == 1
    for variant in last.variants:
        assert len(variant.text) <= 160 and variant.text == variant.text.strip()
        assert variant.usage.completion_tokens > 0 and variant.usage.prompt_tokens > 0
        assert variant.finish_reason != gateway_pb2.FINISH_REASON_UNSPECIFIED


def test_a_variant_is_written_again_from_its_seed_over_grpc_and_http(jobs: Jobs) -> None:
    _, together = write(jobs, marketing(channel="social_post", variants=3, seed="7"))
    _, alone = write(jobs, marketing(channel="social_post", variants=1, seed=str(together.variants[2].seed)))
    assert alone.variants[0].text == together.variants[2].text

    body = {**PRODUCT, "channel": "social_post", "variants": 3, "seed": "7"}
    expected = json_format.MessageToDict(together)
    for sse in (False, True):
        reply = http_client.stream(f"{jobs.gateway.http}/v1/write-marketing-copy", body, API_KEY, sse=sse)
        assert reply.status == 200
        *pieces, last = reply.body
        assert last == expected
        for variant in last["variants"]:
            index = variant.get("index", 0)
            assert "".join(p["text"] for p in pieces if p["variant"] == index) == variant["text"]


def test_copy_over_the_channel_limit_is_cut_at_a_word_boundary(jobs: Jobs) -> None:
    _, limited = write(jobs, marketing(channel=SHORT_CHANNEL, variants=8, seed="1", maxWords=12))
    _, unlimited = write(jobs, marketing(channel=UNLIMITED_CHANNEL, variants=8, seed="1", maxWords=12))
    assert sum(variant.cut_to_limit for variant in limited.variants) >= 1
    for cut, whole in zip(limited.variants, unlimited.variants, strict=True):
        assert not whole.cut_to_limit and whole.usage == cut.usage
        assert len(cut.text) <= SHORT_CHANNEL_CHARS
        if len(whole.text) <= SHORT_CHANNEL_CHARS:
            assert cut.text == whole.text and not cut.cut_to_limit
            continue
        assert cut.cut_to_limit and cut.finish_reason == gateway_pb2.FINISH_REASON_LENGTH
        ends = [
            i for i in range(1, SHORT_CHANNEL_CHARS + 1) if whole.text[i].isspace() and not whole.text[i - 1].isspace()
        ]
        assert cut.text == (whole.text[: ends[-1]] if ends else whole.text[:SHORT_CHANNEL_CHARS])


@pytest.mark.parametrize(
    ("fields", "code", "mentions"),
    [
        ({"channel": "fax"}, grpc.StatusCode.INVALID_ARGUMENT, "email_subject"),
        ({}, grpc.StatusCode.INVALID_ARGUMENT, "channel is required"),
        ({"channel": "sms", "variants": 9}, grpc.StatusCode.INVALID_ARGUMENT, "variants"),
        ({"channel": "sms", "maxWords": 31}, grpc.StatusCode.INVALID_ARGUMENT, "max_words must be 1..30"),
        ({"channel": "sms", "title": " "}, grpc.StatusCode.INVALID_ARGUMENT, "title"),
        ({"channel": "sms", "audience": "x" * 201}, grpc.StatusCode.INVALID_ARGUMENT, "audience"),
        ({"channel": "sms", "templateVersion": 9}, grpc.StatusCode.NOT_FOUND, "template_version 9"),
    ],
    ids=["unknown-channel", "no-channel", "too-many-variants", "too-many-words", "no-title", "long-audience",
         "unknown-template"],
)  # fmt: skip
def test_bad_marketing_requests(jobs: Jobs, fields: dict, code: grpc.StatusCode, mentions: str) -> None:
    with pytest.raises(grpc.RpcError) as error:
        write(jobs, marketing(**fields))
    assert error.value.code() == code and mentions in error.value.details()
    reply = http_client.stream(f"{jobs.gateway.http}/v1/write-marketing-copy", {**PRODUCT, **fields}, API_KEY)
    assert reply.status == {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404}[code]
    assert mentions in reply.body["error"]["message"]


def ended_of_themselves(metrics_port: int) -> float:
    """The generator's count of sequences that finished (length, stop sequence, end of text), not cut short."""
    return sum(finished_sequences(metrics_port, finish_reason=reason.value) for reason in FinishReason)


def test_a_caller_that_goes_away_stops_every_variant(jobs: Jobs) -> None:
    # Seeds 22-29 write 181-232 tokens each (the longest shortest variant of any 8 seeds in a row from 0 to 95; seeds
    # 5-12 wrote 98-232), still a fraction of a second: on a busy machine the caller may leave later than that
    # (beside a busy process, often after all 8 had ended). Such variants show nothing; every variant still running
    # when the caller left must be stopped. An attempt in which none was running, or one ended of itself while the
    # leaving reached the generator, is repeated.
    port = jobs.generator_metrics_port
    for _ in range(ATTEMPTS):
        cancelled_before, ended_before = cancelled_sequences(port), finished_sequences(port)
        natural_before = ended_of_themselves(port)
        stream = jobs.stub.WriteMarketingCopy(
            marketing(channel="email_body", variants=VARIANTS, maxWords=300, seed="22"), metadata=AUTH, timeout=120
        )
        started = set()
        for response in stream:  # every variant is running on the generator once it has sent a piece
            started.add(response.variant)
            if len(started) == VARIANTS:
                break
        stream.cancel()
        # Counted by their own finish reasons: cancellations counted meanwhile do not change this figure.
        running_when_left = VARIANTS - (ended_of_themselves(port) - natural_before)
        wait_until(
            lambda before=ended_before: finished_sequences(port) >= before + VARIANTS,
            "variants went on after their caller left",
            15,
        )
        if running_when_left and cancelled_sequences(port) - cancelled_before == running_when_left:
            return
    pytest.fail(f"in {ATTEMPTS} attempts, the caller's leaving never stopped the variants still running")


REVIEWS = [
    ("Great socks, warm and soft.", 5),
    ("They fell apart after a week.", 1),
    ("Fine for the price.", 3),
    ("Arrived late and the box was torn.", 2),
    ("My favourite hiking socks ever!", 5),
]


def reviews(count: int, text_chars: int = 0) -> list[dict]:
    """`count` reviews cycling through REVIEWS (each padded to `text_chars` when given), ids r0, r1, ..."""
    made = []
    for index in range(count):
        text, rating = REVIEWS[index % len(REVIEWS)]
        text = f"{text} (order {index})"
        if text_chars:
            text = (text + " " + "Still wearing them on long walks." * 20)[:text_chars]
        made.append({"text": text, "rating": rating, "id": f"r{index}"})
    return made


def analyze(jobs: Jobs, **fields: object) -> gateway_pb2.AnalyzeReviewsResponse:
    request = json_format.ParseDict(fields, gateway_pb2.AnalyzeReviewsRequest())
    return jobs.stub.AnalyzeReviews(request, metadata=AUTH, timeout=120)


def test_reviews_are_classified_in_order_and_summed_up(jobs: Jobs) -> None:
    sent = reviews(40)
    analyzed = analyze(jobs, reviews=sent, model="sentiment", topK=2)
    with grpc.insecure_channel(jobs.classifier.address) as channel:
        direct = classifier_pb2_grpc.ClassifierServiceStub(channel).Classify(
            classifier_pb2.ClassifyRequest(model="sentiment", texts=[r["text"] for r in sent]), timeout=60
        )
    assert analyzed.model == "sentiment" and analyzed.version == direct.version
    assert [result.id for result in analyzed.results] == [r["id"] for r in sent]
    for result, expected in zip(analyzed.results, direct.results, strict=True):
        assert [(s.label, s.score) for s in result.labels] == [(s.label, s.score) for s in expected.labels[:2]]
        assert result.token_count == expected.token_count
    best = [result.labels[0].label for result in direct.results]
    assert sum(stat.count for stat in analyzed.labels) == len(sent)
    for stat in analyzed.labels:
        assert stat.count == best.count(stat.label)
        scores = [s.score for result in direct.results for s in result.labels if s.label == stat.label]
        assert stat.mean_score == pytest.approx(sum(scores) / len(sent), rel=1e-5)
    assert analyzed.rating_checked
    disagreeing = [
        index
        for index, (label, review) in enumerate(zip(best, sent, strict=True))
        if (label == "negative" and review["rating"] >= 4) or (label == "positive" and review["rating"] <= 2)
    ]
    assert list(analyzed.rating_disagreements) == disagreeing
    assert [i for i, result in enumerate(analyzed.results) if result.disagrees_with_rating] == disagreeing
    assert not analyzed.HasField("summary")

    reply = http_client.call(f"{jobs.gateway.http}/v1/analyze-reviews", {"reviews": sent, "model": "sentiment",
                                                                        "topK": 2}, API_KEY)  # fmt: skip
    assert reply.status == 200
    assert reply.body == json_format.MessageToDict(analyzed, always_print_fields_with_no_presence=True)


def test_without_a_model_the_routing_model_answers_and_ratings_are_not_checked(jobs: Jobs) -> None:
    analyzed = analyze(jobs, reviews=reviews(3))
    assert analyzed.model == "intent" and not analyzed.rating_checked and not analyzed.rating_disagreements
    assert all(len(result.labels) == 3 for result in analyzed.results)  # all of the tiny intent model's labels


def test_the_summary_uses_the_reviews_that_fit_the_generators_input(jobs: Jobs) -> None:
    few = analyze(jobs, reviews=reviews(5), summarize=True, product="hiking socks", seed="3", summaryMaxWords=20)
    assert few.summary.reviews_used == 5 and few.summary.template == "summarize_reviews/v1"
    assert few.summary.model == GENERATOR_MODEL and few.summary.usage.completion_tokens > 0
    assert few.summary.finish_reason != gateway_pb2.FINISH_REASON_UNSPECIFIED
    again = analyze(jobs, reviews=reviews(5), summarize=True, product="hiking socks", seed="3", summaryMaxWords=20)
    assert again.summary.text == few.summary.text

    many = analyze(jobs, reviews=reviews(40, text_chars=300), truncate=True, summarize=True, summaryMaxWords=20)
    assert 0 < many.summary.reviews_used < 40
    assert many.summary.usage.prompt_tokens <= 511  # the tiny generator's max_input_tokens (its context - 1)
    assert len(many.results) == 40  # every review is classified, whatever the summary used


@pytest.mark.parametrize(
    ("fields", "code", "mentions"),
    [
        ({"reviews": []}, grpc.StatusCode.INVALID_ARGUMENT, "reviews is empty"),
        ({"reviews": reviews(201)}, grpc.StatusCode.INVALID_ARGUMENT, "over the limit of 200"),
        ({"reviews": [*reviews(5), {"text": "  "}]}, grpc.StatusCode.INVALID_ARGUMENT, "reviews[5].text is empty"),
        ({"reviews": [{"text": "x" * 4001}]}, grpc.StatusCode.INVALID_ARGUMENT, "reviews[0].text has 4001"),
        ({"reviews": [*reviews(20), {"text": "a " * 80}], "model": "sentiment"},
         grpc.StatusCode.INVALID_ARGUMENT, "reviews[20].text is longer"),
        ({"reviews": [{"text": "ok", "rating": 6}]}, grpc.StatusCode.INVALID_ARGUMENT, "reviews[0].rating"),
        ({"reviews": reviews(2), "model": "nope"}, grpc.StatusCode.NOT_FOUND, "nope"),
        ({"reviews": reviews(2), "model": "embed"}, grpc.StatusCode.INVALID_ARGUMENT, "embed"),
        ({"reviews": reviews(2), "summarize": True, "summaryMaxWords": 5},
         grpc.StatusCode.INVALID_ARGUMENT, "summary_max_words"),
        ({"reviews": reviews(2), "summarize": True, "templateVersion": 9},
         grpc.StatusCode.NOT_FOUND, "template_version 9"),
    ],
    ids=["none", "too-many", "empty", "too-many-chars", "too-many-tokens", "rating", "unknown-model",
         "embedding-model", "summary-words", "unknown-template"],
)  # fmt: skip
def test_bad_review_requests(jobs: Jobs, fields: dict, code: grpc.StatusCode, mentions: str) -> None:
    with pytest.raises(grpc.RpcError) as error:
        analyze(jobs, **fields)
    assert error.value.code() == code and mentions in error.value.details(), error.value.details()
    reply = http_client.call(f"{jobs.gateway.http}/v1/analyze-reviews", fields, API_KEY)
    assert reply.status == {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404}[code]


def test_an_over_long_review_is_cut_when_asked(jobs: Jobs) -> None:
    analyzed = analyze(jobs, reviews=[*reviews(20), {"text": "a " * 80}], model="sentiment", truncate=True)
    assert analyzed.results[20].truncated and not any(result.truncated for result in analyzed.results[:20])


def test_the_readme_json_examples_run(jobs: Jobs) -> None:
    examples = readme_json_requests()
    paths = [path for path, _ in examples]
    assert {"/v1/write-marketing-copy", "/v1/analyze-reviews"} <= set(paths), paths
    for path, request in examples:
        if path == "/v1/write-marketing-copy":
            reply = http_client.stream(f"{jobs.gateway.http}{path}", request, API_KEY)
            assert reply.status == 200 and len(reply.body[-1]["variants"]) == request.get("variants", 1)
        else:
            reply = http_client.call(f"{jobs.gateway.http}{path}", request, API_KEY)
            assert reply.status == 200, reply.body
            assert len(reply.body["results"]) == len(request["reviews"])


@pytest.mark.parametrize("rpc", [rpc for rpc in GATEWAY_METHODS if rpc != "route-message"])
def test_the_load_generator_drives_every_gateway_operation(jobs: Jobs, rpc: str) -> None:
    model = ["--model", "embed" if rpc == "embed-texts" else DEFAULT_MODELS.get(rpc, "")]
    report = load_report(
        "--target", jobs.gateway.address, "--rpc", rpc, "--concurrency", "2", "--duration", "1",
        "--max-new-tokens", "24", "--texts-per-request", "2", "--api-key", API_KEY, *(model if model[1] else []),
    )  # fmt: skip
    assert report["requests_ok"] > 0 and set(report["codes"]) == {"OK"}, report["codes"]
    if rpc in ("draft-reply", "write-marketing-copy"):
        assert report["tokens_in_window"] > 0 and report["ttft_ms"]["p50"] is not None


def test_the_load_generator_fails_when_nothing_succeeds() -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "bench.load", "--target", f"127.0.0.1:{free_port()}", "--rpc", "describe-product",
         "--duration", "1", "--warmup", "0", "--timeout", "0.5", "--concurrency", "2"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert ran.returncode == 1 and "no call succeeded" in ran.stderr
    report = json.loads(ran.stdout, parse_constant=lambda constant: pytest.fail(f"{constant} is not JSON"))
    assert report["requests_ok"] == 0 and report["latency_ms"]["p50"] is None and report["codes"]
