"""Converse requests: the internal request as a Converse body, and a Converse body as the internal request.

Rules for both directions are listed in :mod:`shared.formats.bedrock`.
"""

from __future__ import annotations

from typing import Any, Literal, assert_never

import msgspec

from shared.chat import (
    AssistantMessage,
    ChatCompletionRequest,
    ContentPart,
    DeveloperMessage,
    FunctionCall,
    FunctionDefinition,
    ImagePart,
    ImageURL,
    JsonObjectFormat,
    JsonSchemaResponseFormat,
    Message,
    StreamOptions,
    SystemMessage,
    TextFormat,
    TextPart,
    ToolCall,
    ToolChoice,
    ToolChoiceFunction,
    ToolChoiceFunctionName,
    ToolMessage,
    UserMessage,
    decode_client_body,
)
from shared.chat import Tool as ChatTool
from shared.errors import InvalidRequest, unsupported
from shared.formats.bedrock import wire
from shared.formats.images import parse_data_uri

IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
"""Media type -> Converse image format."""
_IMAGE_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}
_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
_UNSUPPORTED_FIELDS = (
    ("additional_model_request_fields", "additionalModelRequestFields"),
    ("additional_model_response_field_paths", "additionalModelResponseFieldPaths"),
    ("guardrail_config", "guardrailConfig"),
    ("prompt_variables", "promptVariables"),
    ("performance_config", "performanceConfig"),
    ("service_tier", "serviceTier"),
)
_BLOCK_MEMBERS = (
    ("text", "text"),
    ("image", "image"),
    ("tool_use", "toolUse"),
    ("tool_result", "toolResult"),
    ("document", "document"),
    ("video", "video"),
    ("guard_content", "guardContent"),
    ("cache_point", "cachePoint"),
    ("reasoning_content", "reasoningContent"),
    ("citations_content", "citationsContent"),
)


def _not_accepted(param: str, why: str) -> InvalidRequest:
    """A Converse field with no internal counterpart (400 ``unsupported_parameter``)."""
    return InvalidRequest(f"{param} is not accepted: {why}", param=param, code="unsupported_parameter")


# ---------------------------------------------------------------- internal -> native


def request_to_native(request: ChatCompletionRequest, *, default_max_tokens: int | None = None) -> bytes:
    """The Converse body for ``request`` (the model goes in the URL, not the body).

    ``default_max_tokens`` is ``inferenceConfig.maxTokens`` when the request sets no limit.
    Raises :class:`InvalidRequest` naming the parameter Converse cannot honour.
    """
    _check_supported(request)
    system, messages = _map_messages(request)
    stop = [request.stop] if isinstance(request.stop, str) else request.stop
    config = wire.InferenceConfig(
        max_tokens=request.output_token_limit or default_max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stop_sequences=stop or None,
    )
    body = wire.ConverseRequest(
        messages=messages,
        system=system or None,
        inference_config=config if config != wire.InferenceConfig() else None,
        tool_config=_map_tools(request),
        request_metadata=request.metadata or None,
    )
    return wire.encoder.encode(body)


def _check_supported(request: ChatCompletionRequest) -> None:
    match request.response_format:
        case None | TextFormat():
            pass
        case JsonObjectFormat() | JsonSchemaResponseFormat():
            raise unsupported("response_format", "Bedrock Converse has no JSON mode; use a tool with a schema")
        case _:
            assert_never(request.response_format)
    if request.logprobs or request.top_logprobs is not None:
        raise unsupported("logprobs", "Bedrock Converse returns no log probabilities")
    if request.logit_bias:
        raise unsupported("logit_bias", "Bedrock Converse has no logit bias")
    if request.presence_penalty:
        raise unsupported("presence_penalty", "Bedrock Converse has no presence penalty")
    if request.frequency_penalty:
        raise unsupported("frequency_penalty", "Bedrock Converse has no frequency penalty")
    if request.reasoning_effort is not None:
        raise unsupported("reasoning_effort", "reasoning settings are model-specific on Bedrock")


def _map_messages(request: ChatCompletionRequest) -> tuple[list[wire.SystemBlock], list[wire.Message]]:
    """System text hoisted to ``system``; turns of one role in a row merged into one message."""
    system: list[wire.SystemBlock] = []
    turns: list[wire.Message] = []

    def add(role: Literal["user", "assistant"], blocks: list[wire.ContentBlock]) -> None:
        if turns and turns[-1].role == role:
            turns[-1].content.extend(blocks)
        else:
            turns.append(wire.Message(role=role, content=blocks))

    for i, message in enumerate(request.messages):
        match message:
            case SystemMessage() | DeveloperMessage():
                system.extend(wire.SystemBlock(text=text) for text in _texts(message.content))
            case UserMessage():
                add("user", _user_blocks(message.content, f"messages[{i}].content"))
            case AssistantMessage():
                add("assistant", _assistant_blocks(message, i))
            case ToolMessage():
                result = wire.ToolResult(
                    tool_use_id=message.tool_call_id,
                    content=[wire.ToolResultContent(text=text) for text in _texts(message.content)],
                )
                add("user", [wire.ContentBlock(tool_result=result)])
            case _:
                assert_never(message)
    return system, turns


def _texts(content: str | list[TextPart]) -> list[str]:
    return [content] if isinstance(content, str) else [part.text for part in content]


def _user_blocks(content: str | list[ContentPart], param: str) -> list[wire.ContentBlock]:
    if isinstance(content, str):
        return [wire.ContentBlock(text=content)]
    blocks: list[wire.ContentBlock] = []
    for j, part in enumerate(content):
        match part:
            case TextPart():
                blocks.append(wire.ContentBlock(text=part.text))
            case ImagePart():
                blocks.append(_image_block(part.image_url.url, f"{param}[{j}].image_url.url"))
            case _:
                assert_never(part)
    return blocks


def _image_block(url: str, param: str) -> wire.ContentBlock:
    """A ``data:`` URI as image bytes; Converse cannot fetch URLs, so those are a 400."""
    parsed = parse_data_uri(url, param)
    if parsed is None:
        raise InvalidRequest(
            f"{param}: Bedrock Converse takes images as bytes only; send a base64 data: URI",
            param=param,
            code="unsupported_image_url",
        )
    mime, payload = parsed
    image_format = IMAGE_FORMATS.get(mime)
    if image_format is None:
        raise InvalidRequest(
            f"{param}: image type {mime!r} is not supported by Bedrock (png, jpeg, gif, webp)",
            param=param,
            code="invalid_image",
        )
    return wire.ContentBlock(image=wire.Image(format=image_format, source=wire.ImageSource(data=payload)))


def _assistant_blocks(message: AssistantMessage, i: int) -> list[wire.ContentBlock]:
    blocks: list[wire.ContentBlock] = []
    if message.content is not None:
        blocks.extend(wire.ContentBlock(text=t) for t in _texts(message.content) if t or not message.tool_calls)
    elif message.refusal:
        blocks.append(wire.ContentBlock(text=message.refusal))
    for j, call in enumerate(message.tool_calls or []):
        try:
            arguments = msgspec.json.decode(call.function.arguments or "{}")
        except msgspec.DecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            param = f"messages[{i}].tool_calls[{j}].function.arguments"
            raise InvalidRequest(f"{param}: must be a JSON object", param=param, code="invalid_tool_arguments")
        use = wire.ToolUse(tool_use_id=call.id, name=call.function.name, input=arguments)
        blocks.append(wire.ContentBlock(tool_use=use))
    return blocks


def _map_tools(request: ChatCompletionRequest) -> wire.ToolConfig | None:
    if not request.tools:
        return None
    choice: wire.ToolChoice | None
    match request.tool_choice:
        case "none":
            return None  # Converse has no "none": offering no tools is the faithful equivalent
        case None:
            choice = None
        case "auto":
            choice = wire.ToolChoice(auto=wire.Empty())
        case "required":
            choice = wire.ToolChoice(any_=wire.Empty())
        case ToolChoiceFunction():
            choice = wire.ToolChoice(tool=wire.ToolName(name=request.tool_choice.function.name))
        case _:
            assert_never(request.tool_choice)
    tools = [
        wire.Tool(
            tool_spec=wire.ToolSpec(
                name=tool.function.name,
                description=tool.function.description,
                input_schema=wire.InputSchema(json=tool.function.parameters or _EMPTY_SCHEMA),
            )
        )
        for tool in request.tools
    ]
    return wire.ToolConfig(tools=tools, tool_choice=choice)


# ---------------------------------------------------------------- native -> internal


def request_from_native(body: bytes, model: str, *, stream: bool = False) -> ChatCompletionRequest:
    """A client's Converse body (``model`` is the URL's ``modelId``; ``stream`` for ConverseStream).

    Raises :class:`InvalidRequest` naming the field (``messages[0].content[1].document``) that is
    malformed or has no counterpart in the internal contract.
    """
    native = decode_client_body(wire.request_decoder, body)
    for attribute, name in _UNSUPPORTED_FIELDS:
        if getattr(native, attribute) is not None:
            raise _not_accepted(name, "it has no counterpart in modelbus's chat contract")
    if not native.messages:
        raise InvalidRequest("messages: must not be empty", param="messages", code="invalid_field")
    messages: list[Message] = [*_system_from_native(native.system or []), *_messages_from_native(native.messages)]
    tools, tool_choice = _tools_from_native(native.tool_config)
    config = native.inference_config or wire.InferenceConfig()
    return ChatCompletionRequest(
        messages=messages,
        model=model,
        tools=tools,
        tool_choice=tool_choice,
        temperature=config.temperature,
        top_p=config.top_p,
        max_completion_tokens=config.max_tokens,
        stop=config.stop_sequences or None,
        metadata=native.request_metadata,
        stream=stream,
        stream_options=StreamOptions(include_usage=True) if stream else None,
    )


def _system_from_native(blocks: list[wire.SystemBlock]) -> list[Message]:
    system: list[Message] = []
    for i, block in enumerate(blocks):
        if block.text is not None:
            system.append(SystemMessage(content=block.text))
        elif block.guard_content is not None:
            raise _not_accepted(f"system[{i}].guardContent", "modelbus applies no guardrails")
        elif block.cache_point is None:
            raise InvalidRequest(f"system[{i}]: a system block needs text", param=f"system[{i}]", code="invalid_field")
    return system


def _messages_from_native(messages: list[wire.Message]) -> list[Message]:
    out: list[Message] = []
    for i, message in enumerate(messages):
        if message.role == "assistant":
            out.append(_assistant_from_native(message.content, f"messages[{i}].content"))
        else:
            out.extend(_user_from_native(message.content, f"messages[{i}].content"))
    return out


def _user_from_native(blocks: list[wire.ContentBlock], param: str) -> list[Message]:
    """One user turn: its tool results become tool messages, in place; the rest user messages."""
    out: list[Message] = []
    parts: list[ContentPart] = []
    for j, block in enumerate(blocks):
        where = f"{param}[{j}]"
        if block.text is not None:
            parts.append(TextPart(text=block.text))
        elif block.image is not None:
            parts.append(ImagePart(image_url=ImageURL(url=_data_uri(block.image, f"{where}.image"))))
        elif block.tool_result is not None:
            if parts:
                out.append(_user_message(parts))
                parts = []
            content = _tool_result_text(block.tool_result, f"{where}.toolResult.content")
            out.append(ToolMessage(tool_call_id=block.tool_result.tool_use_id, content=content))
        elif block.cache_point is None:
            raise _unsupported_block(block, where)
    if parts:
        out.append(_user_message(parts))
    return out


def _user_message(parts: list[ContentPart]) -> UserMessage:
    if len(parts) == 1 and isinstance(parts[0], TextPart):
        return UserMessage(content=parts[0].text)
    return UserMessage(content=parts)


def _tool_result_text(result: wire.ToolResult, param: str) -> str | list[TextPart]:
    texts: list[str] = []
    for j, block in enumerate(result.content):
        if block.text is not None:
            texts.append(block.text)
        elif block.json_ is not msgspec.UNSET:
            texts.append(wire.encoder.encode(block.json_).decode())
        else:
            raise _not_accepted(f"{param}[{j}]", "tool results carry text or JSON only")
    if len(texts) == 1:
        return texts[0]
    return [TextPart(text=text) for text in texts] if texts else ""


def _data_uri(image: wire.Image, param: str) -> str:
    mime = _IMAGE_TYPES.get(image.format)
    if mime is None:
        raise InvalidRequest(
            f"{param}.format: {image.format!r} is not a Converse image format (png, jpeg, gif, webp)",
            param=f"{param}.format",
            code="invalid_image",
        )
    if image.source.data is None:
        raise _not_accepted(f"{param}.source.s3Location", "images must be inline bytes")
    return f"data:{mime};base64,{image.source.data}"


def _assistant_from_native(blocks: list[wire.ContentBlock], param: str) -> AssistantMessage:
    texts: list[str] = []
    calls: list[ToolCall] = []
    for j, block in enumerate(blocks):
        if block.text is not None:
            texts.append(block.text)
        elif block.tool_use is not None:
            use = block.tool_use
            arguments = "{}" if use.input is None else wire.encoder.encode(use.input).decode()
            calls.append(ToolCall(id=use.tool_use_id, function=FunctionCall(name=use.name, arguments=arguments)))
        elif block.reasoning_content is None and block.cache_point is None:
            raise _unsupported_block(block, f"{param}[{j}]")
    content: str | list[TextPart] | None
    if not texts:
        content = None
    elif len(texts) == 1:
        content = texts[0]
    else:
        content = [TextPart(text=text) for text in texts]
    return AssistantMessage(content=content, tool_calls=calls or None)


def _unsupported_block(block: wire.ContentBlock, where: str) -> InvalidRequest:
    for attribute, name in _BLOCK_MEMBERS:
        if getattr(block, attribute) is not None:
            return _not_accepted(f"{where}.{name}", "this block kind has no counterpart in modelbus's chat contract")
    return InvalidRequest(f"{where}: a content block needs exactly one member", param=where, code="invalid_field")


def _tools_from_native(config: wire.ToolConfig | None) -> tuple[list[ChatTool] | None, ToolChoice | None]:
    if config is None:
        return None, None
    tools: list[ChatTool] = []
    for i, tool in enumerate(config.tools):
        spec = tool.tool_spec
        if spec is not None:
            function = FunctionDefinition(
                name=spec.name, description=spec.description, parameters=spec.input_schema.json
            )
            tools.append(ChatTool(function=function))
        elif tool.cache_point is None:
            param = f"toolConfig.tools[{i}]"
            raise InvalidRequest(f"{param}: needs a toolSpec", param=param, code="invalid_field")
    choice: ToolChoice | None = None
    if config.tool_choice is not None:
        if config.tool_choice.auto is not None:
            choice = "auto"
        elif config.tool_choice.any_ is not None:
            choice = "required"
        elif config.tool_choice.tool is not None:
            choice = ToolChoiceFunction(function=ToolChoiceFunctionName(name=config.tool_choice.tool.name))
    return tools or None, choice
