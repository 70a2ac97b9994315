"""Remove every trace of a call's credentials from upstream error text.

Upstreams quote the key they were sent in their error bodies, whole (llm-katan),
masked to a prefix and suffix (OpenAI's ``sk-abc1****wxyz``), as a middle
fragment, or encoded: base64 (a Basic ``Authorization`` header echoed back),
URL-encoded (a query string echoed back), hex, JSON-escaped. Removing only the
exact value misses all of those, so :class:`CredentialScrubber` removes **every
run of 8 or more characters that is a substring of a credential or of one of its
encodings**, and a credential shorter than that wherever it appears whole.

The encodings covered, for each credential:

* the value itself and its JSON string escapes (``\\"``, ``\\uXXXX``, ``\\/``);
* percent-encoding: ``quote`` with and without ``/`` kept, ``quote_plus``, and
  upper- or lower-case hex digits;
* hex, upper and lower case;
* base64 and base64url, padded or not, at all three alignments: inside a longer
  encoded value the credential's bytes can start at any offset modulo 3, and
  each offset gives different characters. Only the characters made of
  credential bits alone are used (see :func:`_base64_forms`).

A credential that is a JSON object (Bedrock's ``{"access_key_id",
"secret_access_key", "session_token"}``) is scrubbed as its string values of 8
or more characters, and as the whole document verbatim: its structure
(``"access_key_id"``) is not secret and is not removed from messages.

Cost: building a scrubber makes the set of 8-character windows of every form
(about 30 forms per credential, each a few times its length); scrubbing a text
looks every window of it up in that set once and merges the hits into runs, so
it is linear in the text. It runs on error paths only.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import traceback
from collections.abc import Iterable, Iterator
from urllib.parse import quote, quote_plus

from shared.errors import ModelbusError

WINDOW = 8
"""Shortest quoted fragment that is removed; shorter credentials are removed whole."""
REDACTED = "[redacted]"
"""What a removed run of text is replaced with."""

_PERCENT_HEX = re.compile(r"%[0-9A-F]{2}")


def credential_parts(value: str) -> list[str]:
    """The strings of ``value`` that are secret: its JSON object's string leaves, else itself."""
    stripped = value.strip()
    if not stripped.startswith("{"):
        return [value]
    try:
        document = json.loads(stripped)
    except ValueError:
        return [value]
    leaves = [leaf for leaf in _string_leaves(document) if len(leaf) >= WINDOW]
    return leaves or [value]


def _string_leaves(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for child in node.values():
            yield from _string_leaves(child)
    elif isinstance(node, list):
        for child in node:
            yield from _string_leaves(child)


def encoded_forms(value: str) -> set[str]:
    """``value`` and the encodings of it an upstream may quote (see the module docstring).

    A value shorter than :data:`WINDOW` gets only whole encodings (base64 of it
    alone, not the fragments of it inside a longer value): those fragments are a
    character or two, and removing them everywhere would shred every message.
    """
    raw = value.encode()
    forms = {value}
    for ascii_only in (True, False):
        escaped = json.dumps(value, ensure_ascii=ascii_only)[1:-1]
        forms.update((escaped, escaped.replace("/", "\\/")))
    for percent in (quote(value, safe=""), quote(value), quote_plus(value, safe=""), quote_plus(value)):
        forms.update((percent, _PERCENT_HEX.sub(lambda m: m.group(0).lower(), percent)))
    hexed = binascii.hexlify(raw).decode()
    forms.update((hexed, hexed.upper()))
    if len(value) >= WINDOW:
        forms.update(_base64_forms(raw))
    else:
        whole = base64.b64encode(raw).decode()
        for text in (whole, whole.rstrip("=")):
            forms.update((text, text.replace("+", "-").replace("/", "_")))
    forms.discard("")
    return forms


def _base64_forms(raw: bytes) -> Iterator[str]:
    """Base64 and base64url of ``raw`` at offsets 0, 1 and 2 of an enclosing value.

    Output character ``j`` holds bits ``6j .. 6j+5``; with ``shift`` unknown bytes
    before the credential it is the credential's alone when ``6j >= 8*shift`` and
    ``6j + 6 <= 8*(shift + len(raw))``. That stable run matches whatever encloses
    the credential. When the credential ends the encoded value, the characters up
    to the end (and the padding) are its alone too, so that form is added as well.
    """
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw).decode()
        first = -(-8 * shift // 6)
        stable = encoded[first : 8 * (shift + len(raw)) // 6]
        ending = encoded[first:]
        for text in (stable, ending, ending.rstrip("=")):
            yield text
            yield text.replace("+", "-").replace("/", "_")


class CredentialScrubber:
    """Remove a fixed set of credentials, in every form, from texts.

    Build one per error (cheap), from every credential the call sent; then
    :meth:`scrub` each text that leaves the process.
    """

    __slots__ = ("_whole", "_windows")

    def __init__(self, credentials: Iterable[str]) -> None:
        windows: set[str] = set()
        whole: set[str] = set()
        for credential in credentials:
            if not credential:
                continue
            parts = credential_parts(credential)
            if parts != [credential]:
                whole.add(credential)  # a JSON document: verbatim, but not its structure's fragments
            for part in parts:
                for form in encoded_forms(part):
                    if len(part) < WINDOW or len(form) < WINDOW:
                        whole.add(form)
                    else:
                        windows.update(form[i : i + WINDOW] for i in range(len(form) - WINDOW + 1))
        self._windows = frozenset(windows)
        self._whole = (
            re.compile("|".join(re.escape(w) for w in sorted(whole, key=len, reverse=True))) if whole else None
        )

    def __bool__(self) -> bool:
        return bool(self._windows) or self._whole is not None

    def __repr__(self) -> str:  # never the windows themselves: they are the secret
        return f"CredentialScrubber({len(self._windows)} windows)"

    def scrub(self, text: str) -> str:
        """``text`` with every credential fragment replaced by ``[redacted]``."""
        if not text:
            return text
        runs = self._runs(text)
        if not runs:
            return text
        out: list[str] = []
        emitted = 0
        for start, end in runs:
            out.append(text[emitted:start])
            out.append(REDACTED)
            emitted = end
        out.append(text[emitted:])
        return "".join(out)

    def _runs(self, text: str) -> list[tuple[int, int]]:
        """Merged ``(start, end)`` spans of ``text`` to remove, in order."""
        spans: list[tuple[int, int]] = []
        windows = self._windows
        if windows and len(text) >= WINDOW:
            start = end = -1
            for i in range(len(text) - WINDOW + 1):
                if text[i : i + WINDOW] in windows:
                    if i > end:  # a new run: the previous one ended before this window
                        if end >= 0:
                            spans.append((start, end))
                        start = i
                    end = i + WINDOW
            if end >= 0:
                spans.append((start, end))
        if self._whole is not None:
            spans.extend(m.span() for m in self._whole.finditer(text))
            spans.sort()
        return _merge(spans)

    def scrub_error(self, err: ModelbusError) -> None:
        """Scrub every text field of ``err`` that travels on the wire, and ``str``/``repr``."""
        err.message = self.scrub(err.message)
        if err.code is not None:
            err.code = self.scrub(err.code)
        if err.param is not None:
            err.param = self.scrub(err.param)
        err.args = (err.message,)  # str(), repr() and tracebacks must not keep the old text

    def scrub_traceback(self, exc: BaseException) -> str:
        """``exc``'s formatted traceback (causes included), scrubbed, for a log line."""
        return self.scrub("".join(traceback.format_exception(exc)))


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted spans with overlapping or touching ones joined."""
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged
