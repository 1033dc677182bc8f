"""The answer's text as `tokenizer.decode` of all its ids reads, released one step at a time.

Decoding each step on its own is wrong for real tokenizers: a SentencePiece-style decoder
drops the space its output starts with, and a character split over byte tokens of two steps
decodes as replacement marks in both. `AnswerText` decodes a step together with the last
settled chunk of the answer before it and takes only what comes after that chunk's own
text, so a step reads as it does inside the whole answer.

Only settled text is released. While the decoded text ends in an unfinished character, that
character (and, with a byte-fallback decoder, every character of the same byte run, which
such decoders show as marks until the run completes) is held back for a later step; a step
that ends the answer releases everything, so the joined steps are exactly the decode of all
the answer's ids.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

UNFINISHED = "\ufffd"
"""What a decoder shows for the bytes of a character whose last bytes are still to come."""


class AnswerText:
    """The released text of one answer in one tokenizer, and where to decode the next step from."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []  # the answer's ids, in this tokenizer
        self.text = ""  # released so far
        self._start = 0  # decodes start here: the last chunk whose text was released whole
        self._settled = 0  # ... and that chunk ends here
        self._base = ""  # decode(ids[start:settled])
        self._extra = 0  # characters of the text after `settled` released already

    def pending(self, new_ids: Sequence[int]) -> str:
        """The text the answer's unreleased ids plus `new_ids` add after the released text, an
        unfinished end included; only an unfinished mark while a byte run that reaches back
        into released text is open again."""
        full = self._decode([*self.ids[self._start :], *new_ids])
        if not full.startswith(self._base):  # a byte run reopened: nothing after it is settled
            return UNFINISHED
        return full[len(self._base) :][self._extra :]

    def settled(self, new_ids: Sequence[int]) -> str:
        """`pending`, less an unfinished end: what a step may release mid-answer."""
        return self.pending(new_ids).rstrip(UNFINISHED)

    def final(self, new_ids: Sequence[int]) -> str:
        """What the last step of the answer adds: the rest of the decode of all the ids."""
        full = self._decode([*self.ids, *new_ids])
        if full.startswith(self.text):
            return full[len(self.text) :]
        return self.pending(new_ids)  # text handed over from another tokenizer reads differently here

    def release(self, new_ids: Sequence[int], text: str) -> None:
        """Add a recorded step written in this tokenizer: its ids and the text it released."""
        whole = text == self.pending(new_ids)
        self.ids.extend(new_ids)
        self.text += text
        if whole:  # all out: later steps decode after the chunk released since the last settling
            self._start, self._settled, self._extra = self._settled, len(self.ids), 0
            self._base = self._decode(self.ids[self._start : self._settled])
        else:  # an unfinished end held back: decode from the same place, skipping what is out
            self._extra += len(text)

    def receive(self, new_ids: Sequence[int], text: str) -> None:
        """Add a recorded step the other model wrote, re-tokenized here as `new_ids`: later steps
        decode after it, as a chunk of its own."""
        self._start = len(self.ids)
        self.ids.extend(new_ids)
        self.text += text
        self._settled, self._extra = len(self.ids), 0
        self._base = self._decode(self.ids[self._start :])

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)
