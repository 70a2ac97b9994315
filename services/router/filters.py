"""Which targets of a route may serve a request: pure, per-request filters.

Nothing here does I/O; :func:`select_targets` runs once per request, before the
first attempt, and :func:`policy_allows` once per attempt.

Rules, in the order a target is checked:

1. **Locality.** ``Modelbus-Sensitivity: confidential`` keeps only targets whose
   endpoint has ``locality == "local"`` (the config service derives it: mock,
   ollama and loopback/private URLs are local; configs may override it).
2. **Policy.** Every applying policy that sets ``allowed_models`` must list the
   target, either by its upstream model name (``gpt-4o``, Orloj's meaning) or
   as ``endpoint/model`` (``research/openai/gpt-4o``) to allow a model on one
   endpoint only. An endpoint name alone does not allow its models: the list
   names *models*.
3. **Capabilities.** A target with *no* capability tags is assumed able to do
   everything, so configs without tags keep working. A tagged target needs:

   ============================  =====================================
   the request has               the target needs one of
   ============================  =====================================
   an image part                 ``vision``
   tools (``tool_choice`` not    ``tools`` or ``code`` (Aegis tags tool
   ``none``)                     use as ``code``)
   ============================  =====================================

4. **Context window.** A target with a known ``context_window`` is skipped when
   the estimated prompt tokens plus the output reservation exceed it; the
   next target is the context-window fallback. The output reservation is the
   request's ``max_completion_tokens``/``max_tokens``, capped by the target's
   ``max_output_tokens`` (the router never asks for more than that).

Blocked tools are checked before any target: a request offering a tool that an
applying policy blocks is denied whatever the targets.

When no target is left the error says why: a confidential request with no
local target and a request whose every target is outside the allowed models
are policy decisions (:class:`~shared.errors.PolicyDenied`, 403); anything else
is a request no target can serve (:class:`~shared.errors.InvalidRequest`, 400)
with the reason per target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.router.table import ResolvedTarget
from shared.chat import (
    AssistantMessage,
    ChatCompletionRequest,
    ImagePart,
    TextPart,
    encoder,
)
from shared.errors import InvalidRequest, PolicyDenied
from shared.routing import Policy

CHARS_PER_TOKEN = 4
"""Rough characters per token of English text and JSON for BPE tokenizers."""
TOKENS_PER_IMAGE = 85
"""OpenAI's flat cost of a low-detail image; high-detail images cost more, so this is a floor."""
TOKENS_PER_MESSAGE = 4
"""Per-message framing (role, separators), as in OpenAI's cookbook count."""
TOKENS_PER_REPLY = 3
"""Priming of the assistant's reply."""

TOOL_CAPABILITIES = frozenset({"tools", "code"})
"""Either tag lets a tagged target take a request with tools."""


@dataclass(frozen=True, slots=True)
class Needs:
    """What a request requires of a target."""

    vision: bool
    """The request carries at least one image."""
    tools: bool
    """The request offers tools the model may call (``tool_choice`` is not ``none``)."""
    prompt_tokens: int
    """Estimated prompt tokens (see :func:`needs_of`)."""
    output_tokens: int | None
    """The request's cap on generated tokens, if it set one."""


def needs_of(request: ChatCompletionRequest) -> Needs:
    """What ``request`` needs of a target, with a cheap prompt-token estimate.

    The estimate is deterministic and tokenizer-free, so every router agrees
    on it and it costs microseconds: ``ceil(chars / 4)`` over all text (message
    contents, assistant tool-call names and arguments, and the JSON of the tool
    schemas), plus 85 tokens per image, 4 per message and 3 for the reply. It
    is close for English prose and code, and low for CJK text; it decides only
    context-window skips and budget checks, where the real usage is charged
    afterwards.
    """
    chars = 0
    images = 0
    for message in request.messages:
        content = message.content
        if isinstance(content, str):
            chars += len(content)
        elif content is not None:
            for part in content:
                if type(part) is TextPart:
                    chars += len(part.text)
                elif type(part) is ImagePart:
                    images += 1
        if type(message) is AssistantMessage and message.tool_calls:
            for call in message.tool_calls:
                chars += len(call.function.name) + len(call.function.arguments)
    if request.tools:
        # Tools are sent (and billed) even with tool_choice "none".
        chars += len(encoder.encode(request.tools))
    prompt = -(-chars // CHARS_PER_TOKEN)
    prompt += images * TOKENS_PER_IMAGE + len(request.messages) * TOKENS_PER_MESSAGE + TOKENS_PER_REPLY
    return Needs(
        vision=images > 0,
        tools=bool(request.tools) and request.tool_choice != "none",
        prompt_tokens=prompt,
        output_tokens=request.output_token_limit,
    )


def tool_names(request: ChatCompletionRequest) -> tuple[str, ...]:
    """Names of the tools ``request`` offers, for :func:`select_targets`'s ``request_tools``."""
    return tuple(tool.function.name for tool in request.tools) if request.tools else ()


def describe(target: ResolvedTarget) -> str:
    """``endpoint/model``: how targets are named in errors."""
    return f"{target.endpoint.name}/{target.model}"


def _allowed_by(target: ResolvedTarget, policy: Policy) -> bool:
    allowed = policy.allowed_models
    return allowed is None or target.model in allowed or describe(target) in allowed


def policy_allows(target: ResolvedTarget, policies: Sequence[Policy]) -> Policy | None:
    """The first policy that forbids ``target``, or ``None`` when all allow it.

    For the attempt loop: ``allowed_models`` holds for every target tried,
    fallbacks included.
    """
    for policy in policies:
        if not _allowed_by(target, policy):
            return policy
    return None


def check_blocked_tools(policies: Sequence[Policy], request_tools: Sequence[str]) -> None:
    """Deny a request offering a tool an applying policy blocks (403, names tool and policy)."""
    if not request_tools:
        return
    for policy in policies:
        if not policy.blocked_tools:
            continue
        for name in request_tools:
            if name in policy.blocked_tools:
                raise PolicyDenied(
                    f"tool {name!r} is blocked by policy {policy.name!r}",
                    code="tool_blocked",
                    param="tools",
                )


def _capability_gap(target: ResolvedTarget, needs: Needs) -> str | None:
    caps = target.capabilities
    if not caps:
        return None
    if needs.vision and "vision" not in caps:
        return "lacks 'vision' (the request has images)"
    if needs.tools and caps.isdisjoint(TOOL_CAPABILITIES):
        return "lacks 'tools' or 'code' (the request offers tools)"
    return None


def _output_reservation(target: ResolvedTarget, needs: Needs) -> int:
    out = needs.output_tokens or 0
    if target.max_output_tokens is not None:
        out = min(out, target.max_output_tokens)
    return out


def _context_gap(target: ResolvedTarget, needs: Needs) -> str | None:
    window = target.context_window
    if window is None:
        return None
    out = _output_reservation(target, needs)
    if needs.prompt_tokens + out <= window:
        return None
    if out:
        return f"context window {window} < ~{needs.prompt_tokens} prompt + {out} output tokens"
    return f"context window {window} < ~{needs.prompt_tokens} prompt tokens"


def select_targets(
    targets: Sequence[ResolvedTarget],
    needs: Needs,
    *,
    confidential: bool,
    policies: Sequence[Policy],
    request_tools: Sequence[str],
    route_name: str | None = None,
) -> list[ResolvedTarget]:
    """The targets that may serve the request, in their original order.

    Raises :class:`PolicyDenied` (403) for a blocked tool, for a confidential
    request with no local target, and when every (local) target is outside
    some policy's ``allowed_models``; :class:`InvalidRequest` (400) naming each
    target's failed requirement when nothing else is left. ``route_name``
    (what the request asked for) only makes the messages clearer.
    """
    check_blocked_tools(policies, request_tools)
    kept: list[ResolvedTarget] = []
    remote: list[ResolvedTarget] = []
    denied: list[tuple[ResolvedTarget, Policy]] = []
    unfit: list[tuple[ResolvedTarget, str]] = []
    for target in targets:
        if confidential and target.endpoint.locality != "local":
            remote.append(target)
            continue
        policy = policy_allows(target, policies) if policies else None
        if policy is not None:
            denied.append((target, policy))
            continue
        gap = _capability_gap(target, needs) or _context_gap(target, needs)
        if gap is not None:
            unfit.append((target, gap))
            continue
        kept.append(target)
    if kept:
        return kept
    of = f" of {route_name!r}" if route_name else ""
    if confidential and remote and not denied and not unfit:
        names = ", ".join(describe(t) for t in remote)
        raise PolicyDenied(
            f"confidential request: no local target{of} exists (remote: {names}); "
            "Modelbus-Sensitivity: confidential only routes to local endpoints",
            code="no_local_target",
            param="Modelbus-Sensitivity",
        )
    if denied and not unfit:
        message = _denied_message(denied, of)
        if remote:
            message += f"; remote targets skipped for the confidential request: {', '.join(map(describe, remote))}"
        raise PolicyDenied(message, code="model_not_allowed", param="model")
    reasons = [f"{describe(t)} {gap}" for t, gap in unfit]
    reasons += [f"{describe(t)} is not allowed by policy {p.name!r}" for t, p in denied]
    reasons += [f"{describe(t)} is remote (the request is confidential)" for t in remote]
    if not reasons:
        raise InvalidRequest(f"no target{of} to route this request to", code="no_capable_target", param="model")
    raise InvalidRequest(
        f"no target{of} can serve this request: {'; '.join(reasons)}",
        code="no_capable_target",
        param="model",
    )


def _denied_message(denied: list[tuple[ResolvedTarget, Policy]], of: str) -> str:
    by_policy: dict[str, tuple[Policy, list[str]]] = {}
    for target, policy in denied:
        by_policy.setdefault(policy.name, (policy, []))[1].append(describe(target))
    parts = [
        f"policy {policy.name!r} allows only {', '.join(policy.allowed_models or []) or 'no models'}"
        f" (denied: {', '.join(names)})"
        for policy, names in by_policy.values()
    ]
    return f"no target{of} is allowed: {'; '.join(parts)}"
