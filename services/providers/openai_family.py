"""OpenAI-compatible vendors that only need a default base URL of their own.

Each is an :class:`OpenAICompatibleAdapter` with ``default_base_url`` set, so an
endpoint may leave ``base_url`` out; everything else (request, stream and error
mapping, ``Authorization: Bearer`` auth) is the OpenAI adapter's.

============ ================================== ====================================
type         default ``base_url``               notes
============ ================================== ====================================
``deepseek`` ``https://api.deepseek.com/v1``    API: https://api-docs.deepseek.com/
``vllm``     ``http://127.0.0.1:8000/v1``       ``vllm serve``; a key only with ``--api-key``;
                                                loopback needs ``allowPrivate: true``
============ ================================== ====================================
"""

from __future__ import annotations

from typing import ClassVar

from services.providers.openai import OpenAICompatibleAdapter


class DeepSeekAdapter(OpenAICompatibleAdapter):
    """DeepSeek's OpenAI-format API (``deepseek-chat``, ``deepseek-reasoner``)."""

    gen_ai_provider: ClassVar[str] = "deepseek"
    provider_type: ClassVar[str] = "deepseek"
    default_base_url: ClassVar[str | None] = "https://api.deepseek.com/v1"


class VLLMAdapter(OpenAICompatibleAdapter):
    """A vLLM server's OpenAI-compatible API (https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html)."""

    gen_ai_provider: ClassVar[str] = "vllm"
    provider_type: ClassVar[str] = "vllm"
    default_base_url: ClassVar[str | None] = "http://127.0.0.1:8000/v1"
