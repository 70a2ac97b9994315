"""The one place provider types map to adapters: :data:`ADAPTERS`.

Each entry is called like a class, ``ADAPTERS[type](connection)``, and returns
the adapter for that endpoint (the worker does exactly this, once per endpoint
spec). Most entries *are* the adapter class. A type served by more than one
class, because its endpoints differ in more than URL (Gemini on AI Studio or on
Vertex AI: different auth, paths and ``gen_ai.provider.name``), is a
:class:`ChosenByEndpoint`: it keeps one entry per type, so the dict stays the
single list of types, and still lets each class keep its own class attributes
instead of one class deciding in ``__new__`` what it really is.

Adding a provider type ``acme``:

1. ``services/providers/acme.py``: an :class:`~services.providers.adapter.HttpChatAdapter`
   subclass implementing its hooks, with ``provider_type = "acme"`` and a
   ``gen_ai_provider`` (an OpenAI-format vendor subclasses
   :class:`~services.providers.openai.OpenAICompatibleAdapter` instead and sets
   only what differs).
2. ``shared/formats/acme.py`` when the vendor has its own wire format: the native
   structs and the translation both ways, tested in ``tests/unit/shared/formats/test_acme.py``.
3. One line in :data:`ADAPTERS` below.
4. ``"acme"`` in :data:`shared.routing.PROVIDER_TYPES`, the contract's list of types
   (config validation and the router read it; it cannot import from ``services/``).
   ``tests/unit/services/providers/test_registry.py`` fails until both lists agree.
5. ``tests/unit/services/providers/test_acme.py``, and an integration test against a
   real protocol server (``llm-katan``) where one speaks the vendor's API.
6. ``make docs`` (``python -m scripts.gen_asyncapi``): the committed AsyncAPI documents in
   ``docs/asyncapi/`` list one channel per type (:mod:`services.providers.asyncapi`), and
   ``tests/test_asyncapi.py`` fails while they are stale.
"""

from __future__ import annotations

from collections.abc import Callable

from services.providers.anthropic import AnthropicAdapter
from services.providers.azure import AzureOpenAIAdapter
from services.providers.base import ChatAdapter, EndpointConnection
from services.providers.bedrock import BedrockAdapter
from services.providers.gemini import GeminiAdapter, VertexGeminiAdapter, gemini_class
from services.providers.mock import MockAdapter
from services.providers.ollama import OllamaAdapter
from services.providers.openai import OpenAIAdapter, OpenAICompatibleAdapter
from services.providers.openai_family import DeepSeekAdapter, VLLMAdapter
from shared.routing import Endpoint

AdapterFactory = Callable[[EndpointConnection], ChatAdapter]
"""What an entry of :data:`ADAPTERS` is: an adapter class, or anything called like one."""


class ChosenByEndpoint:
    """A registry entry for a type served by several adapter classes, picked per endpoint.

    Called like a class: ``entry(connection)`` builds ``choose(connection.endpoint)(connection)``.
    ``choose`` may raise :class:`~shared.errors.ConfigError` for options it cannot decide on.
    """

    def __init__(self, choose: Callable[[Endpoint], type[ChatAdapter]], *classes: type[ChatAdapter]) -> None:
        self.choose = choose
        self.classes = classes
        """Every class ``choose`` can return (for tests and docs)."""

    def __call__(self, connection: EndpointConnection) -> ChatAdapter:
        cls = self.choose(connection.endpoint)
        if cls not in self.classes:
            raise TypeError(f"{cls.__name__} is not one of this entry's classes")
        return cls(connection)


def adapter_classes(entry: AdapterFactory) -> tuple[type[ChatAdapter], ...]:
    """The adapter classes behind one entry of :data:`ADAPTERS`."""
    if isinstance(entry, ChosenByEndpoint):
        return entry.classes
    assert isinstance(entry, type), f"{entry!r} is neither an adapter class nor a ChosenByEndpoint"
    return (entry,)


ADAPTERS: dict[str, AdapterFactory] = {
    "mock": MockAdapter,
    "openai": OpenAIAdapter,
    "openai-compatible": OpenAICompatibleAdapter,
    "anthropic": AnthropicAdapter,
    "gemini": ChosenByEndpoint(gemini_class, GeminiAdapter, VertexGeminiAdapter),
    "bedrock": BedrockAdapter,
    "azure-openai": AzureOpenAIAdapter,
    "ollama": OllamaAdapter,
    "deepseek": DeepSeekAdapter,
    "vllm": VLLMAdapter,
}
"""Provider type → adapter class (or :class:`ChosenByEndpoint`); the types match
:data:`shared.routing.PROVIDER_TYPES` exactly."""
