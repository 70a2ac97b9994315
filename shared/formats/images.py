"""Image parts: the one parser of ``data:`` URIs every format module shares.

Providers differ in which image *types* and which URL schemes they take (each
format module checks those); they agree on what a base64 ``data:`` URI is
(RFC 2397: ``data:<type>[;param]*;base64,<payload>``).
"""

from __future__ import annotations

from typing import NamedTuple

from shared.errors import InvalidRequest


class DataUri(NamedTuple):
    """A parsed base64 ``data:`` URI."""

    mime: str
    """Media type, lower-cased; empty when the URI names none."""
    data: str
    """The base64 payload, as sent."""


def parse_data_uri(url: str, param: str) -> DataUri | None:
    """The parts of a ``data:`` URI, ``None`` for any other URL; a malformed or
    non-base64 one is a 400 (``invalid_image``) naming ``param``."""
    if not url.startswith("data:"):
        return None
    header, comma, data = url[5:].partition(",")
    mime, _, rest = header.partition(";")
    params = rest.split(";") if rest else []
    if not comma or not data or not params or params[-1].strip().lower() != "base64":
        raise InvalidRequest(
            f"{param}: a data: URI image must be base64-encoded (data:<type>;base64,<data>)",
            param=param,
            code="invalid_image",
        )
    return DataUri(mime.strip().lower(), data)
