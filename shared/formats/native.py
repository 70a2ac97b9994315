"""Request bodies in a client's own API format (``Modelbus-Format``), for routers and provider workers.

The HTTP gateway sends a client's body on NATS as it came, with
``Modelbus-Format`` naming its API (``openai``: Chat Completions, unknown fields
included; ``anthropic``: Messages). Without the header a body is the internal
contract (:mod:`shared.chat`), checked strictly. Two readings of a native body:

- :func:`request_view`: what a router routes on; only the fields routing needs
  are checked, nothing is refused for want of an internal counterpart, because
  the body may go on as it came;
- :func:`request_translated`: the internal request, for an upstream of another
  API; it refuses (400, naming the field) what it cannot carry, under the rules
  of that format's module.
"""

from __future__ import annotations

from shared import headers as H
from shared.chat import ChatCompletionRequest, decode_request
from shared.errors import InvalidRequest
from shared.formats import anthropic, openai
from shared.formats.anthropic.view import request_view as anthropic_view


def check_format(value: str | None) -> str | None:
    """A ``Modelbus-Format`` value, or a 400 naming the header when it is not one modelbus reads."""
    if value is None or value in H.FORMAT_VALUES:
        return value
    raise InvalidRequest(f"{H.FORMAT} must be one of {', '.join(H.FORMAT_VALUES)}, got {value[:40]!r}", param=H.FORMAT)


def check_operation(value: str | None, fmt: str | None) -> str | None:
    """A ``Modelbus-Operation`` value; a 400 naming the header when it is not one modelbus serves,
    or when a ``count_tokens`` body is not Anthropic's."""
    if value is None:
        return None
    if value != H.COUNT_TOKENS:
        raise InvalidRequest(f"{H.OPERATION} must be {H.COUNT_TOKENS}, got {value[:40]!r}", param=H.OPERATION)
    if fmt != "anthropic":
        raise InvalidRequest(
            f"{H.OPERATION}: {H.COUNT_TOKENS} takes an Anthropic count_tokens body ({H.FORMAT}: anthropic)",
            param=H.FORMAT,
        )
    return value


def request_view(fmt: str | None, body: bytes, *, count: bool = False) -> ChatCompletionRequest:
    """The request a router routes on (see the module docstring); ``count``: a ``count_tokens`` body."""
    if fmt is None:
        return decode_request(body)
    if fmt == "anthropic":
        return anthropic_view(body, count=count)
    return openai.request_view(body)


def request_translated(fmt: str | None, body: bytes) -> ChatCompletionRequest:
    """The internal request, for an upstream that does not speak ``fmt``."""
    if fmt == "anthropic":
        return anthropic.request_from_native(body)
    return decode_request(body)
