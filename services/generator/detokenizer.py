"""Incremental detokenization with stop sequences, for streaming text deltas as tokens are generated.

Tokens are decoded in a sliding window (the previous token as context, as TGI and vLLM do), so each step costs
the same however long the output grows, and decoders that strip a leading space on the first token still give the
right spacing. A window that ends inside a multi-byte character (U+FFFD at its end) waits for the next token.
"""

from __future__ import annotations

from tokenizers import Tokenizer

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Text of one sequence's generated tokens, released in deltas that never split a character and never contain
    text that may still turn out to be the start of a stop sequence. After a stop sequence appears, `stopped` is
    True and the text ends right before it."""

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = stop
        self._longest_stop = max((len(s) for s in stop), default=0)
        self._ids: list[int] = []
        self._prefix_offset = 0  # window start: context token(s) already turned into text
        self._read_offset = 0  # tokens before this are in self.text
        self.text = ""
        self._released = 0  # characters of self.text already handed out
        self.stopped = False

    def add(self, token_id: int) -> None:
        """Append one generated token (special tokens add no text)."""
        if self.stopped:
            return
        self._ids.append(token_id)
        self._read_window(complete_only=True)

    def take(self, final: bool = False) -> str:
        """Text not handed out yet; unless final, the tail that could start a stop sequence stays back."""
        if final and not self.stopped:
            # Flush a character that never completed (the model stopped mid-character): show what we have.
            self._read_window(complete_only=False)
        end = len(self.text) if final or self.stopped else len(self.text) - self._held_back()
        delta = self.text[self._released : end]
        self._released = max(self._released, end)
        return delta

    def _read_window(self, complete_only: bool) -> None:
        """Append the text of the tokens after the read offset (decoded with their context token), then look for
        a stop sequence in what was added. With complete_only, wait while the window ends mid-character."""
        context = self._decode(self._ids[self._prefix_offset : self._read_offset])
        window = self._decode(self._ids[self._prefix_offset :])
        if len(window) <= len(context) or (complete_only and window.endswith(REPLACEMENT_CHAR)):
            return
        searched_from = max(0, len(self.text) - self._longest_stop + 1)
        self.text += window[len(context) :]
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        self._cut_at_stop(searched_from)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True) if ids else ""

    def _cut_at_stop(self, searched_from: int) -> None:
        found = [i for s in self._stop if (i := self.text.find(s, searched_from)) >= 0]
        if found:
            self.text = self.text[: min(found)]
            self.stopped = True

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop sequence."""
        for length in range(min(self._longest_stop - 1, len(self.text) - self._released), 0, -1):
            tail = self.text[-length:]
            if any(s.startswith(tail) for s in self._stop):
                return length
        return 0
