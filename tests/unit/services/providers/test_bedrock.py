"""The Bedrock adapter: request, response, stream and error mapping on recorded native payloads.

The payloads follow AWS's published Converse / ConverseStream references and examples
(https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html,
https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStream.html,
https://docs.aws.amazon.com/bedrock/latest/userguide/tool-use-inference-call.html); stream frames
are built here with the event-stream encoding (prelude, typed headers, payload, CRC32s). HTTP goes
through ``httpx.MockTransport``, so each test sees exactly what the adapter sent, signature included.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import struct
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from services.providers import bedrock_connection
from services.providers.base import EndpointConnection, call_credential, call_secrets
from services.providers.bedrock import BedrockAdapter
from services.providers.http import UpstreamClient
from shared.chat import ChatCompletion, ChatCompletionChunk, decode_request
from shared.errors import (
    AuthFailed,
    BadUpstreamRequest,
    BadUpstreamResponse,
    ConfigError,
    InvalidRequest,
    ProviderError,
    RateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from shared.routing import Endpoint

MODEL = "anthropic.claude-sonnet-4-20250514-v1:0"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLETOKEN"
CREDENTIAL = json.dumps({"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY, "session_token": SESSION_TOKEN})
HELLO = [{"role": "user", "content": "Hello"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "top_song",
        "description": "Get the most popular song played on a radio station.",
        "parameters": {
            "type": "object",
            "properties": {"sign": {"type": "string", "description": "The call sign, e.g. WZPZ."}},
            "required": ["sign"],
        },
    },
}

# From the Converse reference's response syntax and the tool-use guide.
TEXT_RESPONSE = {
    "output": {"message": {"role": "assistant", "content": [{"text": "Hello! How can I help you today?"}]}},
    "stopReason": "end_turn",
    "usage": {"inputTokens": 30, "outputTokens": 12, "totalTokens": 42},
    "metrics": {"latencyMs": 1275},
}
TOOL_RESPONSE = {
    "output": {
        "message": {
            "role": "assistant",
            "content": [
                {"text": "I'll look up the top song on WZPZ."},
                {
                    "toolUse": {
                        "toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q",
                        "name": "top_song",
                        "input": {"sign": "WZPZ"},
                    }
                },
            ],
        }
    },
    "stopReason": "tool_use",
    "usage": {"inputTokens": 375, "outputTokens": 62, "totalTokens": 437},
    "metrics": {"latencyMs": 1386},
}
CACHED_RESPONSE = {
    **TEXT_RESPONSE,
    "usage": {
        "inputTokens": 10,
        "outputTokens": 5,
        "totalTokens": 1035,
        "cacheReadInputTokens": 1000,
        "cacheWriteInputTokens": 20,
    },
}

# ---------------------------------------------------------------- event-stream frames


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return struct.pack(">B", len(raw_name)) + raw_name + b"\x07" + struct.pack(">H", len(raw_value)) + raw_value


def frame(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (lengths + CRC), headers, payload, message CRC."""
    raw_headers = b"".join(_header(k, v) for k, v in headers.items())
    total = 12 + len(raw_headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(raw_headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + raw_headers + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(event_type: str, body: dict[str, Any]) -> bytes:
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return frame(headers, json.dumps(body).encode())


def exception(exception_type: str, message: str) -> bytes:
    headers = {":exception-type": exception_type, ":content-type": "application/json", ":message-type": "exception"}
    return frame(headers, json.dumps({"message": message}).encode())


# A ConverseStream answer: text, then a tool call whose input arrives in two fragments.
# Real frames carry a "p" padding field; the adapter must ignore it.
TOOL_STREAM = [
    event("messageStart", {"role": "assistant", "p": "abcdef"}),
    event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Let me "}, "p": "abcd"}),
    event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "check."}}),
    event("contentBlockStop", {"contentBlockIndex": 0}),
    event(
        "contentBlockStart",
        {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_Yl8bD8vYQ", "name": "top_song"}}},
    ),
    event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"sign": "W'}}}),
    event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": 'ZPZ"}'}}}),
    event("contentBlockStop", {"contentBlockIndex": 1}),
    event("messageStop", {"stopReason": "tool_use"}),
    event(
        "metadata",
        {
            "usage": {"inputTokens": 375, "outputTokens": 62, "totalTokens": 1437, "cacheReadInputTokens": 1000},
            "metrics": {"latencyMs": 1386},
        },
    ),
]

# ---------------------------------------------------------------- SigV4 check


def signature_is_valid(method: str, url: str, headers: Mapping[str, str], body: bytes, secret_key: str) -> bool:
    """Recompute the SigV4 signature of a received request with botocore, as AWS would."""
    found = re.fullmatch(
        r"AWS4-HMAC-SHA256 Credential=([^/]+)/\d{8}/([^/]+)/([^/]+)/aws4_request, "
        r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})",
        headers["authorization"],
    )
    if found is None:
        return False
    access_key, region, service, signed, signature = found.groups()
    received = AWSRequest(method=method, url=url, data=body, headers={n: headers[n] for n in signed.split(";")})
    received.context["timestamp"] = headers["x-amz-date"]
    signer = SigV4Auth(Credentials(access_key, secret_key), service, region)
    expected = signer.signature(signer.string_to_sign(received, signer.canonical_request(received)), received)
    return hmac.compare_digest(str(expected), signature)


# ---------------------------------------------------------------- harness

Handler = Callable[[httpx.Request], httpx.Response]


def make_adapter(
    handler: Handler,
    *,
    options: dict[str, Any] | None = None,
    base_url: str | None = None,
    auth_ref: str | None = "env:BEDROCK",
    credential: str = CREDENTIAL,
) -> BedrockAdapter:
    async def get_credential(ref: str, name: str) -> str:
        return credential

    endpoint = Endpoint(
        name="bedrock-test",
        provider="bedrock",
        base_url=base_url,
        auth_ref=auth_ref,
        options={"region": "us-east-1"} if options is None else options,
    )
    connection = EndpointConnection(endpoint, get_credential)
    connection._http = UpstreamClient(timeout_s=30, transport=httpx.MockTransport(handler))
    return BedrockAdapter(connection)


def request_of(**fields: Any) -> Any:
    return decode_request(json.dumps({"messages": HELLO, **fields}).encode())


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


class Recorder:
    """Answers every request the same way and keeps what was sent."""

    def __init__(self, response: Callable[[], httpx.Response]) -> None:
        self.response = response
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.response()

    @property
    def body(self) -> dict[str, Any]:
        return dict(json.loads(self.requests[-1].content))


def complete(adapter: BedrockAdapter, request: Any, model: str = MODEL) -> ChatCompletion:
    return asyncio.run(adapter.complete(request, model, timeout_s=5))


def stream(adapter: BedrockAdapter, request: Any, model: str = MODEL) -> list[ChatCompletionChunk]:
    async def collect() -> list[ChatCompletionChunk]:
        return [chunk async for chunk in adapter.stream(request, model, timeout_s=5)]

    return asyncio.run(collect())


def sent(request: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    recorder = Recorder(lambda: json_response(TEXT_RESPONSE))
    complete(make_adapter(recorder, **kwargs), request_of(**request))
    return recorder.body


def stream_of(*frames: bytes, split: int | None = None) -> Callable[[], httpx.Response]:
    data = b"".join(frames)
    pieces = [data] if split is None else [data[i : i + split] for i in range(0, len(data), split)]
    return lambda: httpx.Response(
        200,
        stream=httpx.ByteStream(b"") if not data else _Pieces(pieces),
        headers={"content-type": "application/vnd.amazon.eventstream", "x-amzn-requestid": "req-1"},
    )


class _Pieces(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def __aiter__(self) -> Any:
        for piece in self.pieces:
            yield piece


# ---------------------------------------------------------------- request mapping


def test_conversation_maps_to_converse_messages_system_blocks_and_tool_blocks() -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    body = sent(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is on WZPZ and in this picture?"},
                        {"type": "image_url", "image_url": {"url": image, "detail": "high"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "tooluse_1",
                            "type": "function",
                            "function": {"name": "top_song", "arguments": '{"sign": "WZPZ"}'},
                        },
                        {
                            "id": "tooluse_2",
                            "type": "function",
                            "function": {"name": "top_song", "arguments": '{"sign": "WKRP"}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "tooluse_1", "content": "Elemental Hotel"},
                {"role": "tool", "tool_call_id": "tooluse_2", "content": [{"type": "text", "text": "Shake It Off"}]},
                {"role": "user", "content": "Thanks"},
            ],
            "tools": [WEATHER_TOOL],
        }
    )
    assert body["system"] == [{"text": "Be brief."}, {"text": "Answer in English."}]
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"text": "What is on WZPZ and in this picture?"},
                {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"toolUse": {"toolUseId": "tooluse_1", "name": "top_song", "input": {"sign": "WZPZ"}}},
                {"toolUse": {"toolUseId": "tooluse_2", "name": "top_song", "input": {"sign": "WKRP"}}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "Elemental Hotel"}]}},
                {"toolResult": {"toolUseId": "tooluse_2", "content": [{"text": "Shake It Off"}]}},
                {"text": "Thanks"},
            ],
        },
    ]
    assert body["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "top_song",
                    "description": "Get the most popular song played on a radio station.",
                    "inputSchema": {"json": WEATHER_TOOL["function"]["parameters"]},  # type: ignore[index]
                }
            }
        ]
    }


def test_sampling_parameters_go_to_inference_config_and_metadata_to_request_metadata() -> None:
    body = sent(
        {
            "temperature": 0.2,
            "top_p": 0.9,
            "max_completion_tokens": 300,
            "stop": "END",
            "metadata": {"team": "search"},
            "seed": 7,
            "user": "u-1",
            "parallel_tool_calls": False,
        }
    )
    assert body["inferenceConfig"] == {"maxTokens": 300, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]}
    assert body["requestMetadata"] == {"team": "search"}
    assert set(body) == {"messages", "inferenceConfig", "requestMetadata"}  # seed, user, ... dropped


def test_output_cap_defaults_to_1024_or_the_endpoint_max_tokens_option() -> None:
    assert sent({})["inferenceConfig"] == {"maxTokens": 1024}
    assert sent({}, options={"region": "us-east-1", "max_tokens": "2048"})["inferenceConfig"] == {"maxTokens": 2048}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"auto": {}}),
        ("required", {"any": {}}),
        ({"type": "function", "function": {"name": "top_song"}}, {"tool": {"name": "top_song"}}),
    ],
)
def test_tool_choice_maps_to_converse_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    assert sent({"tools": [WEATHER_TOOL], "tool_choice": choice})["toolConfig"]["toolChoice"] == expected


def test_tool_choice_none_offers_no_tools() -> None:
    assert "toolConfig" not in sent({"tools": [WEATHER_TOOL], "tool_choice": "none"})


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("response_format", {"type": "json_object"}, "response_format"),
        ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}, "response_format"),
        ("logprobs", True, "logprobs"),
        ("logit_bias", {"50256": -100}, "logit_bias"),
        ("presence_penalty", 0.5, "presence_penalty"),
        ("frequency_penalty", 0.5, "frequency_penalty"),
        ("reasoning_effort", "high", "reasoning_effort"),
    ],
)
def test_parameters_converse_cannot_honour_are_rejected_naming_the_parameter(
    field: str, value: Any, param: str
) -> None:
    recorder = Recorder(lambda: json_response(TEXT_RESPONSE))
    with pytest.raises(InvalidRequest) as caught:
        complete(make_adapter(recorder), request_of(**{field: value}))
    assert caught.value.param == param
    assert caught.value.http_status == 400
    assert recorder.requests == []


def test_plain_text_response_format_and_zero_penalties_are_accepted() -> None:
    body = sent({"response_format": {"type": "text"}, "presence_penalty": 0, "frequency_penalty": 0})
    assert "responseFormat" not in body


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("https://example.com/cat.png", "unsupported_image_url"),
        ("data:image/bmp;base64,Qk0=", "invalid_image"),
        ("data:image/png,rawbytes", "invalid_image"),
    ],
)
def test_images_bedrock_cannot_take_are_a_400_naming_the_field(url: str, code: str) -> None:
    content = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(InvalidRequest) as caught:
        sent({"messages": [{"role": "user", "content": content}]})
    assert caught.value.param == "messages[0].content[1].image_url.url"
    assert caught.value.code == code


def test_tool_call_arguments_that_are_not_a_json_object_are_a_400() -> None:
    messages = [
        *HELLO,
        {
            "role": "assistant",
            "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "[1]"}}],
        },
    ]
    with pytest.raises(InvalidRequest) as caught:
        sent({"messages": messages})
    assert caught.value.param == "messages[1].tool_calls[0].function.arguments"


@pytest.mark.parametrize(
    ("model", "path"),
    [
        (MODEL, "/model/anthropic.claude-sonnet-4-20250514-v1%3A0/converse"),
        (
            "us.anthropic.claude-3-5-haiku-20241022-v1:0",
            "/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse",
        ),
        (
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-2-1b-instruct-v1:0",
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.meta.llama3-2-1b-instruct-v1%3A0/converse",
        ),
    ],
)
def test_model_ids_are_one_escaped_path_segment_and_the_signature_covers_that_exact_url(model: str, path: str) -> None:
    recorder = Recorder(lambda: json_response(TEXT_RESPONSE))
    complete(make_adapter(recorder), request_of(), model=model)
    sent_request = recorder.requests[0]
    assert sent_request.url.host == "bedrock-runtime.us-east-1.amazonaws.com"
    assert sent_request.url.raw_path.decode() == path
    headers = sent_request.headers
    assert headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
    assert "/us-east-1/bedrock/aws4_request" in headers["authorization"]
    assert headers["x-amz-security-token"] == SESSION_TOKEN
    assert signature_is_valid("POST", str(sent_request.url), headers, sent_request.content, SECRET_KEY)
    assert not signature_is_valid("POST", str(sent_request.url), headers, sent_request.content, "wrong-secret")


def test_a_custom_base_url_is_used_as_is_and_signed_for_the_region_option() -> None:
    recorder = Recorder(lambda: json_response(TEXT_RESPONSE))
    adapter = make_adapter(recorder, base_url="http://127.0.0.1:8999/", options={"region": "eu-west-3"})
    complete(adapter, request_of())
    sent_request = recorder.requests[0]
    assert str(sent_request.url) == "http://127.0.0.1:8999/model/anthropic.claude-sonnet-4-20250514-v1%3A0/converse"
    assert "/eu-west-3/bedrock/aws4_request" in sent_request.headers["authorization"]
    assert signature_is_valid("POST", str(sent_request.url), sent_request.headers, sent_request.content, SECRET_KEY)


def test_the_region_is_read_from_a_bedrock_runtime_base_url() -> None:
    adapter = make_adapter(
        Recorder(lambda: json_response({})), base_url="https://bedrock-runtime.ap-south-1.amazonaws.com", options={}
    )
    assert adapter.region == "ap-south-1"


@pytest.mark.parametrize(
    ("options", "base_url", "reason"),
    [
        ({}, None, "options.region or a base_url"),
        ({}, "http://127.0.0.1:1", "options.region is required"),
        ({"region": "us-east-1/evil"}, None, "not an AWS region"),
        ({"region": "us-east-1", "max_tokens": "lots"}, None, "options.max_tokens"),
    ],
)
def test_endpoint_misconfiguration_is_reported_by_option(
    options: dict[str, Any], base_url: str | None, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        make_adapter(Recorder(lambda: json_response({})), options=options, base_url=base_url)
    assert reason in caught.value.message
    assert caught.value.http_status == 400
    assert caught.value.retryable is False


# ---------------------------------------------------------------- credentials


def test_a_credential_that_is_not_the_json_key_pair_is_an_auth_failure_without_the_value() -> None:
    recorder = Recorder(lambda: json_response(TEXT_RESPONSE))
    with pytest.raises(AuthFailed) as caught:
        complete(make_adapter(recorder, credential="AKIA-plain-secret-value"), request_of())
    assert "AKIA-plain-secret-value" not in caught.value.message
    assert recorder.requests == []


def test_a_byo_call_credential_signs_the_call_and_is_scrubbed_for_that_call_only() -> None:
    recorder = Recorder(lambda: json_response(TEXT_RESPONSE))
    adapter = make_adapter(recorder)
    byo = json.dumps({"access_key_id": "AKIABYOEXAMPLE", "secret_access_key": "byo-secret"})
    used: set[str] = set()

    async def call() -> None:
        call_credential.set(byo)
        call_secrets.set(used)
        await adapter.complete(request_of(), MODEL, timeout_s=5)

    asyncio.run(call())
    headers = recorder.requests[0].headers
    assert "Credential=AKIABYOEXAMPLE/" in headers["authorization"]
    assert "x-amz-security-token" not in headers
    assert {"AKIABYOEXAMPLE", "byo-secret"} <= used
    # Not kept on the connection every tenant's calls share: it would outlive the call.
    assert not {"AKIABYOEXAMPLE", "byo-secret", byo} & adapter.connection.secrets_used


def test_every_part_of_the_endpoint_key_pair_is_recorded_for_scrubbing() -> None:
    adapter = make_adapter(Recorder(lambda: json_response(TEXT_RESPONSE)))
    used: set[str] = set()

    async def call() -> None:
        call_secrets.set(used)
        await adapter.complete(request_of(), MODEL, timeout_s=5)

    asyncio.run(call())
    assert {ACCESS_KEY, SECRET_KEY, SESSION_TOKEN} <= used
    assert {ACCESS_KEY, SECRET_KEY, SESSION_TOKEN} <= adapter.connection.secrets_used


def test_without_auth_the_default_aws_chain_is_resolved_once_off_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACHAINEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "chain-secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    real = bedrock_connection._resolve_chain
    calls: list[str | None] = []

    def counted(profile: str | None) -> Any:
        calls.append(profile)
        return real(None)

    monkeypatch.setattr(bedrock_connection, "_resolve_chain", counted)
    recorder = Recorder(lambda: json_response(TEXT_RESPONSE))
    adapter = make_adapter(recorder, auth_ref=None, options={"region": "us-west-2", "profile": "team"})

    async def twice() -> None:
        await adapter.complete(request_of(), MODEL, timeout_s=5)
        await adapter.complete(request_of(), MODEL, timeout_s=5)

    asyncio.run(twice())
    assert calls == ["team"]
    for sent_request in recorder.requests:
        assert "Credential=AKIACHAINEXAMPLE/" in sent_request.headers["authorization"]
        assert signature_is_valid(
            "POST", str(sent_request.url), sent_request.headers, sent_request.content, "chain-secret"
        )


def test_an_empty_default_chain_is_a_non_retryable_auth_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bedrock_connection, "_resolve_chain", lambda profile: None)
    with pytest.raises(AuthFailed) as caught:
        complete(make_adapter(Recorder(lambda: json_response(TEXT_RESPONSE)), auth_ref=None), request_of())
    assert caught.value.retryable is False


# ---------------------------------------------------------------- response mapping


def test_text_answer_maps_to_a_chat_completion_with_usage() -> None:
    recorder = Recorder(lambda: json_response(TEXT_RESPONSE, headers={"x-amzn-requestid": "abc-123"}))
    completion = complete(make_adapter(recorder), request_of())
    assert completion.id == "chatcmpl-abc-123"
    assert completion.model == MODEL
    choice = completion.choices[0]
    assert choice.message.content == "Hello! How can I help you today?"
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        30,
        12,
        42,
    )
    assert completion.usage.prompt_tokens_details is None


def test_tool_use_maps_to_openai_tool_calls_with_json_string_arguments() -> None:
    completion = complete(
        make_adapter(Recorder(lambda: json_response(TOOL_RESPONSE))), request_of(tools=[WEATHER_TOOL])
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "I'll look up the top song on WZPZ."
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.id == "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q"
    assert call.function.name == "top_song"
    assert json.loads(call.function.arguments) == {"sign": "WZPZ"}


def test_cache_read_and_write_tokens_count_as_prompt_tokens_and_reads_as_cached() -> None:
    completion = complete(make_adapter(Recorder(lambda: json_response(CACHED_RESPONSE))), request_of())
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 1030
    assert completion.usage.total_tokens == 1035
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 1000


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
    ],
)
def test_stop_reasons_map_to_openai_finish_reasons(stop_reason: str, finish: str) -> None:
    body = {**TEXT_RESPONSE, "stopReason": stop_reason}
    completion = complete(make_adapter(Recorder(lambda: json_response(body))), request_of())
    assert completion.choices[0].finish_reason == finish


def test_a_200_carrying_an_aws_error_is_a_502_with_its_message() -> None:
    body = {"__type": "com.amazon.coral.service#UnknownOperationException", "message": "no such operation"}
    with pytest.raises(BadUpstreamResponse) as caught:
        complete(make_adapter(Recorder(lambda: json_response(body))), request_of())
    assert caught.value.http_status == 502
    assert "UnknownOperationException no such operation" in caught.value.message


@pytest.mark.parametrize("body", [b"<html>gateway</html>", b'{"output": {}}', b'{"stopReason": "end_turn"}'])
def test_a_malformed_answer_is_a_502_naming_the_reason(body: bytes) -> None:
    with pytest.raises(BadUpstreamResponse) as caught:
        complete(make_adapter(Recorder(lambda: httpx.Response(200, content=body))), request_of())
    assert "malformed Converse response" in caught.value.message


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "error_type", "expected", "retryable", "final_status"),
    [
        (429, "ThrottlingException", RateLimited, True, 429),
        (400, "ValidationException", BadUpstreamRequest, False, 400),
        (403, "AccessDeniedException", AuthFailed, False, 403),
        (403, "UnrecognizedClientException", AuthFailed, False, 403),
        (404, "ResourceNotFoundException", BadUpstreamRequest, False, 404),
        (408, "ModelTimeoutException", UpstreamTimeout, True, 504),
        (424, "ModelErrorException", UpstreamUnavailable, True, 502),
        (500, "InternalServerException", UpstreamUnavailable, True, 500),
        (503, "ServiceUnavailableException", UpstreamUnavailable, True, 503),
    ],
)
def test_aws_errors_map_by_status_with_the_aws_type_and_message(
    status: int, error_type: str, expected: type[ProviderError], retryable: bool, final_status: int
) -> None:
    headers = {"x-amzn-ErrorType": f"{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/"}
    recorder = Recorder(lambda: json_response({"message": "details from AWS"}, status, headers))
    with pytest.raises(ProviderError) as caught:
        complete(make_adapter(recorder), request_of())
    err = caught.value
    assert type(err) is expected
    assert err.retryable is retryable
    assert err.http_status == final_status
    assert err.message == f"bedrock returned {status} {error_type}: details from AWS"


def test_an_error_type_in_the_body_is_used_when_the_header_is_missing() -> None:
    body = {"message": "Too many requests, please wait before trying again.", "__type": "ThrottlingException"}
    recorder = Recorder(lambda: json_response(body, 429, {"retry-after": "3"}))
    with pytest.raises(RateLimited) as caught:
        complete(make_adapter(recorder), request_of())
    assert caught.value.retry_after == 3.0
    assert "ThrottlingException: Too many requests" in caught.value.message


def test_timeouts_and_refused_connections_are_retryable_transport_errors() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(UpstreamTimeout):
        complete(make_adapter(timeout), request_of())
    with pytest.raises(UpstreamUnavailable) as caught:
        stream(make_adapter(refused), request_of(stream=True))
    assert caught.value.retryable is True


# ---------------------------------------------------------------- streaming


def _text(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)


@pytest.mark.parametrize("split", [None, 1, 7])
def test_binary_event_stream_maps_text_tool_call_deltas_finish_and_usage(split: int | None) -> None:
    recorder = Recorder(stream_of(*TOOL_STREAM, split=split))
    chunks = stream(make_adapter(recorder), request_of(stream=True, tools=[WEATHER_TOOL]))
    assert recorder.requests[0].url.path.endswith("/converse-stream")
    assert recorder.requests[0].headers["accept"] == "application/vnd.amazon.eventstream"
    assert {chunk.id for chunk in chunks} == {"chatcmpl-req-1"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert _text(chunks) == "Let me check."
    calls = [call for chunk in chunks for c in chunk.choices for call in c.delta.tool_calls or []]
    assert calls[0].index == 0 and calls[0].id == "tooluse_Yl8bD8vYQ" and calls[0].type == "function"
    assert calls[0].function is not None and calls[0].function.name == "top_song"
    assert all(call.index == 0 and call.id is None for call in calls[1:])
    assert json.loads("".join(call.function.arguments or "" for call in calls if call.function)) == {"sign": "WZPZ"}
    finishes = [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]
    assert finishes == ["tool_calls"]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert (usage_chunk.usage.prompt_tokens, usage_chunk.usage.completion_tokens) == (1375, 62)
    assert usage_chunk.usage.prompt_tokens_details is not None
    assert usage_chunk.usage.prompt_tokens_details.cached_tokens == 1000


def test_stream_and_completion_share_one_mapping() -> None:
    frames = [
        event("messageStart", {"role": "assistant"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hello! How can I help you today?"}}),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("messageStop", {"stopReason": "end_turn"}),
        event("metadata", {"usage": {"inputTokens": 30, "outputTokens": 12, "totalTokens": 42}, "metrics": {}}),
    ]
    chunks = stream(make_adapter(Recorder(stream_of(*frames))), request_of(stream=True))
    completion = complete(make_adapter(Recorder(lambda: json_response(TEXT_RESPONSE))), request_of())
    assert _text(chunks) == completion.choices[0].message.content
    assert chunks[-1].usage == completion.usage


@pytest.mark.parametrize(
    ("exception_type", "expected", "status"),
    [
        ("throttlingException", RateLimited, 429),
        ("modelStreamErrorException", UpstreamUnavailable, 502),
        ("internalServerException", UpstreamUnavailable, 500),
        ("serviceUnavailableException", UpstreamUnavailable, 503),
        ("validationException", BadUpstreamRequest, 400),
    ],
)
def test_an_exception_event_mid_stream_raises_the_mapped_error_after_earlier_chunks(
    exception_type: str, expected: type[ProviderError], status: int
) -> None:
    frames = [
        event("messageStart", {"role": "assistant"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hel"}}),
        exception(exception_type, "stream broke"),
    ]
    got: list[ChatCompletionChunk] = []

    async def collect() -> None:
        async for chunk in make_adapter(Recorder(stream_of(*frames))).stream(
            request_of(stream=True), MODEL, timeout_s=5
        ):
            got.append(chunk)

    with pytest.raises(ProviderError) as caught:
        asyncio.run(collect())
    assert type(caught.value) is expected
    assert caught.value.http_status == status
    assert f"{exception_type}: stream broke" in caught.value.message
    assert _text(got) == "Hel"


def test_a_corrupted_frame_is_a_502() -> None:
    broken = bytearray(event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "x"}}))
    broken[-6] ^= 0xFF  # payload byte: the message CRC no longer matches
    with pytest.raises(BadUpstreamResponse) as caught:
        stream(make_adapter(Recorder(stream_of(TOOL_STREAM[0], bytes(broken)))), request_of(stream=True))
    assert "broken stream" in caught.value.message


@pytest.mark.parametrize(
    "frames",
    [
        TOOL_STREAM[:4],  # no messageStop
        [*TOOL_STREAM[:3], TOOL_STREAM[3][:10]],  # cut inside a frame
        [],  # empty body
    ],
)
def test_a_stream_that_ends_early_is_a_502(frames: list[bytes]) -> None:
    with pytest.raises(BadUpstreamResponse):
        stream(make_adapter(Recorder(stream_of(*frames))), request_of(stream=True))


def test_an_http_error_before_the_stream_maps_like_a_completion_error() -> None:
    recorder = Recorder(
        lambda: json_response({"message": "Too many tokens"}, 429, {"x-amzn-ErrorType": "ThrottlingException"})
    )
    with pytest.raises(RateLimited):
        stream(make_adapter(recorder), request_of(stream=True))


def test_line_framed_events_as_llm_katan_sends_them_are_understood() -> None:
    lines = [
        {"messageStart": {"role": "assistant"}},
        {"contentBlockStart": {"start": {"text": {}}, "contentBlockIndex": 0}},
        {"contentBlockDelta": {"delta": {"text": "hell"}, "contentBlockIndex": 0}},
        {"contentBlockDelta": {"delta": {"text": "o"}, "contentBlockIndex": 0}},
        {"contentBlockStop": {"contentBlockIndex": 0}},
        {"messageStop": {"stopReason": "end_turn"}},
        {"metadata": {"usage": {"inputTokens": 3, "outputTokens": 2, "totalTokens": 5}, "metrics": {"latencyMs": 1}}},
    ]
    data = "".join(f"data: {json.dumps(line)}\n\n" for line in lines).encode()
    chunks = stream(make_adapter(Recorder(stream_of(data, split=5))), request_of(stream=True))
    assert _text(chunks) == "hello"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 5


def test_a_whole_json_answer_to_a_stream_request_is_replayed_as_chunks() -> None:
    recorder = Recorder(lambda: json_response(TOOL_RESPONSE))
    chunks = stream(make_adapter(recorder), request_of(stream=True, tools=[WEATHER_TOOL]))
    calls = [call for chunk in chunks for c in chunk.choices for call in c.delta.tool_calls or []]
    assert calls[0].function is not None and calls[0].function.name == "top_song"
    assert [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason] == ["tool_calls"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 62
