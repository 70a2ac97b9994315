"""Anthropic's token counting (``POST /v1/messages/count_tokens``,
https://docs.anthropic.com/en/api/messages-count-tokens): the request, the answer
``{"input_tokens": N}``, and modelbus's estimate for when no provider count is at hand.

The request is a Messages request without the generation settings: ``model``,
``messages``, ``system``, ``tools``, ``tool_choice``, ``thinking``, ``output_config`` and
``cache_control``, decoded with the structs of :mod:`~shared.formats.anthropic.wire`.
Anything else, ``max_tokens`` included, is refused with a 400 naming the field, as
Anthropic refuses it.

The estimate
============

:func:`estimate_input_tokens` is deterministic and needs no tokenizer. It is the rule the
router applies to every request (``needs_of`` in ``services/router/filters.py``), applied to
the request as the ingress translates it, so a client's count and the router's context and
budget checks agree to the token for any request the ingress accepts::

    ceil(chars / 4) + 85 per image + 4 per message + 3 for the reply

- *chars* counts the text of ``system``, of ``text`` blocks, of ``tool_result`` content,
  of a ``tool_use`` block's name and its ``input`` as compact JSON, of a plain-text or
  content document (with its ``title`` and ``context``), and the JSON of ``tools`` in the
  form modelbus carries them (OpenAI's ``{"type": "function", "function": {...}}``, as
  encoded bytes);
- *images* are ``image`` blocks, wherever they are;
- *messages* are the messages the ingress makes: the system prompt (when not empty), a
  turn given as a string, each ``tool_result``, and a turn's other blocks (text, images,
  documents, tool calls) together;
- left out: ``thinking`` and ``redacted_thinking`` blocks (Anthropic does not count earlier
  turns' thinking), ``tool_choice``, ``thinking``, ``output_config`` and ``cache_control``.

A PDF (a ``document`` with a ``base64``, ``url`` or ``file`` source) cannot be estimated
without reading it: it is refused with a 400 naming the source, and only a provider's count
can answer for it. The estimate is close for English prose and code and low for CJK text;
it also leaves out the system prompt Anthropic adds when tools are offered (a few hundred
tokens), which no rule outside Anthropic can know.
"""

from __future__ import annotations

from typing import Annotated, Any, assert_never

import msgspec
from msgspec import Meta

from shared.chat import FunctionDefinition, decode_client_body
from shared.chat import Tool as InternalTool
from shared.chat import encoder as chat_encoder
from shared.errors import unsupported
from shared.formats.anthropic import wire
from shared.formats.anthropic.wire import (
    Base64Source,
    CacheControl,
    ContentBlockParam,
    ContentSource,
    DocumentBlock,
    FileSource,
    ImageBlock,
    MessageParam,
    OutputConfig,
    PlainTextSource,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    ThinkingConfig,
    Tool,
    ToolChoice,
    ToolResultBlock,
    ToolUseBlock,
    UrlSource,
)

CHARS_PER_TOKEN = 4
"""Characters per token of the estimate (the router's ``CHARS_PER_TOKEN``)."""
TOKENS_PER_IMAGE = 85
"""Tokens per image (the router's ``TOKENS_PER_IMAGE``)."""
TOKENS_PER_MESSAGE = 4
"""Tokens per message (the router's ``TOKENS_PER_MESSAGE``)."""
TOKENS_PER_REPLY = 3
"""Tokens that prime the reply (the router's ``TOKENS_PER_REPLY``)."""


class CountTokensRequest(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/messages/count_tokens``; an unknown field is refused, not dropped."""

    model: str
    messages: Annotated[list[MessageParam], Meta(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None
    cache_control: CacheControl | None = None
    context_management: dict[str, Any] | None = None


class TokenCount(msgspec.Struct, kw_only=True, frozen=True):
    """The answer of ``POST /v1/messages/count_tokens``."""

    input_tokens: int


_request_decoder = msgspec.json.Decoder(CountTokensRequest)


def count_tokens_request_from_native(body: bytes) -> CountTokensRequest:
    """A client's count_tokens body; raises :class:`InvalidRequest` naming the field at fault."""
    return decode_client_body(_request_decoder, body)


_count_decoder = msgspec.json.Decoder(TokenCount)


def token_count_from_native(body: bytes) -> int:
    """Anthropic's answer ``{"input_tokens": N}``; raises ``msgspec.MsgspecError`` when it is not one."""
    count = _count_decoder.decode(body).input_tokens
    if count < 0:
        raise msgspec.ValidationError("input_tokens is negative")
    return count


def token_count_to_native(input_tokens: int) -> bytes:
    """The answer body ``{"input_tokens": N}``."""
    return wire.encoder.encode(TokenCount(input_tokens=input_tokens))


class _Tally:
    """What the estimate adds up."""

    __slots__ = ("chars", "images", "messages")

    def __init__(self) -> None:
        self.chars = 0
        self.images = 0
        self.messages = 0


def estimate_input_tokens(request: CountTokensRequest) -> int:
    """The estimated input tokens of ``request`` (the rule is in the module docstring); raises
    :class:`InvalidRequest` for a PDF, which only a provider can count."""
    tally = _Tally()
    system = request.system
    if system:
        tally.messages += 1
        tally.chars += len(system) if isinstance(system, str) else sum(len(block.text) for block in system)
    for i, turn in enumerate(request.messages):
        if isinstance(turn.content, str):
            tally.messages += 1
            tally.chars += len(turn.content)
        else:
            _count_blocks(turn.content, tally, f"messages[{i}].content")
    if request.tools:
        # The router measures the encoded bytes of the tools as modelbus carries them.
        tools = [
            InternalTool(
                function=FunctionDefinition(
                    name=t.name, description=t.description, parameters=t.input_schema, strict=t.strict
                )
            )
            for t in request.tools
        ]
        tally.chars += len(chat_encoder.encode(tools))
    tokens = -(-tally.chars // CHARS_PER_TOKEN)
    return tokens + tally.images * TOKENS_PER_IMAGE + tally.messages * TOKENS_PER_MESSAGE + TOKENS_PER_REPLY


def _count_blocks(blocks: list[ContentBlockParam], tally: _Tally, where: str) -> None:
    """One turn's blocks: each tool result is a message of its own, the other blocks one together."""
    rest = False
    for j, block in enumerate(blocks):
        at = f"{where}[{j}]"
        match block:
            case TextBlock(text=text):
                tally.chars += len(text)
                rest = True
            case ImageBlock():
                tally.images += 1
                rest = True
            case DocumentBlock():
                _count_document(block, tally, f"{at}.source")
                rest = True
            case ToolUseBlock(name=name, input=arguments):
                # As the router counts a tool call: its name and its arguments string.
                tally.chars += len(name) + len(wire.encoder.encode(arguments).decode())
                rest = True
            case ToolResultBlock(content=content):
                tally.messages += 1
                _count_tool_output(content, tally, f"{at}.content")
            case ThinkingBlock() | RedactedThinkingBlock():
                continue
            case _:
                assert_never(block)
    if rest:
        tally.messages += 1


def _count_tool_output(
    content: str | list[TextBlock | ImageBlock | DocumentBlock] | None, tally: _Tally, where: str
) -> None:
    if content is None or isinstance(content, str):
        tally.chars += len(content or "")
        return
    for k, block in enumerate(content):
        match block:
            case TextBlock(text=text):
                tally.chars += len(text)
            case ImageBlock():
                tally.images += 1
            case DocumentBlock():
                _count_document(block, tally, f"{where}[{k}].source")
            case _:
                assert_never(block)


def _count_document(document: DocumentBlock, tally: _Tally, where: str) -> None:
    tally.chars += len(document.title or "") + len(document.context or "")
    source = document.source
    match source:
        case PlainTextSource(data=data):
            tally.chars += len(data)
        case ContentSource(content=content):
            if isinstance(content, str):
                tally.chars += len(content)
                return
            for block in content:
                if isinstance(block, TextBlock):
                    tally.chars += len(block.text)
                else:
                    tally.images += 1
        case Base64Source() | UrlSource() | FileSource():
            raise unsupported(where, "modelbus cannot estimate the tokens of a PDF; only the provider can count it")
        case _:
            assert_never(source)
