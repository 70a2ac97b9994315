"""The credential scrubber: every fragment and encoding of a key leaves error text, nothing else does."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest

from services.providers.base import EndpointConnection, call_credential, call_secrets
from services.providers.http import UpstreamClient
from services.providers.registry import ADAPTERS
from services.providers.scrub import REDACTED, CredentialScrubber, credential_parts
from shared.chat import decode_request
from shared.errors import ProviderError, RateLimited
from shared.routing import Endpoint
from tests.unit.services.providers.test_bedrock import event as aws_event
from tests.unit.services.providers.test_bedrock import exception as aws_exception

KEY = "sk-proj-Zt7/qW+e4Rk9LmN2xVb8Hc0=="
OTHER = "ghp_9fK2mQ7xR4tY8uI1oP3aS6dF0gH5jL"


def windows(text: str, size: int = 8) -> set[str]:
    return {text[i : i + size] for i in range(len(text) - size + 1)}


def leaked(key: str, text: str) -> list[str]:
    """8-character windows of ``key`` still in ``text``."""
    return sorted(w for w in windows(key) if w in text)


def scrub(text: str, *credentials: str) -> str:
    return CredentialScrubber(credentials or (KEY,)).scrub(text)


def base64_inside(prefix: bytes, key: str, suffix: bytes = b"", *, urlsafe: bool = False) -> str:
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    return encode(prefix + key.encode() + suffix).decode()


# ---------------------------------------------------------------- fragments of the value


@pytest.mark.parametrize(
    "fragment",
    [KEY[:8], KEY[:14], KEY[-8:], KEY[-12:], KEY[9:17], KEY[5:27], KEY],
    ids=["8-prefix", "prefix", "8-suffix", "suffix", "8-middle", "middle", "whole"],
)
def test_a_quoted_fragment_of_eight_or_more_characters_is_removed(fragment: str) -> None:
    out = scrub(f"Incorrect API key provided: {fragment}. See the docs.")
    assert fragment not in out
    assert out == f"Incorrect API key provided: {REDACTED}. See the docs."


def test_an_openai_style_masked_key_loses_its_prefix_and_keeps_a_short_tail() -> None:
    out = scrub(f"Incorrect API key provided: {KEY[:10]}****************{KEY[-4:]}.")
    assert out == f"Incorrect API key provided: {REDACTED}****************{KEY[-4:]}."


def test_a_fragment_shorter_than_eight_characters_is_not_treated_as_a_quote() -> None:
    text = f"prefix {KEY[:7]} is shared by every project key"
    assert scrub(text) == text


def test_text_that_quotes_no_credential_is_left_exactly_as_it_was() -> None:
    text = (
        "Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): "
        "Limit 30000, Used 29800, Requested 512. Please try again in 1.024s. Visit "
        'https://platform.openai.com/account/rate-limits to learn more. {"code": "rate_limit_exceeded"}'
    )
    assert scrub(text, KEY, OTHER) == text


def test_two_credentials_quoted_side_by_side_and_overlapping_are_both_removed() -> None:
    text = f"sent {KEY[3:20]}{OTHER[:12]} and {OTHER[6:30]} and {KEY[-10:]}"
    out = scrub(text, KEY, OTHER)
    assert not leaked(KEY, out) and not leaked(OTHER, out)
    assert out.startswith("sent ") and " and " in out


def test_a_key_repeated_many_times_in_a_long_text_is_removed_everywhere() -> None:
    text = ("filler " * 50 + KEY[2:20]) * 40
    out = scrub(text)
    assert not leaked(KEY, out)
    assert out.count(REDACTED) == 40


# ---------------------------------------------------------------- encodings


@pytest.mark.parametrize("shift", [0, 1, 2])
@pytest.mark.parametrize("urlsafe", [False, True], ids=["base64", "base64url"])
def test_the_key_base64_encoded_inside_a_longer_value_at_any_alignment_is_removed(shift: int, urlsafe: bool) -> None:
    inner = base64_inside(b"x" * shift, KEY, b"|trailing bytes", urlsafe=urlsafe)
    key_only = inner[4 * ((shift + 2) // 3) : 4 * ((shift + len(KEY)) // 3)]  # groups of key bytes alone
    out = scrub(f"Authorization: Basic {inner} was rejected")
    assert not leaked(key_only, out)
    assert out.startswith("Authorization: Basic ") and out.endswith(" was rejected")


@pytest.mark.parametrize("prefix", [b"", b"a", b"ab", b"api:", b"Bearer "])
def test_a_base64_value_that_ends_with_the_key_loses_its_whole_tail_padding_included(prefix: bytes) -> None:
    encoded = base64_inside(prefix, KEY)
    out = scrub(f"token {encoded} invalid")
    # Only the characters that hold bits of the prefix are left.
    assert out == f"token {encoded[: -(-8 * len(prefix) // 6)]}{REDACTED} invalid"


@pytest.mark.parametrize(
    "encode",
    [
        lambda k: quote(k, safe=""),
        lambda k: quote(k),
        lambda k: quote_plus(k),
        lambda k: re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(k, safe="")),
        lambda k: binascii.hexlify(k.encode()).decode(),
        lambda k: binascii.hexlify(k.encode()).decode().upper(),
        lambda k: json.dumps(k)[1:-1].replace("/", "\\/"),
    ],
    ids=["percent", "percent-keep-slash", "form-encoded", "percent-lower-hex", "hex", "HEX", "json-escaped-slash"],
)
def test_the_key_url_encoded_hex_or_json_escaped_is_removed_whole_and_in_part(encode: Any) -> None:
    encoded = encode(KEY)
    assert encoded != KEY
    for quoted in (encoded, encoded[3:-3]):
        out = scrub(f"?key={quoted}&x=1")
        assert out == f"?key={REDACTED}&x=1", out


def test_a_key_with_quotes_and_non_ascii_is_removed_in_its_json_escaped_form() -> None:
    key = 'pa"ss\\wörd-1234567'
    for escaped in (json.dumps(key)[1:-1], json.dumps(key, ensure_ascii=False)[1:-1]):
        out = scrub(f'{{"api_key": "{escaped}"}}', key)
        assert out == f'{{"api_key": "{REDACTED}"}}', out


# ---------------------------------------------------------------- short and structured credentials


def test_a_credential_shorter_than_eight_characters_is_removed_whole_but_not_in_part() -> None:
    short = "Xy9#k2"
    out = scrub(f"key {short} rejected; {short[:4]} is a prefix; {quote(short, safe='')}", short)
    assert out == f"key {REDACTED} rejected; {short[:4]} is a prefix; {REDACTED}"


def test_a_json_key_pair_is_scrubbed_field_by_field_and_its_field_names_survive() -> None:
    access, secret = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    credential = json.dumps({"access_key_id": access, "secret_access_key": secret, "region": "us"})
    assert credential_parts(credential) == [access, secret]
    out = scrub(f"access_key_id {access[:12]} with secret_access_key {secret[10:30]}; {credential}", credential)
    assert out == f"access_key_id {REDACTED} with secret_access_key {REDACTED}; {REDACTED}"


def test_an_empty_scrubber_changes_nothing() -> None:
    scrubber = CredentialScrubber(["", ""])
    assert not scrubber
    assert scrubber.scrub("anything at all") == "anything at all"
    assert "sk-" not in repr(CredentialScrubber([KEY]))


# ---------------------------------------------------------------- errors and tracebacks


def test_an_error_loses_the_key_from_message_code_param_str_and_repr() -> None:
    err = RateLimited(f"openai returned 429: key {KEY[:16]}", code=f"bad_{KEY[4:14]}", param=KEY[8:24])
    CredentialScrubber([KEY]).scrub_error(err)
    for text in (err.message, err.code or "", err.param or "", str(err), repr(err), err.to_json().decode()):
        assert not leaked(KEY, text), text
    assert err.message.startswith("openai returned 429: key ")


def test_a_logged_traceback_loses_the_key_from_every_exception_in_the_chain() -> None:
    try:
        try:
            raise ValueError(f"upstream said {base64_inside(b'api:', KEY)}")
        except ValueError as inner:
            raise RuntimeError(f"while parsing {KEY[2:22]}") from inner
    except RuntimeError as exc:
        text = CredentialScrubber([KEY]).scrub_traceback(exc)
    assert "ValueError" in text and "RuntimeError" in text
    assert not leaked(KEY, text)
    assert not leaked(base64_inside(b"api:", KEY)[6:], text)


# ---------------------------------------------------------------- every adapter's error shape


def _quote_everything(key: str) -> str:
    return (
        f"Incorrect API key provided: {key[:12]}****, fragment {key[6:22]}, "
        f"basic {base64_inside(b'api:', key)}, query ?key={quote(key, safe='')}"
    )


def _error_response(provider: str, keys: list[str]) -> httpx.Response:
    message = "; ".join(_quote_everything(key) for key in keys)
    if provider == "anthropic":
        return httpx.Response(429, json={"type": "error", "error": {"type": "rate_limit_error", "message": message}})
    if provider == "gemini":
        return httpx.Response(429, json={"error": {"code": 429, "message": message, "status": "RESOURCE_EXHAUSTED"}})
    if provider == "bedrock":
        return httpx.Response(429, json={"message": message}, headers={"x-amzn-errortype": "ThrottlingException"})
    if provider == "ollama":
        return httpx.Response(429, json={"error": message})
    return httpx.Response(429, json={"error": {"message": message, "type": "requests", "code": "rate_limit_exceeded"}})


_OPTIONS: dict[str, dict[str, Any]] = {
    "bedrock": {"region": "us-east-1"},
    "azure-openai": {"api_version": "2024-10-21"},
}
_BASE_URLS = {"azure-openai": "https://example.openai.azure.com", "openai-compatible": "https://llm.example.com/v1"}
AWS_ACCESS, AWS_SECRET = "AKIAQUOTEDEXAMPLE123", "aBcD/eFgH+iJkLmNoPqRsTuVwXyZ0123456789ab"


@pytest.mark.parametrize("byo", [False, True], ids=["endpoint-secret", "byo"])
@pytest.mark.parametrize("provider", sorted(set(ADAPTERS) - {"mock"}))
def test_every_adapters_upstream_error_is_scrubbed_of_every_credential_the_call_sent(provider: str, byo: bool) -> None:
    if provider == "bedrock":
        credential = json.dumps({"access_key_id": AWS_ACCESS, "secret_access_key": AWS_SECRET})
        quoted = [AWS_ACCESS, AWS_SECRET]  # AWS quotes the key id; this upstream the secret too
    else:
        credential, quoted = KEY, [KEY]

    def upstream(request: httpx.Request) -> httpx.Response:
        return _error_response(provider, quoted)

    async def get_credential(ref: str, endpoint: str) -> str:
        return credential

    endpoint = Endpoint(
        name=f"{provider}-scrub",
        provider=provider,
        base_url=_BASE_URLS.get(provider),
        auth_ref=None if byo else "env:KEY",
        options=_OPTIONS.get(provider, {}),
    )
    connection = EndpointConnection(endpoint, get_credential)
    connection._http = UpstreamClient(timeout_s=5, transport=httpx.MockTransport(upstream))
    adapter = ADAPTERS[provider](connection)
    used: set[str] = set()

    async def call() -> ProviderError:
        call_secrets.set(used)
        if byo:
            call_credential.set(credential)
        request = decode_request(json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode())
        with pytest.raises(ProviderError) as caught:
            await adapter.complete(request, "some-model", timeout_s=5)
        return caught.value

    err = asyncio.run(call())
    assert "Incorrect API key provided" in err.message  # the upstream's text did reach the error
    CredentialScrubber(used | connection.secrets_used).scrub_error(err)
    for key in quoted:
        assert not leaked(key, err.to_json().decode()), (provider, err.message)
        assert not leaked(quote(key, safe=""), err.message)
        assert not leaked(base64_inside(b"api:", key)[8:], err.message)
    if byo:
        assert not connection.secrets_used, "a BYO credential must not stay on the shared connection"


def _stream_body(provider: str, message: str) -> tuple[bytes, str]:
    """One content piece, then an error event quoting ``message``, in the provider's stream format."""

    def sse(data: dict[str, Any], name: str | None = None) -> bytes:
        return (f"event: {name}\n" if name else "").encode() + f"data: {json.dumps(data)}\n\n".encode()

    if provider == "anthropic":
        start: dict[str, Any] = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": []}
        start["usage"] = {"input_tokens": 1, "output_tokens": 0}
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "partial"}}
        error = {"type": "error", "error": {"type": "overloaded_error", "message": message}}
        body = sse({"type": "message_start", "message": start}, "message_start") + sse(block, "content_block_start")
        return body + sse(delta, "content_block_delta") + sse(error, "error"), "text/event-stream"
    if provider == "gemini":
        piece: dict[str, Any] = {"candidates": [{"content": {"role": "model", "parts": [{"text": "partial"}]}}]}
        error = {"error": {"code": 503, "message": message, "status": "UNAVAILABLE"}}
        return sse(piece) + sse(error), "text/event-stream"
    if provider == "bedrock":
        frames = [
            aws_event("messageStart", {"role": "assistant"}),
            aws_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "partial"}}),
            aws_exception("throttlingException", message),
        ]
        return b"".join(frames), "application/vnd.amazon.eventstream"
    if provider == "ollama":
        ndjson: dict[str, Any] = {"model": "m", "message": {"role": "assistant", "content": "partial"}, "done": False}
        return (json.dumps(ndjson) + "\n" + json.dumps({"error": message}) + "\n").encode(), "application/x-ndjson"
    choice: dict[str, Any] = {"index": 0, "delta": {"role": "assistant", "content": "partial"}, "finish_reason": None}
    chunk: dict[str, Any] = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [choice],
    }
    return sse(chunk) + sse({"error": {"message": message, "type": "server_error"}}), "text/event-stream"


@pytest.mark.parametrize("provider", ["openai", "azure-openai", "anthropic", "gemini", "bedrock", "ollama"])
def test_an_error_event_mid_stream_in_every_stream_format_is_scrubbed(provider: str) -> None:
    credential = json.dumps({"access_key_id": AWS_ACCESS, "secret_access_key": AWS_SECRET})
    quoted = [AWS_ACCESS, AWS_SECRET] if provider == "bedrock" else [KEY]
    body, content_type = _stream_body(provider, "; ".join(_quote_everything(k) for k in quoted))

    async def get_credential(ref: str, endpoint: str) -> str:
        return credential if provider == "bedrock" else KEY

    endpoint = Endpoint(
        name=f"{provider}-stream",
        provider=provider,
        base_url=_BASE_URLS.get(provider),
        auth_ref="env:KEY",
        options=_OPTIONS.get(provider, {}),
    )
    connection = EndpointConnection(endpoint, get_credential)
    answer = httpx.Response(200, content=body, headers={"content-type": content_type})
    connection._http = UpstreamClient(timeout_s=5, transport=httpx.MockTransport(lambda _: answer))
    adapter = ADAPTERS[provider](connection)
    used: set[str] = set()

    async def call() -> tuple[int, ProviderError]:
        call_secrets.set(used)
        request = decode_request(json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True}).encode())
        chunks = 0
        try:
            async for _ in adapter.stream(request, "some-model", timeout_s=5):
                chunks += 1
        except ProviderError as err:
            return chunks, err
        raise AssertionError("the stream ended without the error")

    chunks, err = asyncio.run(call())
    assert chunks >= 1 and "Incorrect API key provided" in err.message  # an error after content, quoting keys
    CredentialScrubber(used | connection.secrets_used).scrub_error(err)
    for key in quoted:
        assert not leaked(key, err.to_json().decode()), (provider, err.message)
        assert not leaked(base64_inside(b"api:", key)[8:], err.message)


def test_an_endpoints_scrubber_is_reused_until_a_new_key_value_is_sent_and_never_for_a_byo_call() -> None:
    async def get_credential(ref: str, endpoint: str) -> str:
        return KEY

    connection = EndpointConnection(Endpoint(name="e", provider="openai", auth_ref="env:K"), get_credential)

    async def call(byo: str | None) -> set[str]:
        used: set[str] = set()
        call_secrets.set(used)
        call_credential.set(byo)
        await connection.credential()
        return used

    first = connection.scrubber(asyncio.run(call(None)))
    assert connection.scrubber(asyncio.run(call(None))) is first  # built once per set of endpoint keys
    byo = connection.scrubber(asyncio.run(call(OTHER)))
    assert byo is not first and not leaked(OTHER, byo.scrub(f"got {OTHER}"))
    assert connection.scrubber(set()) is first  # the BYO key left no trace on the connection
    connection.sent("rotated-key-value-123")
    rotated = connection.scrubber(set())
    assert rotated is not first and rotated.scrub("rotated-key-value-123") == REDACTED
