"""RouteMessage's coalescing: how many Classify calls stay in flight (two per listed classifier replica unless
configured), and the request ids a coalesced call carries."""

from __future__ import annotations

import pytest

from services.gateway.coalescing import MAX_REQUEST_IDS_CHARS, joined_request_ids
from services.gateway.config import ROUTE_CALLS_PER_REPLICA, ROUTE_CALLS_UNLISTED, GatewayConfig


@pytest.mark.parametrize(
    ("classifier", "calls"),
    [
        ("127.0.0.1:50051", ROUTE_CALLS_PER_REPLICA),
        ("[::1]:50051", ROUTE_CALLS_PER_REPLICA),
        ("10.0.0.1:50051,10.0.0.2:50051,10.0.0.3:50051", 3 * ROUTE_CALLS_PER_REPLICA),
        ("dns:///classifier:50051", ROUTE_CALLS_UNLISTED),
        ("classifier.shop.svc:50051", ROUTE_CALLS_UNLISTED),
    ],
)
def test_default_follows_the_replicas_the_list_names(classifier: str, calls: int) -> None:
    assert GatewayConfig(classifier=classifier).route_calls == calls


def test_a_configured_count_wins() -> None:
    assert GatewayConfig(classifier="127.0.0.1:50051", route_max_calls=5).route_calls == 5


def test_bad_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="route_max_texts_per_call"):
        GatewayConfig(route_max_texts_per_call=0)
    with pytest.raises(ValueError, match="route_max_calls"):
        GatewayConfig(route_max_calls=-1)


def test_a_coalesced_call_lists_the_request_ids_within_the_metadata_budget() -> None:
    assert joined_request_ids(["a1", "b2", "c3"]) == "a1,b2,c3"
    ids = [f"{i:03d}" + "x" * 125 for i in range(100)]  # 100 callers with 128-character ids: 12.9 KB in all
    joined = joined_request_ids(ids)
    assert len(joined) <= MAX_REQUEST_IDS_CHARS + len(",+100 more")
    listed = joined.split(",")[:-1]
    assert listed == ids[: len(listed)] and joined.endswith(f",+{len(ids) - len(listed)} more")
