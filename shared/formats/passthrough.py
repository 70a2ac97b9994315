"""A client's native request body on its way to an upstream of the same API, changed as little as can be.

When the HTTP gateway's client and the upstream speak the same API (a Messages
request to an ``anthropic`` endpoint, a Chat Completions request to an ``openai``
or ``openai-compatible`` one), the provider worker sends the client's own body,
so fields modelbus does not model (``cache_control``, thinking blocks and their
signatures, ``metadata``, fields the vendor adds next year) arrive as the client
wrote them. The body is split into its top-level members with
:class:`msgspec.Raw` values and joined again: every member's value is the
client's bytes, byte for byte, in the client's order; only the whitespace
between top-level members is not kept. What changes:

- ``model`` is set to the target's upstream model (the client named an alias);
- for an OpenAI stream, ``stream_options.include_usage`` is set to ``true``
  when the client did not ask for it, so that usage is accounted; the worker
  then does not relay the usage chunk the client did not ask for.
"""

from __future__ import annotations

import msgspec

from shared.errors import InvalidRequest

_members = msgspec.json.Decoder(dict[str, msgspec.Raw])
_options = msgspec.json.Decoder(dict[str, msgspec.Raw])
_encode = msgspec.json.Encoder().encode
_TRUE = msgspec.Raw(b"true")


def members(body: bytes) -> dict[str, msgspec.Raw]:
    """The top-level members of a JSON object body; a 400 when it is not one."""
    try:
        return _members.decode(body)
    except msgspec.MsgspecError as exc:
        raise InvalidRequest(f"request body is not a JSON object: {exc}", code="invalid_json") from None


def with_model(body: bytes, model: str) -> bytes:
    """``body`` with its ``model`` member set to ``model`` (added when absent), all else as it came."""
    parts = members(body)
    parts["model"] = msgspec.Raw(_encode(model))
    return _encode(parts)


def with_usage_on_stream(body: bytes, model: str) -> tuple[bytes, bool]:
    """An OpenAI stream request for the upstream: ``model`` set and usage asked for.

    Returns the body and whether the *client* asked for usage itself (so the
    worker knows whether to relay the usage chunk).
    """
    parts = members(body)
    parts["model"] = msgspec.Raw(_encode(model))
    raw_options = parts.get("stream_options")
    options: dict[str, msgspec.Raw] = {}
    if raw_options is not None and bytes(raw_options).strip() != b"null":
        try:
            options = _options.decode(raw_options)
        except msgspec.MsgspecError:
            raise InvalidRequest(
                "stream_options: expected an object", param="stream_options", code="invalid_type"
            ) from None
    asked = bytes(options.get("include_usage", b"false")).strip() == b"true"
    if not asked:
        options["include_usage"] = _TRUE
        parts["stream_options"] = msgspec.Raw(_encode(options))
    return _encode(parts), asked
