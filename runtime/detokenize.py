"""Incremental detokenization and stop strings, per request.

Decoding a request's whole text again at every step costs O(tokens^2); this decodes a short
window instead (vLLM's prefix/read offsets): the text of ids[prefix:] minus the text of
ids[prefix:read] is what the newest tokens added, and a trailing U+FFFD means a UTF-8 character
is still incomplete, so nothing is emitted yet. Stop strings are searched only where new text
could complete one, and text that might still become a stop string is held back from the stream.
"""

from __future__ import annotations

from typing import Protocol, Sequence


class Decoder(Protocol):
    def decode(self, ids: list[int]) -> str: ...


class TextStream:
    """Feed token ids with ``push``; read the text so far (``text``) and what may be shown
    (``pop``), with the first stop string, if any, cut off.

    >>> class Chars:
    ...     def decode(self, ids): return "".join(chr(i) for i in ids)
    >>> s = TextStream(Chars(), stop=("ab",))
    >>> [s.push(ord(c)) for c in "xya"], s.pop()     # 'a' may start 'ab': held back
    ([False, False, False], 'xy')
    >>> s.push(ord("b")), s.text, s.pop()
    (True, 'xy', '')
    """

    def __init__(self, decoder: Decoder, stop: Sequence[str] = ()):
        if any(not s for s in stop):
            raise ValueError("stop strings must not be empty")
        self.decoder = decoder
        self.stop = tuple(stop)
        self.ids: list[int] = []
        self.text = ""
        self.stopped = False
        self._prefix = 0  # ids[_prefix:_read] decode to text already emitted (context for the next piece)
        self._read = 0
        self._shown = 0

    def push(self, token_id: int) -> bool:
        """Add one token; True if it completed a stop string (the text is then cut before it)."""
        if self.stopped:
            raise RuntimeError("push after a stop string")
        self.ids.append(int(token_id))
        before = self.decoder.decode(self.ids[self._prefix:self._read])
        after = self.decoder.decode(self.ids[self._prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return False  # nothing complete yet
        new = after[len(before):]
        self._prefix, self._read = self._read, len(self.ids)
        start = max(0, len(self.text) - max((len(s) for s in self.stop), default=1) + 1)
        self.text += new
        for s in self.stop:
            i = self.text.find(s, start)
            if i >= 0:
                self.text, self.stopped = self.text[:i], True
                break
        return self.stopped

    def pop(self, final: bool = False) -> str:
        """Text not shown before; while running, withholds a tail that may begin a stop string."""
        end = len(self.text)
        if not (final or self.stopped):
            end -= self._held(self.text)
        piece = self.text[self._shown:end]
        self._shown = max(self._shown, end)
        return piece

    def _held(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best
