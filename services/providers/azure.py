"""Azure OpenAI: OpenAI's Chat Completions format at Azure's URLs, with an ``api-key`` header.

API: https://learn.microsoft.com/azure/ai-foundry/openai/reference . The body
is OpenAI's (this adapter subclasses :class:`OpenAIAdapter`); what differs is
the URL, the auth header, a few stream events Azure adds, and its rate-limit
headers.

**URL.** Chosen from ``base_url`` and the ``api_style`` option, first match wins:

1. ``base_url`` ends with ``/openai/v1``, or ``api_style: v1``: the v1 API,
   ``{base}/chat/completions`` with no ``api-version`` (a resource root
   ``https://<resource>.openai.azure.com`` gets ``/openai/v1`` appended).
2. ``base_url`` ends with ``/openai/deployments/<name>`` (Aegis writes
   Azure this way): ``{base}/chat/completions?api-version={api_version}``; the
   deployment in the URL wins over the requested model.
3. Anything else (the resource root, or it plus ``/openai``):
   ``{root}/openai/deployments/{model}/chat/completions?api-version={api_version}``,
   so the model name is the deployment name.

The deployment forms need the ``api_version`` option (``2024-10-21`` or newer:
streamed usage needs ``stream_options``); without it every call fails with a
400 ``config_error``. The body keeps ``model`` (Azure ignores it on deployment
URLs; the v1 form needs it).

**Options** (``endpoint.options``): ``api_version`` (string, required for the
deployment forms, ignored by the v1 form), ``api_style`` (``v1`` or
``deployments``; default: from the URL as above).

**Auth:** the credential goes in ``api-key: <key>``, never ``Authorization``.

**Streams:** Azure's ``prompt_filter_results`` preamble (``choices: []``,
``object: ""``) and its asynchronous-filter annotations (choices without a
``delta``) carry no content and are skipped; every other chunk is OpenAI's.

**Errors:** OpenAI's mapping; a ``content_filter`` rejection keeps that code;
retry hints come from ``retry-after-ms``/``retry-after``, else on a 429 from
``x-ratelimit-reset-requests``/``-tokens`` (seconds, or OpenAI's ``1m30s``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import msgspec

from services.providers.adapter import config_error
from services.providers.base import EndpointConnection
from services.providers.framing import StreamEvent
from services.providers.http import Answer, status_error
from services.providers.openai import OpenAIAdapter, OpenAIStreamState
from shared.chat import ChatCompletionChunk
from shared.errors import BadUpstreamRequest, ProviderError

_DEPLOYMENT_IN_URL = re.compile(r"/openai/deployments/[^/]+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class _Annotation(msgspec.Struct):
    """What an Azure filter-only stream event looks like, loosely."""

    choices: list[dict[str, Any]] = []
    prompt_filter_results: list[Any] | None = None


class _ErrorCode(msgspec.Struct):
    code: str | None = None


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorCode | None = None


_annotation_decoder = msgspec.json.Decoder(_Annotation)
_error_code_decoder = msgspec.json.Decoder(_ErrorEnvelope)


class AzureOpenAIAdapter(OpenAIAdapter):
    """Azure OpenAI deployments (``/openai/deployments/{model}``) or the v1 API (``/openai/v1``)."""

    gen_ai_provider: ClassVar[str] = "azure.ai.openai"
    provider_type: ClassVar[str] = "azure-openai"
    default_base_url: ClassVar[str | None] = None

    def __init__(self, connection: EndpointConnection) -> None:
        endpoint = connection.endpoint
        base = (endpoint.base_url or "").rstrip("/")
        if not base:
            raise config_error(
                endpoint.name, "base_url", "azure-openai needs one, e.g. https://<resource>.openai.azure.com"
            )
        style = str(endpoint.options.get("api_style", "")).strip().lower()
        if style not in ("", "v1", "deployments"):
            raise config_error(endpoint.name, "options.api_style", f"must be v1 or deployments, not {style!r}")
        super().__init__(connection)
        self._fixed_url: str | None = None
        self._deployments = ""
        self._query = ""
        if style == "v1" or (not style and base.endswith("/openai/v1")):
            root = base if base.endswith("/openai/v1") else f"{base.removesuffix('/openai')}/openai/v1"
            self._fixed_url = f"{root}/chat/completions"
            return
        api_version = str(endpoint.options.get("api_version") or "").strip()
        if not api_version:
            raise config_error(
                endpoint.name,
                "options.api_version",
                "azure-openai deployment URLs need one (e.g. 2024-10-21), or use a base_url ending in /openai/v1",
            )
        self._query = f"?api-version={quote(api_version, safe='')}"
        if _DEPLOYMENT_IN_URL.search(base):
            self._fixed_url = f"{base}/chat/completions{self._query}"  # Aegis: the deployment is in base_url
        else:
            self._deployments = f"{base.removesuffix('/openai')}/openai/deployments"

    def _url(self, model: str, *, stream: bool) -> str:
        if self._fixed_url is not None:
            return self._fixed_url
        return f"{self._deployments}/{quote(model, safe='')}/chat/completions{self._query}"

    async def _headers(self, url: str, body: bytes, *, stream: bool) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "text/event-stream" if stream else "application/json"}
        key = await self.connection.credential()
        if key:
            headers["api-key"] = key
        return headers

    def _map_stream_event(
        self, event: StreamEvent, state: OpenAIStreamState, model: str
    ) -> Iterable[ChatCompletionChunk]:
        """OpenAI's events without Azure's filter-only ones (nothing for the client in them)."""
        try:
            chunks = super()._map_stream_event(event, state, model)
        except ProviderError:
            if _is_annotation(event.data):
                return ()
            raise
        return [c for c in chunks if c.choices or c.usage is not None]

    def _map_error(self, response: Answer, body: bytes, model: str) -> ProviderError:
        err = status_error(response, body, provider=self.provider_type, model=model)
        if err.retry_after is None and response.status_code == 429:
            err.retry_after = _rate_limit_reset(response.headers)
        if isinstance(err, BadUpstreamRequest) and _error_code(body) == "content_filter":
            err.code = "content_filter"  # Azure's content management policy rejected the prompt
        return err


def _is_annotation(data: bytes) -> bool:
    """An event holding only content-filter results: no usage and no choice with a delta."""
    try:
        event = _annotation_decoder.decode(data)
    except msgspec.MsgspecError:
        return False
    if any("delta" in choice for choice in event.choices):
        return False
    # An event with neither (an ``{"error": ...}`` event mid-stream) is not an annotation:
    # skipping it would hide the upstream's error behind "stream ended early".
    return event.prompt_filter_results is not None or (
        bool(event.choices)
        and all("content_filter_results" in c or "content_filter_offsets" in c for c in event.choices)
    )


def _error_code(body: bytes) -> str | None:
    try:
        envelope = _error_code_decoder.decode(body)
    except msgspec.MsgspecError:
        return None
    return envelope.error.code if envelope.error is not None else None


def _rate_limit_reset(headers: Mapping[str, str]) -> float | None:
    """Seconds until the exhausted limit resets (Azure sends seconds, OpenAI ``1m30s``).

    When a ``x-ratelimit-remaining-*`` header says which limit ran out, only its
    reset counts; otherwise the later of the two.
    """
    resets: dict[str, float] = {}
    for kind in ("requests", "tokens"):
        seconds = _duration_s(headers.get(f"x-ratelimit-reset-{kind}"))
        if seconds is not None:
            resets[kind] = seconds
    exhausted = [k for k in resets if (headers.get(f"x-ratelimit-remaining-{k}") or "").strip() == "0"]
    chosen = [resets[k] for k in exhausted] or list(resets.values())
    return max(chosen) if chosen else None


def _duration_s(raw: str | None) -> float | None:
    """``"6"``, ``"0.5"``, ``"20ms"``, ``"1m30s"`` to seconds; ``None`` for absent, negative or garbage."""
    if raw is None or not raw.strip():
        return None
    text = raw.strip()
    try:
        value = float(text)
    except ValueError:
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            return None
        value = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    return value if value >= 0 else None
