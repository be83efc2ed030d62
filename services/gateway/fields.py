"""Checks of request fields that several gateway operations share (lengths, word budgets, a product's facts), with
the limits the proto comments state."""

from __future__ import annotations

import re
from collections.abc import Sequence
from types import SimpleNamespace as Namespace  # template variables: attributes, never dict methods (`items`)
from typing import Protocol

from ecomserve.gateway.v1 import gateway_pb2
from ecomserve.generator.v1 import generator_pb2

from services.core import errors

MAX_CHANNEL_CHARS = 64
MAX_LOCALE_CHARS = 35
MAX_TITLE_CHARS = 200
MAX_CATEGORY_CHARS = 100
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_KEY_CHARS = 64
MAX_ATTRIBUTE_VALUE_CHARS = 256
MAX_TONE_CHARS = 32
MAX_ORDER_ITEMS = 20
MAX_SHORT_FIELD_CHARS = 64
MAX_STATUS_CHARS = 200
MIN_WORDS, MAX_WORDS = 10, 300
DEFAULT_TONE = "friendly"
SPACE = re.compile(r"\s")


class ProductFields(Protocol):
    """What DescribeProduct and WriteMarketingCopy say about a product."""

    @property
    def title(self) -> str: ...
    @property
    def category(self) -> str: ...
    @property
    def attributes(self) -> Sequence[gateway_pb2.ProductAttribute]: ...


def limit(field: str, value: str, max_chars: int) -> None:
    if len(value) > max_chars:
        raise errors.InvalidArgument(f"{field} has {len(value)} characters, over the limit of {max_chars}")


def required_text(field: str, text: str, max_chars: int) -> None:
    """A customer's text: not blank, at most max_chars characters."""
    if not text.strip():
        raise errors.InvalidArgument(f"{field} is empty")
    limit(field, text, max_chars)


def words(field: str, value: int, default: int, low: int = MIN_WORDS, high: int = MAX_WORDS) -> int:
    """A word budget: `default` for 0, else `value` within low..high."""
    if value == 0:
        return default
    if not low <= value <= high:
        raise errors.InvalidArgument(f"{field} must be {low}..{high} (0 means {default}), got {value}")
    return value


def cut_at_word(text: str, max_chars: int) -> str:
    """`text` if it fits `max_chars`, else its longest prefix that ends at a word boundary and fits (a first word
    longer than the limit is cut where the limit falls)."""
    if len(text) <= max_chars:
        return text
    spaces = [match.start() for match in SPACE.finditer(text, 0, max_chars + 1)]
    return text[: spaces[-1]].rstrip() if spaces and spaces[-1] > 0 else text[:max_chars]


def tone(value: str) -> str:
    limit("tone", value, MAX_TONE_CHARS)
    return value.strip() or DEFAULT_TONE


def product(request: ProductFields) -> Namespace:
    """The product as template variables (title, category, attributes of key and value), once its fields pass
    their limits."""
    if not request.title.strip():
        raise errors.InvalidArgument("title is required")
    limit("title", request.title, MAX_TITLE_CHARS)
    limit("category", request.category, MAX_CATEGORY_CHARS)
    if len(request.attributes) > MAX_ATTRIBUTES:
        raise errors.InvalidArgument(f"attributes has {len(request.attributes)} entries, over {MAX_ATTRIBUTES}")
    for index, attribute in enumerate(request.attributes):
        if not attribute.key.strip() or not attribute.value.strip():
            raise errors.InvalidArgument(f"attributes[{index}] needs a non-empty key and value")
        limit(f"attributes[{index}].key", attribute.key, MAX_ATTRIBUTE_KEY_CHARS)
        limit(f"attributes[{index}].value", attribute.value, MAX_ATTRIBUTE_VALUE_CHARS)
    return Namespace(
        title=request.title.strip(),
        category=request.category.strip(),
        attributes=[Namespace(key=a.key.strip(), value=a.value.strip()) for a in request.attributes],
    )


def usage(generated: generator_pb2.Usage) -> gateway_pb2.Usage:
    """The generator's token counts in the gateway's message."""
    return gateway_pb2.Usage(prompt_tokens=generated.prompt_tokens, completion_tokens=generated.completion_tokens)
