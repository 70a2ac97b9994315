"""The Gemini adapter (AI Studio and Vertex AI): request, response, stream and error mapping.

The native payloads follow Google's published API reference and examples
(https://ai.google.dev/api/generate-content, https://ai.google.dev/gemini-api/docs/function-calling,
https://ai.google.dev/gemini-api/docs/thought-signatures, https://ai.google.dev/gemini-api/docs/troubleshooting,
https://cloud.google.com/vertex-ai/generative-ai/docs/reference/rest/v1/GenerateContentResponse).
HTTP goes through ``httpx.MockTransport``, so each test sees exactly what the adapter sent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from services.providers.base import EndpointConnection
from services.providers.gemini import GeminiAdapter, VertexGeminiAdapter
from services.providers.http import UpstreamClient
from services.providers.registry import ADAPTERS
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

MODEL = "gemini-2.5-flash"
KEY = "AIzaSy-test-key-not-real"

TEXT_RESPONSE = {
    "candidates": [
        {
            "content": {"parts": [{"text": "Hello! How can I help?"}], "role": "model"},
            "finishReason": "STOP",
            "avgLogprobs": -0.21,
            "index": 0,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 8,
        "candidatesTokenCount": 7,
        "totalTokenCount": 115,
        "cachedContentTokenCount": 4,
        "thoughtsTokenCount": 100,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}],
    },
    "modelVersion": "gemini-2.5-flash-001",
    "responseId": "mK3UaJ6pGeWxz7IPhOSbsQc",
}

CALL_ARGS = {"attendees": ["Bob", "Alice"], "date": "2025-03-27", "time": "10:00", "topic": "Q3 planning"}
FUNCTION_CALL_RESPONSE = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {"functionCall": {"name": "schedule_meeting", "args": CALL_ARGS}},
                    {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}},
                ],
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {"promptTokenCount": 120, "candidatesTokenCount": 40, "totalTokenCount": 160},
    "modelVersion": "gemini-2.5-flash",
    "responseId": "resp-2",
}

SIGNATURE = "CiQB0e2Kb+9zQ/4x7d2Qe1Lw0t=="
SIGNED_CALL_RESPONSE = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {
                        "functionCall": {"name": "check_flight", "args": {"flight": "AA100"}},
                        "thoughtSignature": SIGNATURE,
                    }
                ],
            },
            "finishReason": "STOP",
        }
    ],
    "usageMetadata": {"promptTokenCount": 50, "candidatesTokenCount": 10, "totalTokenCount": 60},
}

RATE_LIMITED = {
    "error": {
        "code": 429,
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "x"}]},
            {"@type": "type.googleapis.com/google.rpc.Help", "links": [{"url": "https://ai.google.dev/"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"},
        ],
    }
}

BAD_KEY = {
    "error": {
        "code": 400,
        "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ],
    }
}


async def _key(ref: str, endpoint_name: str) -> str:
    return KEY


Handler = Callable[[httpx.Request], httpx.Response]


def adapter(handler: Handler | None = None, /, *, base_url: str | None = None, **options: Any) -> GeminiAdapter:
    endpoint = Endpoint(
        name="gemini-main", provider="gemini", base_url=base_url, auth_ref="env:GEMINI_KEY", options=options
    )
    connection = EndpointConnection(endpoint, _key)
    if handler is not None:
        connection._http = UpstreamClient(timeout_s=30, transport=httpx.MockTransport(handler))
    built = ADAPTERS["gemini"](connection)  # the registry picks AI Studio or Vertex AI
    assert isinstance(built, GeminiAdapter)
    return built


def req(messages: list[dict[str, Any]] | None = None, **fields: Any) -> Any:
    body = {"messages": messages or [{"role": "user", "content": "hello"}], **fields}
    return decode_request(json.dumps(body).encode())


def sent(request: Any, **options: Any) -> dict[str, Any]:
    """The native body the adapter would send for ``request``."""
    result: dict[str, Any] = json.loads(adapter(**options)._map_request(request, MODEL))
    return result


class Recorder:
    """A MockTransport handler that answers one canned response and keeps what it got."""

    def __init__(
        self,
        status: int = 200,
        body: Any = TEXT_RESPONSE,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status, self.body, self.raw, self.headers = status, body, raw, headers or {}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        content = self.raw if self.raw is not None else json.dumps(self.body).encode()
        headers = {"content-type": "application/json", **self.headers}
        return httpx.Response(self.status, content=content, headers=headers)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]


def sse(*chunks: dict[str, Any]) -> bytes:
    # Gemini ends SSE lines with CRLF.
    return "".join(f"data: {json.dumps(c)}\r\n\r\n" for c in chunks).encode()


def sse_recorder(body: bytes, status: int = 200) -> Recorder:
    return Recorder(status, raw=body, headers={"content-type": "text/event-stream"})


def complete(a: GeminiAdapter, request: Any = None) -> ChatCompletion:
    return asyncio.run(a.complete(request or req(), MODEL, timeout_s=5))


def stream(a: GeminiAdapter, request: Any = None) -> list[ChatCompletionChunk]:
    async def collect() -> list[ChatCompletionChunk]:
        return [c async for c in a.stream(request or req(stream=True), MODEL, timeout_s=5)]

    return asyncio.run(asyncio.wait_for(collect(), 5))


def failure(a: GeminiAdapter, *, streaming: bool = False) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        stream(a) if streaming else complete(a)
    return caught.value


# ---------------------------------------------------------------- endpoint, URL and auth


def test_ai_studio_requests_go_to_generate_content_with_the_key_in_x_goog_api_key_only() -> None:
    rec = Recorder()
    complete(adapter(rec))
    assert str(rec.last.url) == f"https://generativelanguage.googleapis.com/v1beta/models/{MODEL}:generateContent"
    assert rec.last.headers["x-goog-api-key"] == KEY
    assert "authorization" not in rec.last.headers
    assert KEY not in str(rec.last.url)


def test_streaming_asks_for_sse_and_puts_nothing_else_in_the_query() -> None:
    rec = sse_recorder(sse(TEXT_RESPONSE))
    stream(adapter(rec))
    assert rec.last.url.path == f"/v1beta/models/{MODEL}:streamGenerateContent"
    assert dict(rec.last.url.params) == {"alt": "sse"}


def test_an_access_token_credential_is_sent_as_a_bearer_token() -> None:
    rec = Recorder()
    complete(adapter(rec, credential="access_token", api_version="v1"))
    assert rec.last.headers["authorization"] == f"Bearer {KEY}"
    assert "x-goog-api-key" not in rec.last.headers
    assert rec.last.url.path == f"/v1/models/{MODEL}:generateContent"


def test_project_and_location_select_vertex_ai_with_its_own_host_path_and_span_name() -> None:
    rec = Recorder()
    a = adapter(rec, project="soc-prod", location="europe-west4")
    complete(a)
    assert isinstance(a, VertexGeminiAdapter) and a.gen_ai_provider == "gcp.vertex_ai"
    assert str(rec.last.url) == (
        "https://europe-west4-aiplatform.googleapis.com/v1/projects/soc-prod/locations/europe-west4"
        f"/publishers/google/models/{MODEL}:generateContent"
    )
    assert rec.last.headers["authorization"] == f"Bearer {KEY}"
    assert "x-goog-api-key" not in rec.last.headers


def test_vertex_true_defaults_to_the_global_location_and_a_base_url_replaces_the_host() -> None:
    rec = Recorder()
    complete(adapter(rec, vertex="true", project="p1"))
    assert rec.last.url.host == "aiplatform.googleapis.com"
    assert rec.last.url.path.startswith("/v1/projects/p1/locations/global/publishers/google/models/")
    rec = Recorder()
    complete(adapter(rec, base_url="http://127.0.0.1:9999/", vertex="true", project="p1", location="us-east5"))
    assert str(rec.last.url).startswith("http://127.0.0.1:9999/v1/projects/p1/locations/us-east5/publishers/")


def test_vertex_false_keeps_ai_studio_even_with_project_and_location() -> None:
    a = adapter(vertex="false", project="p", location="us-central1")
    assert type(a) is GeminiAdapter and a.gen_ai_provider == "gcp.gemini"


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"vertex": "true"}, "options.project"),
        ({"vertex": "maybe"}, "options.vertex"),
        ({"vertex": "true", "project": "p", "location": "../x"}, "options.location"),
        ({"credential": "password"}, "options.credential"),
        ({"safety_threshold": "BLOCK_SOME"}, "options.safety_threshold"),
        ({"api_version": "v1/../../x"}, "options.api_version"),
    ],
)
def test_bad_endpoint_options_are_config_errors_naming_the_option(options: dict[str, str], param: str) -> None:
    with pytest.raises(ConfigError) as caught:
        adapter(**options)
    assert caught.value.param == param


def test_a_models_prefix_on_the_model_name_is_not_doubled() -> None:
    rec = Recorder()
    asyncio.run(adapter(rec).complete(req(), "models/gemini-2.0-flash", timeout_s=5))
    assert rec.last.url.path == "/v1beta/models/gemini-2.0-flash:generateContent"


# ---------------------------------------------------------------- request mapping


def test_system_and_developer_messages_become_the_system_instruction_and_roles_become_user_and_model() -> None:
    body = sent(
        req(
            [
                {"role": "system", "content": "You are a SOC analyst."},
                {"role": "user", "content": "hi", "name": "ana"},
                {"role": "assistant", "content": "hello"},
                {"role": "developer", "content": [{"type": "text", "text": "Answer briefly."}]},
                {"role": "user", "content": "status?"},
            ]
        )
    )
    assert body["systemInstruction"] == {"parts": [{"text": "You are a SOC analyst."}, {"text": "Answer briefly."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "hi"}]},
        {"role": "model", "parts": [{"text": "hello"}]},
        {"role": "user", "parts": [{"text": "status?"}]},
    ]
    assert "generationConfig" not in body and "tools" not in body


def test_a_tool_round_trip_maps_to_function_call_and_merged_function_responses() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "weather and time in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": '{"temp_c": 21}'},
        {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "10:00"}]},
        {"role": "user", "content": "thanks"},
    ]
    contents = sent(req(messages))["contents"]
    assert contents[1] == {
        "role": "model",
        "parts": [
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
            {"functionCall": {"name": "get_time", "args": {}}},
        ],
    }
    assert contents[2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}},
            {"functionResponse": {"name": "get_time", "response": {"output": "10:00"}}},
        ],
    }
    assert contents[3] == {"role": "user", "parts": [{"text": "thanks"}]}


def test_a_tool_result_without_an_earlier_call_is_a_400_naming_the_message() -> None:
    with pytest.raises(InvalidRequest) as caught:
        sent(req([{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "call_zz", "content": "1"}]))
    assert caught.value.param == "messages[1].tool_call_id"
    assert "call_zz" in caught.value.message


def test_tool_call_arguments_that_are_not_a_json_object_are_a_400_naming_them() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}
    with pytest.raises(InvalidRequest) as caught:
        sent(req([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call]}]))
    assert caught.value.param == "messages[1].tool_calls[0].function.arguments"


def test_a_conversation_of_only_system_messages_is_a_400() -> None:
    with pytest.raises(InvalidRequest) as caught:
        sent(req([{"role": "system", "content": "x"}]))
    assert caught.value.param == "messages"


def test_images_go_inline_from_data_uris_and_by_reference_from_https_and_gs() -> None:
    content = [
        {"type": "text", "text": "what is in these?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/shots/alert.jpeg?sig=abc"}},
        {"type": "image_url", "image_url": {"url": "gs://soc-evidence/screens/1.webp"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/render"}},
    ]
    parts = sent(req([{"role": "user", "content": content}]))["contents"][0]["parts"]
    assert parts == [
        {"text": "what is in these?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"fileUri": "https://example.com/shots/alert.jpeg?sig=abc", "mimeType": "image/jpeg"}},
        {"fileData": {"fileUri": "gs://soc-evidence/screens/1.webp", "mimeType": "image/webp"}},
        {"fileData": {"fileUri": "https://example.com/render"}},
    ]


@pytest.mark.parametrize(
    "url", ["http://example.com/a.png", "ftp://example.com/a.png", "data:image/png,rawbytes", "data:;base64,AAAA"]
)
def test_images_gemini_cannot_take_are_a_400_naming_the_field(url: str) -> None:
    content = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(InvalidRequest) as caught:
        sent(req([{"role": "user", "content": content}]))
    assert caught.value.param == "messages[0].content[1].image_url.url"


def test_tools_become_function_declarations_with_a_schema_gemini_accepts() -> None:
    parameters = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "host": {"$ref": "#/$defs/Host"},
            "since": {"type": "string", "format": "date-time"},
            "link": {"type": "string", "format": "uri"},
            "severity": {"type": "integer", "enum": [1, 2, 3]},
            "note": {"type": ["string", "null"], "description": "free text"},
            "kind": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            "mode": {"const": "fast"},
        },
        "required": ["host"],
        "$defs": {"Host": {"type": "object", "properties": {"ip": {"type": "string"}}, "additionalProperties": False}},
    }
    tools = [
        {"type": "function", "function": {"name": "isolate_host", "description": "Isolate", "parameters": parameters}},
        {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}},
        {"type": "function", "function": {"name": "noop", "strict": True}},
    ]
    body = sent(req(tools=tools))
    declarations = body["tools"][0]["functionDeclarations"]
    assert declarations[0] == {
        "name": "isolate_host",
        "description": "Isolate",
        "parameters": {
            "type": "object",
            "properties": {
                "host": {"type": "object", "properties": {"ip": {"type": "string"}}},
                "since": {"type": "string", "format": "date-time"},
                "link": {"type": "string"},
                "severity": {"type": "integer", "enum": ["1", "2", "3"]},
                "note": {"type": "string", "nullable": True, "description": "free text"},
                "kind": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "mode": {"enum": ["fast"]},
            },
            "required": ["host"],
        },
    }
    assert declarations[1:] == [{"name": "ping"}, {"name": "noop"}]


def test_a_recursive_schema_is_a_400_naming_the_tool_parameters() -> None:
    parameters = {
        "type": "object",
        "properties": {"node": {"$ref": "#/$defs/Node"}},
        "$defs": {"Node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Node"}}}},
    }
    with pytest.raises(InvalidRequest) as caught:
        sent(req(tools=[{"type": "function", "function": {"name": "walk", "parameters": parameters}}]))
    assert caught.value.param == "tools[0].function.parameters"


TOOLS = [{"type": "function", "function": {"name": "lookup"}}, {"type": "function", "function": {"name": "other"}}]


@pytest.mark.parametrize(
    ("choice", "native"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        ({"type": "function", "function": {"name": "other"}}, {"mode": "ANY", "allowedFunctionNames": ["other"]}),
    ],
)
def test_tool_choice_maps_to_the_function_calling_mode(choice: Any, native: dict[str, Any]) -> None:
    assert sent(req(tools=TOOLS, tool_choice=choice))["toolConfig"] == {"functionCallingConfig": native}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}}, "tool_choice.function.name"),
        ({"logprobs": True}, "logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ],
)
def test_requests_gemini_cannot_honour_are_a_400_naming_the_param(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        sent(req(**fields))
    assert caught.value.param == param


def test_sampling_limits_stop_seed_penalties_and_reasoning_go_into_generation_config() -> None:
    body = sent(
        req(
            temperature=0.2,
            top_p=0.9,
            max_completion_tokens=256,
            max_tokens=999,
            stop="END",
            seed=7,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            reasoning_effort="medium",
            user="u-1",
            metadata={"case": "42"},
            parallel_tool_calls=False,
        )
    )
    assert body["generationConfig"] == {
        "temperature": 0.2,
        "topP": 0.9,
        "maxOutputTokens": 256,
        "seed": 7,
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
        "stopSequences": ["END"],
        "thinkingConfig": {"thinkingBudget": 8192},
    }
    assert set(body) == {"contents", "generationConfig"}


def test_json_mode_and_json_schema_set_the_response_mime_type_and_schema() -> None:
    assert sent(req(response_format={"type": "json_object"}))["generationConfig"] == {
        "responseMimeType": "application/json"
    }
    schema = {"type": "object", "properties": {"verdict": {"type": "string"}}, "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "v", "schema": schema, "strict": True}}
    assert sent(req(response_format=fmt))["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseSchema": {"type": "object", "properties": {"verdict": {"type": "string"}}},
    }


def test_the_safety_threshold_option_sets_all_four_harm_categories() -> None:
    settings = sent(req(), safety_threshold="BLOCK_ONLY_HIGH")["safetySettings"]
    assert {s["category"] for s in settings} == {
        "HARM_CATEGORY_HARASSMENT",
        "HARM_CATEGORY_HATE_SPEECH",
        "HARM_CATEGORY_SEXUALLY_EXPLICIT",
        "HARM_CATEGORY_DANGEROUS_CONTENT",
    }
    assert {s["threshold"] for s in settings} == {"BLOCK_ONLY_HIGH"}


# ---------------------------------------------------------------- response mapping


def test_a_text_answer_maps_to_a_chat_completion_with_cached_and_reasoning_tokens() -> None:
    completion = complete(adapter(Recorder()))
    assert completion.id == "chatcmpl-mK3UaJ6pGeWxz7IPhOSbsQc"
    assert completion.model == "gemini-2.5-flash-001"
    choice = completion.choices[0]
    assert (choice.message.content, choice.message.tool_calls, choice.finish_reason) == (
        "Hello! How can I help?",
        None,
        "stop",
    )
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (8, 107, 115)
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 4
    assert usage.completion_tokens_details is not None and usage.completion_tokens_details.reasoning_tokens == 100


def test_function_calls_become_openai_tool_calls_with_stable_distinct_ids() -> None:
    completion = complete(adapter(Recorder(body=FUNCTION_CALL_RESPONSE)))
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["schedule_meeting", "get_weather"]
    assert json.loads(calls[0].function.arguments) == CALL_ARGS
    assert calls[0].id != calls[1].id and all(c.id.startswith("call_") for c in calls)
    again = complete(adapter(Recorder(body=FUNCTION_CALL_RESPONSE))).choices[0].message.tool_calls or []
    assert [c.id for c in again] == [c.id for c in calls]


def test_a_thought_signature_rides_in_the_call_id_and_goes_back_with_the_call() -> None:
    call = (complete(adapter(Recorder(body=SIGNED_CALL_RESPONSE))).choices[0].message.tool_calls or [])[0]
    assert set(call.id) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "is AA100 on time?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "on time"},
    ]
    contents = sent(req(history))["contents"]
    assert contents[1]["parts"][0] == {
        "functionCall": {"name": "check_flight", "args": {"flight": "AA100"}},
        "thoughtSignature": SIGNATURE,
    }
    assert contents[2]["parts"][0]["functionResponse"]["name"] == "check_flight"


def test_thought_parts_are_left_out_of_the_answer() -> None:
    body = {
        "candidates": [
            {
                "content": {
                    "parts": [{"text": "Let me think about ports...", "thought": True}, {"text": "Port 22 is SSH."}],
                    "role": "model",
                },
                "finishReason": "STOP",
            }
        ]
    }
    assert complete(adapter(Recorder(body=body))).choices[0].message.content == "Port 22 is SSH."


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("OTHER", "stop"),
        ("FINISH_REASON_UNSPECIFIED", "stop"),
    ],
)
def test_finish_reasons_map_to_openai_values(reason: str, finish: str) -> None:
    body = {"candidates": [{"content": {"parts": [{"text": "x"}], "role": "model"}, "finishReason": reason}]}
    assert complete(adapter(Recorder(body=body))).choices[0].finish_reason == finish


def test_a_malformed_function_call_finish_is_a_502_with_gemini_s_message() -> None:
    body = {"candidates": [{"finishReason": "MALFORMED_FUNCTION_CALL", "finishMessage": "Malformed function call: x"}]}
    err = failure(adapter(Recorder(body=body)))
    assert isinstance(err, BadUpstreamResponse) and err.retryable is False
    assert "MALFORMED_FUNCTION_CALL" in err.message and "Malformed function call: x" in err.message


def test_a_blocked_prompt_is_an_empty_content_filter_answer() -> None:
    body = {
        "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
    }
    completion = complete(adapter(Recorder(body=body)))
    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.choices[0].message.content == ""
    assert completion.usage is not None and completion.usage.total_tokens == 9


# ---------------------------------------------------------------- streaming


def test_a_stream_maps_text_then_a_whole_tool_call_delta_then_the_usage_chunk() -> None:
    chunks: list[dict[str, Any]] = [
        {"candidates": [{"content": {"parts": [{"text": "Checking "}], "role": "model"}}], "responseId": "r9"},
        {
            "candidates": [{"content": {"parts": [{"text": "now."}], "role": "model"}}],
            "usageMetadata": {"promptTokenCount": 30, "totalTokenCount": 30},
            "responseId": "r9",
        },
        {
            "candidates": [
                {
                    "content": {
                        "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}],
                        "role": "model",
                    },
                    "finishReason": "STOP",
                }
            ],
            "usageMetadata": {
                "promptTokenCount": 30,
                "candidatesTokenCount": 12,
                "totalTokenCount": 50,
                "thoughtsTokenCount": 8,
            },
            "modelVersion": "gemini-2.5-flash",
            "responseId": "r9",
        },
    ]
    out = stream(adapter(sse_recorder(sse(*chunks))))
    assert [c.id for c in out] == ["chatcmpl-r9"] * 4
    assert out[0].choices[0].delta.role == "assistant" and out[1].choices[0].delta.role is None
    assert "".join(c.choices[0].delta.content or "" for c in out[:3]) == "Checking now."
    call = (out[2].choices[0].delta.tool_calls or [])[0]
    assert (call.index, call.type) == (0, "function")
    assert call.id is not None and call.id.startswith("call_")
    assert call.function is not None and call.function.name == "get_weather"
    assert json.loads(call.function.arguments or "") == {"city": "Oslo"}
    assert out[2].choices[0].finish_reason == "tool_calls"
    assert out[3].choices == [] and out[3].usage is not None
    assert (out[3].usage.prompt_tokens, out[3].usage.completion_tokens, out[3].usage.total_tokens) == (30, 20, 50)


def test_a_streamed_tool_call_has_the_same_id_as_the_non_streamed_one() -> None:
    streamed = stream(adapter(sse_recorder(sse(FUNCTION_CALL_RESPONSE))))
    deltas = streamed[0].choices[0].delta.tool_calls or []
    whole = complete(adapter(Recorder(body=FUNCTION_CALL_RESPONSE))).choices[0].message.tool_calls or []
    assert [(d.index, d.id) for d in deltas] == [(0, whole[0].id), (1, whole[1].id)]


def test_tool_call_indexes_keep_counting_across_chunks() -> None:
    def call_chunk(name: str, finish: str | None = None) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": [{"functionCall": {"name": name, "args": {}}}]}}
        if finish:
            candidate["finishReason"] = finish
        return {"candidates": [candidate]}

    out = stream(adapter(sse_recorder(sse(call_chunk("a"), call_chunk("b", "STOP")))))
    indexes = [d.index for c in out for d in c.choices[0].delta.tool_calls or []]
    assert indexes == [0, 1]


def test_a_server_that_ignores_alt_sse_still_streams_from_the_json_array_form() -> None:
    body = [
        {"candidates": [{"content": {"parts": [{"text": "Hel"}], "role": "model"}}]},
        {
            "candidates": [{"content": {"parts": [{"text": "lo"}], "role": "model"}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 2, "totalTokenCount": 4},
        },
    ]
    out = stream(adapter(Recorder(body=body)))
    assert "".join(c.choices[0].delta.content or "" for c in out if c.choices) == "Hello"
    assert out[-1].usage is not None and out[-1].usage.total_tokens == 4


def test_a_stream_that_ends_before_a_finish_reason_is_a_502() -> None:
    rec = sse_recorder(sse({"candidates": [{"content": {"parts": [{"text": "partial"}], "role": "model"}}]}))
    err = failure(adapter(rec), streaming=True)
    assert isinstance(err, BadUpstreamResponse) and "finish reason" in err.message


def test_an_error_event_mid_stream_keeps_its_status_and_retryability() -> None:
    error = {
        "error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}
    }
    rec = sse_recorder(sse({"candidates": [{"content": {"parts": [{"text": "a"}], "role": "model"}}]}, error))
    err = failure(adapter(rec), streaming=True)
    assert isinstance(err, UpstreamUnavailable) and err.retryable is True
    assert "overloaded" in err.message


def test_a_malformed_stream_event_is_a_502() -> None:
    err = failure(adapter(sse_recorder(b"data: {not json\r\n\r\n")), streaming=True)
    assert isinstance(err, BadUpstreamResponse) and "malformed stream chunk" in err.message


def test_a_stream_request_answered_with_429_keeps_gemini_s_retry_delay() -> None:
    err = failure(adapter(Recorder(429, RATE_LIMITED)), streaming=True)
    assert isinstance(err, RateLimited) and err.retry_after == 37.0


# ---------------------------------------------------------------- errors


def test_429_is_retryable_with_the_retry_delay_from_the_body_and_google_s_message() -> None:
    err = failure(adapter(Recorder(429, RATE_LIMITED)))
    assert isinstance(err, RateLimited) and err.retryable is True and err.retry_after == 37.0
    assert "RESOURCE_EXHAUSTED" in err.message and "exceeded your current quota" in err.message


def test_a_retry_after_header_wins_over_the_body() -> None:
    err = failure(adapter(Recorder(429, RATE_LIMITED, headers={"retry-after": "5"})))
    assert err.retry_after == 5.0


def test_a_rejected_api_key_is_a_non_retryable_auth_failure_without_the_key() -> None:
    err = failure(adapter(Recorder(400, BAD_KEY)))
    assert isinstance(err, AuthFailed) and err.http_status == 401 and err.retryable is False
    assert KEY not in err.message


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        (400, BadUpstreamRequest, False),
        (403, AuthFailed, False),
        (404, BadUpstreamRequest, False),
        (500, UpstreamUnavailable, True),
        (503, UpstreamUnavailable, True),
        (504, UpstreamTimeout, True),
    ],
)
def test_http_errors_map_through_the_shared_status_mapping(
    status: int, cls: type[ProviderError], retryable: bool
) -> None:
    body = {"error": {"code": status, "message": "native reason here", "status": "X"}}
    err = failure(adapter(Recorder(status, body)))
    assert type(err) is cls and err.retryable is retryable
    assert "native reason here" in err.message


def test_an_error_in_the_one_element_array_form_still_gives_google_s_message() -> None:
    err = failure(adapter(Recorder(500, [{"error": {"code": 500, "message": "Internal error", "status": "INTERNAL"}}])))
    assert isinstance(err, UpstreamUnavailable) and "Internal error" in err.message


def test_an_error_body_answered_with_200_is_a_502_with_the_reason() -> None:
    err = failure(adapter(Recorder(200, {"error": {"code": 500, "message": "backend exploded"}})))
    assert isinstance(err, BadUpstreamResponse) and err.retryable is False
    assert "backend exploded" in err.message


@pytest.mark.parametrize("raw", [b"<html>oops</html>", b'{"candidates": "nope"}', b"{}"])
def test_a_malformed_or_empty_answer_is_a_502(raw: bytes) -> None:
    err = failure(adapter(Recorder(raw=raw)))
    assert isinstance(err, BadUpstreamResponse)


@pytest.mark.parametrize(
    ("exc", "cls"),
    [(httpx.ConnectError("refused"), UpstreamUnavailable), (httpx.ReadTimeout("slow"), UpstreamTimeout)],
)
def test_transport_failures_are_retryable(exc: Exception, cls: type[ProviderError]) -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise exc

    for streaming in (False, True):
        err = failure(adapter(boom), streaming=streaming)
        assert isinstance(err, cls) and err.retryable is True
