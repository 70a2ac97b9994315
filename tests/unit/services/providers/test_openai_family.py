"""The OpenAI-compatible family: documented vendor base URLs and the deepseek/vllm aliases.

"Tested" here means the URL shape: for each vendor's documented base URL the
adapter posts to ``{base}/chat/completions``, with ``Authorization: Bearer``
only when the endpoint has a key. Requests go to ``httpx.MockTransport``: no
network.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from services.config.compile import derive_locality
from services.providers.base import EndpointConnection
from services.providers.http import UpstreamClient
from services.providers.openai import OpenAIAdapter, OpenAICompatibleAdapter
from services.providers.openai_family import DeepSeekAdapter, VLLMAdapter
from services.providers.registry import ADAPTERS
from shared.chat import decode_request
from shared.errors import ModelbusError
from shared.routing import Endpoint

ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
}

# (vendor, documented base URL, needs a key, local: loopback and so needs allowPrivate: true)
VENDORS: list[tuple[str, str, bool, bool]] = [
    ("Groq", "https://api.groq.com/openai/v1", True, False),
    ("Together", "https://api.together.xyz/v1", True, False),
    ("Fireworks", "https://api.fireworks.ai/inference/v1", True, False),
    ("Mistral", "https://api.mistral.ai/v1", True, False),
    ("DeepSeek", "https://api.deepseek.com/v1", True, False),
    ("xAI", "https://api.x.ai/v1", True, False),
    ("Gemini (OpenAI compatibility)", "https://generativelanguage.googleapis.com/v1beta/openai", True, False),
    ("Perplexity", "https://api.perplexity.ai", True, False),
    ("OpenRouter", "https://openrouter.ai/api/v1", True, False),
    ("Cerebras", "https://api.cerebras.ai/v1", True, False),
    ("SambaNova", "https://api.sambanova.ai/v1", True, False),
    ("vLLM", "http://localhost:8000/v1", False, True),
    ("TGI", "http://localhost:8080/v1", False, True),
    ("LM Studio", "http://localhost:1234/v1", False, True),
    ("LiteLLM proxy", "http://localhost:4000/v1", True, True),
    ("Ollama /v1", "http://127.0.0.1:11434/v1", False, True),
]


def post_once(
    adapter_type: type[OpenAIAdapter], base_url: str | None, key: str | None = None, model: str = "m"
) -> httpx.Request:
    """Send one completion through ``adapter_type`` and return the request it made."""

    async def credential(ref: str, endpoint: str) -> str:
        assert key is not None
        return key

    endpoint = Endpoint(
        name="vendor",
        provider=adapter_type.provider_type,
        base_url=base_url,
        auth_ref="env:VENDOR_KEY" if key else None,
    )
    connection = EndpointConnection(endpoint, credential)
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=ANSWER)

    connection._http = UpstreamClient(timeout_s=30, transport=httpx.MockTransport(answer))
    adapter = adapter_type(connection)
    request = decode_request(json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode())
    asyncio.run(adapter.complete(request, model, timeout_s=5))
    return seen[0]


@pytest.mark.parametrize(("vendor", "base_url", "needs_key", "local"), VENDORS, ids=[v[0] for v in VENDORS])
def test_each_documented_vendor_base_url_gets_chat_completions_appended(
    vendor: str, base_url: str, needs_key: bool, local: bool
) -> None:
    key = "vendor-key" if needs_key else None
    for written in (base_url, base_url + "/"):
        sent = post_once(OpenAICompatibleAdapter, written, key)
        assert str(sent.url) == f"{base_url}/chat/completions", vendor
        assert json.loads(sent.content)["model"] == "m"
        if needs_key:
            assert sent.headers["authorization"] == "Bearer vendor-key"
        else:
            assert "authorization" not in sent.headers


@pytest.mark.parametrize(("vendor", "base_url", "needs_key", "local"), VENDORS, ids=[v[0] for v in VENDORS])
def test_loopback_vendors_are_local_and_hosted_ones_remote(
    vendor: str, base_url: str, needs_key: bool, local: bool
) -> None:
    assert derive_locality("openai-compatible", base_url) == ("local" if local else "remote"), vendor


def test_deepseek_is_registered_and_defaults_to_its_public_api() -> None:
    assert ADAPTERS["deepseek"] is DeepSeekAdapter
    assert issubclass(DeepSeekAdapter, OpenAICompatibleAdapter)
    assert DeepSeekAdapter.gen_ai_provider == "deepseek"
    sent = post_once(DeepSeekAdapter, None, "sk-deepseek", model="deepseek-chat")
    assert str(sent.url) == "https://api.deepseek.com/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-deepseek"
    assert json.loads(sent.content)["model"] == "deepseek-chat"


def test_vllm_is_registered_and_defaults_to_a_local_server_without_a_key() -> None:
    assert ADAPTERS["vllm"] is VLLMAdapter
    assert issubclass(VLLMAdapter, OpenAICompatibleAdapter)
    assert VLLMAdapter.gen_ai_provider == "vllm"
    sent = post_once(VLLMAdapter, None)
    assert str(sent.url) == "http://127.0.0.1:8000/v1/chat/completions"
    assert "authorization" not in sent.headers


@pytest.mark.parametrize(
    ("adapter_type", "base_url"),
    [(DeepSeekAdapter, "https://api.deepseek.com"), (VLLMAdapter, "http://gpu-box.internal:8000/v1")],
)
def test_a_configured_base_url_wins_over_the_alias_default(adapter_type: type[OpenAIAdapter], base_url: str) -> None:
    assert str(post_once(adapter_type, base_url).url) == f"{base_url}/chat/completions"


def test_plain_openai_compatible_still_needs_a_base_url() -> None:
    with pytest.raises(ModelbusError, match="base_url"):
        post_once(OpenAICompatibleAdapter, None)
