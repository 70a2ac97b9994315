"""Endpoints added to the built-in example from API keys found in the environment.

Only references go into the configuration (``env:OPENAI_API_KEY``); the value
is read by the secrets service from its own environment when a provider worker
asks for it. Each vendor below speaks the OpenAI Chat Completions format.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from services.config.documents import API_VERSION

# name, key variable, provider type, base URL, default model
OPENAI_FORMAT_VENDORS: tuple[tuple[str, str, str, str, str], ...] = (
    ("openai", "OPENAI_API_KEY", "openai", "https://api.openai.com/v1", "gpt-4o-mini"),
    ("groq", "GROQ_API_KEY", "openai-compatible", "https://api.groq.com/openai/v1", "llama-3.1-8b-instant"),
    ("deepseek", "DEEPSEEK_API_KEY", "openai-compatible", "https://api.deepseek.com/v1", "deepseek-chat"),
    ("mistral", "MISTRAL_API_KEY", "openai-compatible", "https://api.mistral.ai/v1", "mistral-small-latest"),
    (
        "together",
        "TOGETHER_API_KEY",
        "openai-compatible",
        "https://api.together.xyz/v1",
        "meta-llama/Llama-3.3-70B-Instruct-Turbo",
    ),
    ("openrouter", "OPENROUTER_API_KEY", "openai-compatible", "https://openrouter.ai/api/v1", "openrouter/auto"),
    ("xai", "XAI_API_KEY", "openai-compatible", "https://api.x.ai/v1", "grok-3-mini"),
)


def endpoints_from_env(env: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """``ModelEndpoint`` documents for every vendor whose key variable is set.

    ``<NAME>_BASE_URL`` and ``<NAME>_MODEL`` (e.g. ``OPENAI_BASE_URL``) override
    the defaults.
    """
    env = os.environ if env is None else env
    docs: list[dict[str, Any]] = []
    for name, key_var, provider, base_url, model in OPENAI_FORMAT_VENDORS:
        if not env.get(key_var):
            continue
        prefix = name.upper()
        docs.append(
            {
                "apiVersion": API_VERSION,
                "kind": "ModelEndpoint",
                "metadata": {"name": name},
                "spec": {
                    "provider": provider,
                    "base_url": env.get(f"{prefix}_BASE_URL") or base_url,
                    "default_model": env.get(f"{prefix}_MODEL") or model,
                    "auth": {"secretRef": f"env:{key_var}"},
                },
            }
        )
    return docs
