"""The one place provider types map to adapter classes.

Adding a provider means one adapter module, one line here, one test module.
"""

from __future__ import annotations

from services.providers.anthropic import AnthropicAdapter
from services.providers.azure import AzureOpenAIAdapter
from services.providers.base import ChatAdapter
from services.providers.bedrock import BedrockAdapter
from services.providers.gemini import GeminiAdapter
from services.providers.mock import MockAdapter
from services.providers.ollama import OllamaAdapter
from services.providers.openai import OpenAIAdapter, OpenAICompatibleAdapter
from services.providers.openai_family import DeepSeekAdapter, VLLMAdapter

ADAPTERS: dict[str, type[ChatAdapter]] = {
    "mock": MockAdapter,
    "openai": OpenAIAdapter,
    "openai-compatible": OpenAICompatibleAdapter,
    "anthropic": AnthropicAdapter,
    "gemini": GeminiAdapter,
    "bedrock": BedrockAdapter,
    "azure-openai": AzureOpenAIAdapter,
    "ollama": OllamaAdapter,
    "deepseek": DeepSeekAdapter,
    "vllm": VLLMAdapter,
}
