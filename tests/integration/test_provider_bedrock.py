"""The Bedrock adapter end to end: client -> router -> provider worker -> Bedrock Converse.

Two upstreams. llm-katan, a third-party Bedrock server, checks the SigV4
``Authorization`` form and access key (``--validate-keys``) and injects failures;
it sends ConverseStream events as text lines, not AWS frames. So a small fake
that follows the ConverseStream reference covers what katan cannot: binary
event-stream frames (text and tool-call deltas), full SigV4 verification with
botocore, and model ids (ARNs) that need escaping in the URL.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import unquote

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from shared import headers as H
from shared.chat import ChatCompletionChunk
from shared.errors import ModelbusError
from shared.natsserver import EmbeddedNats
from tests.conftest import Katan, Stack, free_port, run, start_stack, stop_process
from tests.integration.provider_harness import ONE_ATTEMPT, complete, katan_fleet, render_documents, stream, text
from tests.unit.services.providers.test_bedrock import event, signature_is_valid

ACCESS_KEY = "AKIAKATANEXAMPLE0001"
SECRET_KEY = "katan-secret-access-key-31337"
CREDS = json.dumps({"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY})
WRONG_CREDS = json.dumps({"access_key_id": "AKIAWRONGEXAMPLE0002", "secret_access_key": "wrong-secret-value"})
KATAN_MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
ARN_MODEL = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-haiku-20241022-v1:0"
HELLO = [{"role": "user", "content": "hello katan"}]
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}

# ---------------------------------------------------------------- a ConverseStream fake with real framing


class FakeBedrock:
    """Serves ``/model/{id}/converse[-stream]`` per the Converse references; verifies SigV4 with botocore."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.model_ids: list[str] = []
        app = Starlette(routes=[Route("/{rest:path}", self.serve, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("fake bedrock did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    async def serve(self, request: Request) -> Response:
        raw_path: bytes = request.scope["raw_path"]
        body = await request.body()
        if not signature_is_valid("POST", self.base_url + raw_path.decode(), request.headers, body, SECRET_KEY):
            error = {"message": "The request signature we calculated does not match the signature you provided."}
            return JSONResponse(error, 403, headers={"x-amzn-ErrorType": "InvalidSignatureException"})
        segments = raw_path.split(b"/")
        if len(segments) != 4 or segments[1] != b"model":
            return JSONResponse({"message": "unknown operation"}, 404, headers={"x-amzn-ErrorType": "UnknownOperation"})
        self.model_ids.append(unquote(segments[2].decode()))
        converse = json.loads(body)
        if segments[3] == b"converse":
            text = converse["messages"][-1]["content"][0]["text"]
            return JSONResponse(
                {
                    "output": {"message": {"role": "assistant", "content": [{"text": f"fake: {text}"}]}},
                    "stopReason": "end_turn",
                    "usage": {"inputTokens": 3, "outputTokens": 2, "totalTokens": 5},
                }
            )
        return StreamingResponse(self._frames(converse), media_type="application/vnd.amazon.eventstream")

    async def _frames(self, converse: dict[str, Any]) -> AsyncIterator[bytes]:
        yield event("messageStart", {"role": "assistant"})
        text = converse["messages"][-1]["content"][0]["text"]
        for word in f"fake says: {text}".split(" "):
            yield event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": word + " "}})
        yield event("contentBlockStop", {"contentBlockIndex": 0})
        tools = converse.get("toolConfig", {}).get("tools", [])
        if tools:
            name = tools[0]["toolSpec"]["name"]
            yield event(
                "contentBlockStart",
                {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_fake01", "name": name}}},
            )
            for fragment in ['{"city"', ': "Pa', 'ris"}']:
                yield event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": fragment}}})
            yield event("contentBlockStop", {"contentBlockIndex": 1})
        yield event("messageStop", {"stopReason": "tool_use" if tools else "end_turn"})
        yield event("metadata", {"usage": {"inputTokens": 11, "outputTokens": 7, "totalTokens": 18}, "metrics": {}})


# ---------------------------------------------------------------- stack


def _endpoint(
    name: str, base_url: str, creds_var: str | None = "BEDROCK_CREDS", model: str = KATAN_MODEL
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "provider": "bedrock",
        "base_url": base_url,
        "default_model": model,
        "options": {"region": "us-east-1"},
        "allowPrivate": True,  # both upstreams listen on loopback
        "timeout_ms": 10_000,
    }
    if creds_var:
        spec["auth"] = {"secretRef": f"env:{creds_var}"}
    return {"kind": "ModelEndpoint", "metadata": {"name": name}, "spec": spec}


def _config(fake: FakeBedrock, katan: Katan, failing: Katan, limited: Katan, slow: Katan) -> str:
    docs = [
        _endpoint("bedrock", katan.base_url),
        _endpoint("bedrock-wrong-key", katan.base_url, creds_var="BEDROCK_WRONG_CREDS"),
        _endpoint("bedrock-chain", katan.base_url, creds_var=None),
        _endpoint("bedrock-failing", failing.base_url),
        _endpoint("bedrock-limited", limited.base_url),
        _endpoint("bedrock-timeout", slow.base_url),
        _endpoint("bedrock-aws", fake.base_url, model=ARN_MODEL),
        {"kind": "ModelAlias", "metadata": {"name": "default"}, "spec": {"targets": [{"endpoint": "bedrock"}]}},
        ONE_ATTEMPT,
    ]
    return render_documents(docs)


class Upstreams:
    def __init__(self, stack: Stack, fake: FakeBedrock) -> None:
        self.stack = stack
        self.fake = fake
        self.url = stack.url


@pytest.fixture(scope="module")
def upstreams(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    tmp = tmp_path_factory.mktemp("bedrock")
    fake = FakeBedrock()
    fake.start()
    try:
        with katan_fleet(tmp_path_factory, ["--validate-keys", "--api-keys", f"bedrock={ACCESS_KEY}"]) as katans:
            config = tmp / "config.yaml"
            config.write_text(_config(fake, katans["ok"], katans["failing"], katans["limited"], katans["slow"]))
            env = {
                "BEDROCK_CREDS": CREDS,
                "BEDROCK_WRONG_CREDS": WRONG_CREDS,
                # The default chain of the endpoint without auth: environment only, no files, no IMDS.
                "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
                "AWS_EC2_METADATA_DISABLED": "true",
            }
            s = start_stack(nats_server.url, config, tmp / "home", env=env)
            try:
                yield Upstreams(s, fake)
            finally:
                stop_process(s.proc)
    finally:
        fake.stop()


def _tool_calls(chunks: list[ChatCompletionChunk]) -> list[Any]:
    return [call for chunk in chunks for c in chunk.choices for call in c.delta.tool_calls or []]


# ---------------------------------------------------------------- llm-katan


def test_completion_reaches_llm_katan_signed_with_sigv4_and_comes_back(upstreams: Upstreams) -> None:
    status, headers, body = run(complete(upstreams.url, {"messages": HELLO}))
    assert status == 200, body
    assert headers[H.PROVIDER] == "bedrock"
    assert headers[H.ENDPOINT] == "bedrock"
    assert body["model"] == KATAN_MODEL
    choice = body["choices"][0]
    assert "hello katan" in choice["message"]["content"]
    assert "max_tokens=1024" in choice["message"]["content"]  # the default output cap
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"] > 0


def test_the_requests_token_limit_and_temperature_reach_inference_config(upstreams: Upstreams) -> None:
    status, _, body = run(complete(upstreams.url, {"messages": HELLO, "max_tokens": 77, "temperature": 0.3}))
    assert status == 200, body
    assert "max_tokens=77 temperature=0.3" in body["choices"][0]["message"]["content"]


def test_streaming_through_llm_katan_yields_the_text_and_usage(upstreams: Upstreams) -> None:
    request = {"messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    chunks = run(stream(upstreams.url, request))
    assert "hello katan" in text(chunks)
    assert [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_tool_calls_from_llm_katan_come_back_in_the_openai_shape(upstreams: Upstreams) -> None:
    status, _, body = run(complete(upstreams.url, {"messages": HELLO, "tools": [TOOL]}))
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "test_city"}


def test_streamed_tool_calls_from_llm_katan_come_back_as_deltas(upstreams: Upstreams) -> None:
    chunks = run(stream(upstreams.url, {"messages": HELLO, "tools": [TOOL], "stream": True}))
    calls = _tool_calls(chunks)
    assert calls[0].id and calls[0].function.name == "get_weather"
    assert json.loads("".join(c.function.arguments or "" for c in calls)) == {"city": "test_city"}
    assert [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason] == ["tool_calls"]


def test_tool_results_and_images_reach_bedrock_as_content_blocks(upstreams: Upstreams) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "tooluse_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "tooluse_1", "content": "sunny and 21C"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "and this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        },
    ]
    status, _, body = run(complete(upstreams.url, {"messages": messages}))
    assert status == 200, body
    echoed = body["choices"][0]["message"]["content"]
    # katan echoes the last user message: the tool result, the text and the image merged into one turn.
    assert "sunny and 21C" in echoed and "and this picture?" in echoed and "[image:" in echoed
    assert "messages=4" in echoed  # system + user + assistant + one merged user turn


def test_the_default_aws_credential_chain_signs_when_the_endpoint_has_no_auth(upstreams: Upstreams) -> None:
    status, headers, body = run(complete(upstreams.url, {"model": "bedrock-chain", "messages": HELLO}))
    assert status == 200, body
    assert headers[H.ENDPOINT] == "bedrock-chain"


def test_an_https_image_url_is_a_400_naming_the_field(upstreams: Upstreams) -> None:
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    status, _, body = run(complete(upstreams.url, {"messages": [{"role": "user", "content": content}]}))
    assert status == 400, body
    assert body["error"]["param"] == "messages[0].content[0].image_url.url"
    assert body["error"]["retryable"] is False


def test_json_mode_is_a_400_naming_response_format(upstreams: Upstreams) -> None:
    status, _, body = run(complete(upstreams.url, {"messages": HELLO, "response_format": {"type": "json_object"}}))
    assert status == 400, body
    assert body["error"]["param"] == "response_format"


# ---------------------------------------------------------------- upstream failures


def test_wrong_access_key_is_a_non_retryable_auth_failure_without_the_secret(upstreams: Upstreams) -> None:
    status, _, body = run(complete(upstreams.url, {"model": "bedrock-wrong-key", "messages": HELLO}))
    assert status == 401, body
    assert body["error"]["type"] == "authentication_error"
    assert body["error"]["retryable"] is False
    assert "rejected the credential" in body["error"]["message"]  # upstream auth text is withheld
    assert "wrong-secret-value" not in json.dumps(body) and "AKIAWRONGEXAMPLE0002" not in json.dumps(body)


def test_upstream_500_is_a_retryable_error_with_the_aws_type(upstreams: Upstreams) -> None:
    status, _, body = run(complete(upstreams.url, {"model": "bedrock-failing", "messages": HELLO}))
    assert status == 500, body
    assert body["error"]["retryable"] is True
    assert "InternalServerException" in body["error"]["message"]


def test_upstream_timeout_is_a_retryable_504_with_the_aws_type(upstreams: Upstreams) -> None:
    first, _, _ = run(complete(upstreams.url, {"model": "bedrock-timeout", "messages": HELLO}))
    assert first == 200  # llm-katan --timeout-after 1 answers once, then times out
    status, _, body = run(complete(upstreams.url, {"model": "bedrock-timeout", "messages": HELLO}))
    assert status == 504, body
    assert body["error"]["type"] == "timeout_error"
    assert body["error"]["retryable"] is True
    assert "ModelTimeoutException" in body["error"]["message"]


def test_upstream_rate_limit_is_a_retryable_429_for_completions_and_streams(upstreams: Upstreams) -> None:
    first, _, _ = run(complete(upstreams.url, {"model": "bedrock-limited", "messages": HELLO}))
    assert first == 200
    status, _, body = run(complete(upstreams.url, {"model": "bedrock-limited", "messages": HELLO}))
    assert status == 429, body
    assert body["error"]["retryable"] is True
    assert "ThrottlingException" in body["error"]["message"]
    with pytest.raises(ModelbusError) as caught:
        run(stream(upstreams.url, {"model": "bedrock-limited", "messages": HELLO, "stream": True}))
    assert caught.value.http_status == 429 and caught.value.retryable is True


# ---------------------------------------------------------------- AWS framing (fake)


def test_binary_event_stream_with_tool_call_deltas_arrives_for_an_arn_model_id(upstreams: Upstreams) -> None:
    request = {
        "model": "bedrock-aws",
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": [TOOL],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = run(stream(upstreams.url, request))
    assert upstreams.fake.model_ids[-1] == ARN_MODEL  # one escaped segment, signature verified
    assert text(chunks) == "fake says: weather? "
    calls = _tool_calls(chunks)
    assert calls[0].index == 0 and calls[0].id == "tooluse_fake01" and calls[0].function.name == "get_weather"
    assert json.loads("".join(c.function.arguments or "" for c in calls)) == {"city": "Paris"}
    assert [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason] == ["tool_calls"]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 18


def test_a_signed_completion_for_an_arn_model_id_is_accepted_by_a_verifying_server(upstreams: Upstreams) -> None:
    status, _, body = run(complete(upstreams.url, {"model": "bedrock-aws", "messages": HELLO}))
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "fake: hello katan"
    assert body["model"] == ARN_MODEL


def test_credentials_never_appear_in_service_logs(upstreams: Upstreams) -> None:
    run(complete(upstreams.url, {"messages": HELLO}))
    log = upstreams.stack.log()
    assert SECRET_KEY not in log and "wrong-secret-value" not in log
