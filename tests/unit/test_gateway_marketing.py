"""Marketing copy's text handling, without servers: pieces let out in whole words, the channel's character limit
cut at a word boundary, and channel templates with their [length] tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.gateway.fields import cut_at_word
from services.gateway.marketing import WordBoundedText
from services.gateway.templates import PromptTemplates


def let_out(pieces: list[str], max_chars: int) -> tuple[list[str], WordBoundedText]:
    text = WordBoundedText(max_chars)
    released = [text.feed(piece) for piece in pieces]
    released.append(text.finish())
    return released, text


@pytest.mark.parametrize(
    ("text", "max_chars", "cut"),
    [
        ("Big sale on socks", 40, "Big sale on socks"),
        ("Big sale on socks", 11, "Big sale on"),
        ("Big sale on socks", 12, "Big sale on"),
        ("Big sale on socks", 10, "Big sale"),
        ("Unbelievable", 5, "Unbel"),  # one word longer than the limit: cut where the limit falls
        ("Big\nsale on socks", 9, "Big\nsale"),
    ],
)
def test_cut_at_word(text: str, max_chars: int, cut: str) -> None:
    assert cut_at_word(text, max_chars) == cut


def test_words_are_let_out_whole_and_add_up_to_the_text() -> None:
    released, text = let_out(["  Warm", " mer", "ino", " socks", " for", "\n", "winter", "  "], 0)
    assert released == ["", "Warm", "", " merino", " socks", " for", "", "\nwinter", ""]
    assert "".join(released) == text.text == "Warm merino socks for\nwinter" and not text.cut


def test_nothing_past_the_limit_is_let_out() -> None:
    released, text = let_out([" Warm", " merino", " socks", " for", " winter", " hikes"], 20)
    assert "".join(released) == text.text == "Warm merino socks" and text.cut
    released, text = let_out([" Warm", " merino", " socks"], 17)  # the limit falls at the end: nothing is cut
    assert text.text == "Warm merino socks" and not text.cut


def test_channel_templates_need_a_length_table(tmp_path: Path) -> None:
    channel = tmp_path / "marketing_copy" / "fax" / "v1.toml"
    channel.parent.mkdir(parents=True)
    messages = '[[messages]]\nrole = "user"\ncontent = "Write {{ max_words }} words"\n'
    channel.write_text(f"[length]\ndefault_words = 20\nmax_words = 10\n{messages}")
    with pytest.raises(ValueError, match="default_words <= max_words"):
        PromptTemplates.load(tmp_path)
    channel.write_text(f"[length]\ndefault_words = 5\nmax_words = 10\nmax_chars = 40\n{messages}")
    templates = PromptTemplates.load(tmp_path)
    assert templates.kinds("marketing_copy") == ["fax"]
    template = templates.get("marketing_copy/fax")
    assert template.name == "marketing_copy/fax/v1" and template.length is not None
    assert (template.length.default_words, template.length.max_words, template.length.max_chars) == (5, 10, 40)
