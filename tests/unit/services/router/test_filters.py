"""Request filters: locality, allowed models, blocked tools, capabilities, context windows."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import pytest

from services.router.filters import Needs, needs_of, policy_allows, select_targets, tool_names
from services.router.table import ResolvedTarget
from shared.chat import ChatCompletionRequest, decode_request
from shared.errors import InvalidRequest, PolicyDenied
from shared.routing import Endpoint, Locality, Policy, routing_encoder
from shared.subjects import provider_subject

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


def target(
    endpoint: str,
    model: str,
    *,
    locality: Locality = "remote",
    caps: Sequence[str] = (),
    window: int | None = None,
    max_out: int | None = None,
) -> ResolvedTarget:
    ep = Endpoint(name=endpoint, provider="openai-compatible", base_url="https://x.test/v1", locality=locality)
    return ResolvedTarget(
        endpoint=ep,
        model=model,
        subject=provider_subject(ep.provider),
        endpoint_raw=msgspec.Raw(routing_encoder.encode(ep)),
        capabilities=frozenset(caps),
        context_window=window,
        max_output_tokens=max_out,
    )


def request(**body: object) -> ChatCompletionRequest:
    body.setdefault("messages", [{"role": "user", "content": "hello"}])
    return decode_request(msgspec.json.encode(body))


def needs(*, vision: bool = False, tools: bool = False, prompt: int = 10, output: int | None = None) -> Needs:
    return Needs(vision=vision, tools=tools, prompt_tokens=prompt, output_tokens=output)


def keys(targets: Sequence[ResolvedTarget]) -> list[str]:
    return [f"{t.endpoint.name}/{t.model}" for t in targets]


def select(
    targets: Sequence[ResolvedTarget],
    n: Needs | None = None,
    *,
    confidential: bool = False,
    policies: Sequence[Policy] = (),
    tools: Sequence[str] = (),
) -> list[ResolvedTarget]:
    return select_targets(
        targets,
        n or needs(),
        confidential=confidential,
        policies=policies,
        request_tools=tools,
        route_name="smart",
    )


OPENAI = target("openai", "gpt-4o")
CLAUDE = target("anthropic", "claude-x")
LOCAL = target("local", "phi3", locality="local")
MOCK = target("mock", "mock-1", locality="local")


# ---------------------------------------------------------------- needs


def test_a_plain_text_request_needs_neither_vision_nor_tools() -> None:
    n = needs_of(request())
    assert (n.vision, n.tools, n.output_tokens) == (False, False, None)


def test_an_image_in_a_user_message_needs_vision() -> None:
    n = needs_of(request(messages=[{"role": "user", "content": [{"type": "text", "text": "what is it?"}, IMAGE]}]))
    assert n.vision


def test_offered_tools_need_tools_unless_tool_choice_is_none() -> None:
    assert needs_of(request(tools=[WEATHER_TOOL])).tools
    assert needs_of(request(tools=[WEATHER_TOOL], tool_choice="auto")).tools
    assert not needs_of(request(tools=[WEATHER_TOOL], tool_choice="none")).tools
    assert not needs_of(request(tools=[])).tools


def test_output_tokens_come_from_either_cap_field() -> None:
    assert needs_of(request(max_tokens=50)).output_tokens == 50
    assert needs_of(request(max_completion_tokens=70, max_tokens=50)).output_tokens == 70


def test_prompt_estimate_is_a_quarter_of_the_characters_plus_framing() -> None:
    # 400 chars -> 100 tokens, + 4 for the message, + 3 for the reply.
    assert needs_of(request(messages=[{"role": "user", "content": "x" * 400}])).prompt_tokens == 107
    # Rounds up: 401 chars -> 101.
    assert needs_of(request(messages=[{"role": "user", "content": "x" * 401}])).prompt_tokens == 108


def test_prompt_estimate_counts_every_message_images_tool_calls_and_tool_schemas() -> None:
    base = needs_of(request(messages=[{"role": "user", "content": "x" * 40}])).prompt_tokens
    with_image = needs_of(
        request(messages=[{"role": "user", "content": [{"type": "text", "text": "x" * 40}, IMAGE]}])
    ).prompt_tokens
    assert with_image == base + 85
    with_tools = needs_of(request(messages=[{"role": "user", "content": "x" * 40}], tools=[WEATHER_TOOL]))
    assert with_tools.prompt_tokens > base + 20  # the schema's JSON is over 80 characters
    conversation = request(
        messages=[
            {"role": "system", "content": "s" * 40},
            {"role": "user", "content": "x" * 40},
            {
                "role": "assistant",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "a" * 39}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "t" * 40}]},
        ]
    )
    # 160 chars -> 40 tokens, 4 messages * 4, + 3.
    assert needs_of(conversation).prompt_tokens == 40 + 16 + 3


def test_tool_names_lists_the_offered_functions() -> None:
    assert tool_names(request(tools=[WEATHER_TOOL])) == ("get_weather",)
    assert tool_names(request()) == ()


# ---------------------------------------------------------------- order and capabilities


def test_targets_that_pass_keep_their_order() -> None:
    assert keys(select([CLAUDE, OPENAI, LOCAL])) == ["anthropic/claude-x", "openai/gpt-4o", "local/phi3"]


def test_a_target_without_capability_tags_is_assumed_capable() -> None:
    assert keys(select([OPENAI], needs(vision=True, tools=True))) == ["openai/gpt-4o"]


def test_an_image_request_skips_tagged_targets_without_vision() -> None:
    text_only = target("local", "phi3", caps=["code"])
    seeing = target("openai", "gpt-4o", caps=["vision", "tools"])
    assert keys(select([text_only, seeing], needs(vision=True))) == ["openai/gpt-4o"]


def test_a_tool_request_accepts_tools_or_code_tags() -> None:
    coder = target("a", "coder", caps=["code"])
    tooler = target("b", "tooler", caps=["tools"])
    reasoner = target("c", "thinker", caps=["reasoning"])
    assert keys(select([reasoner, coder, tooler], needs(tools=True))) == ["a/coder", "b/tooler"]


def test_a_request_no_target_can_serve_gets_a_400_naming_each_failed_requirement() -> None:
    blind = target("openai", "gpt-4o", caps=["tools"])
    small = target("local", "phi3", window=4096)
    with pytest.raises(InvalidRequest) as info:
        select([blind, small], needs(vision=True, prompt=5200))
    err = info.value
    assert err.http_status == 400
    assert err.code == "no_capable_target"
    assert "no target of 'smart' can serve this request" in err.message
    assert "openai/gpt-4o lacks 'vision'" in err.message
    assert "local/phi3 context window 4096 < ~5200 prompt tokens" in err.message


# ---------------------------------------------------------------- context window


def test_a_prompt_too_large_for_a_window_falls_back_to_a_larger_one() -> None:
    small = target("local", "phi3", window=4096)
    large = target("openai", "gpt-4o", window=128_000)
    unknown = target("anthropic", "claude-x")
    assert keys(select([small, large, unknown], needs(prompt=5000))) == ["openai/gpt-4o", "anthropic/claude-x"]
    assert keys(select([small, large], needs(prompt=4000))) == ["local/phi3", "openai/gpt-4o"]


def test_the_output_cap_counts_against_the_window_up_to_the_targets_max_output() -> None:
    small = target("local", "phi3", window=4096)
    capped = target("local", "phi3-capped", window=4096, max_out=96)
    assert keys(select([small, capped], needs(prompt=4000, output=200))) == ["local/phi3-capped"]
    with pytest.raises(InvalidRequest, match=r"context window 4096 < ~4000 prompt \+ 200 output tokens"):
        select([small], needs(prompt=4000, output=200))


# ---------------------------------------------------------------- sensitivity


def test_a_confidential_request_keeps_only_local_targets() -> None:
    assert keys(select([OPENAI, LOCAL, CLAUDE, MOCK], confidential=True)) == ["local/phi3", "mock/mock-1"]


def test_a_confidential_request_with_no_local_target_gets_a_403_saying_why() -> None:
    with pytest.raises(PolicyDenied) as info:
        select([OPENAI, CLAUDE], confidential=True)
    err = info.value
    assert err.http_status == 403
    assert err.code == "no_local_target"
    assert "no local target of 'smart' exists" in err.message
    assert "openai/gpt-4o" in err.message


def test_a_confidential_request_whose_local_targets_cannot_serve_it_gets_a_400() -> None:
    blind = target("local", "phi3", locality="local", caps=["code"])
    with pytest.raises(InvalidRequest) as info:
        select([OPENAI, blind], needs(vision=True), confidential=True)
    assert info.value.http_status == 400
    assert "local/phi3 lacks 'vision'" in info.value.message
    assert "openai/gpt-4o is remote (the request is confidential)" in info.value.message


# ---------------------------------------------------------------- policies


COST = Policy(name="research/cost-policy", allowed_models=["gpt-4o", "phi3"])


def test_allowed_models_drops_targets_whose_model_is_not_listed() -> None:
    assert keys(select([CLAUDE, OPENAI, LOCAL], policies=[COST])) == ["openai/gpt-4o", "local/phi3"]


def test_allowed_models_also_matches_endpoint_slash_model() -> None:
    only_local = Policy(name="p", allowed_models=["local/phi3"])
    other_phi = target("cloud", "phi3")
    assert keys(select([other_phi, LOCAL], policies=[only_local])) == ["local/phi3"]


def test_every_applying_policy_must_allow_the_target() -> None:
    narrower = Policy(name="narrow", allowed_models=["phi3"])
    assert keys(select([OPENAI, LOCAL], policies=[COST, narrower])) == ["local/phi3"]
    assert policy_allows(OPENAI, [COST, narrower]) is narrower
    assert policy_allows(LOCAL, [COST, narrower]) is None
    assert policy_allows(CLAUDE, [Policy(name="open")]) is None


def test_every_target_outside_allowed_models_gets_a_403_naming_policy_and_allowed_models() -> None:
    with pytest.raises(PolicyDenied) as info:
        select([CLAUDE, target("mistral", "large")], policies=[COST])
    err = info.value
    assert err.http_status == 403
    assert err.code == "model_not_allowed"
    assert "policy 'research/cost-policy' allows only gpt-4o, phi3" in err.message
    assert "anthropic/claude-x" in err.message


def test_a_blocked_tool_is_denied_before_any_target_is_considered() -> None:
    policy = Policy(name="no-shell", blocked_tools=["run_shell"])
    with pytest.raises(PolicyDenied) as info:
        select([OPENAI], needs(tools=True), policies=[policy], tools=["get_weather", "run_shell"])
    assert info.value.code == "tool_blocked"
    assert "tool 'run_shell' is blocked by policy 'no-shell'" in info.value.message
    assert keys(select([OPENAI], needs(tools=True), policies=[policy], tools=["get_weather"])) == ["openai/gpt-4o"]
