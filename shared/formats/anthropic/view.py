"""What a router needs to know of a Messages request that is to be sent on as it came.

A request routed to an ``anthropic`` endpoint reaches Anthropic as the client's
own body (:mod:`shared.formats.passthrough`), so nothing in it may be refused
for want of an internal counterpart: thinking blocks with their signatures,
``cache_control``, server tools, ``top_k``, ``container`` and fields added after
this code was written all pass. :func:`request_view` reads only what routing
uses, ignoring everything else, and checks the fields Anthropic requires:

- ``model`` (a string), ``max_tokens`` (an integer of at least 1) and
  ``messages`` (a non-empty list of turns with ``role`` ``user``,
  ``assistant`` or ``system`` and a string or a list of blocks as ``content``);
- ``system``: a string or a list of blocks; ``tools``: a list of objects
  with a ``name``; ``tool_choice``: an object with a ``type``; ``stream``: a
  boolean.

A wrong type in any of these is a 400 naming the field, as the strict
translation gives it. The view is a :class:`~shared.chat.ChatCompletionRequest`
fit for routing only (model, stream, the output cap, tool names, whether
images are present, and the text the prompt-token estimate counts); a request
that has to go to another API is translated by
:func:`~shared.formats.anthropic.request_from_native` instead, which refuses what
it cannot carry.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from shared.chat import (
    AssistantMessage,
    ChatCompletionRequest,
    ContentPart,
    FunctionDefinition,
    ImagePart,
    ImageURL,
    StreamOptions,
    SystemMessage,
    TextPart,
    UserMessage,
    decode_client_body,
)
from shared.chat import Message as InternalMessage
from shared.chat import Tool as InternalTool

_IMAGE = ImagePart(image_url=ImageURL(url="data:,"))
"""Stands for an image in the view: routing counts images and needs vision; it never sends them."""


class _Block(Struct, frozen=True):
    type: str
    text: str | None = None
    name: str | None = None
    input: Any = None
    content: Any = None
    title: str | None = None
    context: str | None = None
    source: Any = None


class _Turn(Struct, frozen=True):
    role: Literal["user", "assistant", "system"]
    content: str | list[_Block]


class _Tool(Struct, frozen=True):
    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None


class _ToolChoice(Struct, frozen=True):
    type: str


class _Request(Struct, kw_only=True, frozen=True):
    model: str
    max_tokens: Annotated[int, Meta(ge=1)]
    messages: Annotated[list[_Turn], Meta(min_length=1)]
    system: str | list[_Block] | None = None
    tools: list[_Tool] | None = None
    tool_choice: _ToolChoice | None = None
    stream: bool = False


class _CountRequest(_Request, kw_only=True, frozen=True):
    """A ``count_tokens`` body: a Messages request without ``max_tokens``."""

    max_tokens: Annotated[int, Meta(ge=1)] | None = None  # type: ignore[assignment]


_decoder = msgspec.json.Decoder(_Request)
_count_decoder = msgspec.json.Decoder(_CountRequest)
_encode = msgspec.json.Encoder().encode


def request_view(body: bytes, *, count: bool = False) -> ChatCompletionRequest:
    """The routing view of a Messages body (``count``: of a ``count_tokens`` body, which has no
    ``max_tokens``); a 400 naming the field when a required one is wrong."""
    native: _Request = decode_client_body(_count_decoder, body) if count else decode_client_body(_decoder, body)
    messages: list[InternalMessage] = []
    if native.system:
        system = native.system if isinstance(native.system, str) else _text_of(native.system)
        messages.append(SystemMessage(content=system))
    for turn in native.messages:
        if isinstance(turn.content, str):
            parts: list[ContentPart] = [TextPart(text=turn.content)]
        else:
            parts = [TextPart(text=_text_of(turn.content))]
            parts += [_IMAGE for block in turn.content if block.type == "image"]
        if turn.role == "system":  # Claude Code sends system turns between the others
            messages.append(SystemMessage(content=[p for p in parts if isinstance(p, TextPart)]))
        elif turn.role == "assistant":
            messages.append(AssistantMessage(content=[p for p in parts if isinstance(p, TextPart)]))
        else:
            messages.append(UserMessage(content=parts))
    tools = [_tool(tool) for tool in native.tools] if native.tools else None
    choice = native.tool_choice.type if native.tool_choice else None
    return ChatCompletionRequest(
        messages=messages,
        model=native.model,
        tools=tools,
        tool_choice="none" if choice == "none" else None,
        max_tokens=native.max_tokens,
        stream=native.stream,
        stream_options=StreamOptions(include_usage=True) if native.stream else None,
    )


def _tool(tool: _Tool) -> InternalTool:
    return InternalTool(
        function=FunctionDefinition(name=tool.name, description=tool.description, parameters=tool.input_schema)
    )


def _text_of(blocks: list[_Block]) -> str:
    """The text the estimate counts: text, tool calls (name and input), tool results, documents."""
    out: list[str] = []
    for block in blocks:
        if block.text:
            out.append(block.text)
        if block.name:
            out.append(block.name)
        if block.input is not None:
            out.append(_encode(block.input).decode())
        if isinstance(block.content, str):
            out.append(block.content)
        elif isinstance(block.content, list):
            out.extend(str(part.get("text", "")) for part in block.content if isinstance(part, dict))
        for extra in (block.title, block.context):
            if extra:
                out.append(extra)
    return "\n".join(out)
