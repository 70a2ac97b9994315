"""The usage ledger's contract: the usage header, what clients see, callers and retention."""

from __future__ import annotations

import msgspec
import pytest

from shared.chat import CompletionTokensDetails, PromptTokensDetails, Usage, encoder
from shared.formats.anthropic import wire
from shared.formats.anthropic.upstream import map_usage
from shared.usage import (
    DEFAULT_MAX_AGE_S,
    DEFAULT_MAX_BYTES,
    InvalidRetention,
    UsageRecord,
    caller_of,
    decode_records,
    for_client,
    namespace_of,
    parse_usage_header,
    usage_header,
    usage_record_encoder,
    usage_retention,
)

CACHED = Usage(
    prompt_tokens=100,
    completion_tokens=40,
    total_tokens=140,
    prompt_tokens_details=PromptTokensDetails(cached_tokens=60, cache_write_tokens=30),
    completion_tokens_details=CompletionTokensDetails(reasoning_tokens=25),
)


def test_usage_without_cache_or_reasoning_keeps_the_two_number_header_older_routers_read() -> None:
    assert usage_header(Usage(prompt_tokens=7, completion_tokens=3, total_tokens=10)) == "7 3"
    assert usage_header(CACHED) == "100 40 60 30 25"
    only_cached = Usage(
        prompt_tokens=9,
        completion_tokens=1,
        total_tokens=10,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=4),
    )
    assert usage_header(only_cached) == "9 1 4"


def test_the_header_reads_two_to_five_numbers_and_refuses_anything_else() -> None:
    old = parse_usage_header("7 3")
    assert old is not None and (old.input_tokens, old.output_tokens, old.cache_read_tokens) == (7, 3, 0)
    new = parse_usage_header("100 40 60 30 25")
    assert new is not None and (new.cache_read_tokens, new.cache_write_tokens, new.reasoning_tokens) == (60, 30, 25)
    assert new.total == 140  # what budgets charge: the parts are inside input and output
    for bad in (None, "", "7", "1 2 3 4 5 6", "7 -3", "7 x", "7 3.0", "\u0667 3"):
        assert parse_usage_header(bad) is None, bad


def test_openai_shaped_clients_never_see_the_cache_write_count() -> None:
    shown = msgspec.json.decode(encoder.encode(for_client(CACHED)))
    assert shown["prompt_tokens_details"] == {"cached_tokens": 60}
    assert shown["completion_tokens_details"] == {"reasoning_tokens": 25}
    only_written = msgspec.structs.replace(CACHED, prompt_tokens_details=PromptTokensDetails(cache_write_tokens=5))
    assert "prompt_tokens_details" not in msgspec.json.decode(encoder.encode(for_client(only_written)))
    plain = Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)
    assert for_client(plain) is plain


def test_anthropic_cache_writes_stay_in_the_prompt_count_and_are_kept_apart() -> None:
    usage = map_usage(
        wire.Usage(input_tokens=10, output_tokens=5, cache_read_input_tokens=60, cache_creation_input_tokens=30)
    )
    assert usage.prompt_tokens == 100
    assert usage.prompt_tokens_details == PromptTokensDetails(cached_tokens=60, cache_write_tokens=30)
    assert usage_header(usage) == "100 5 60 30"


@pytest.mark.parametrize(
    ("reply", "caller"),
    [
        ("_INBOX_client.billing.abc.1", "client.billing"),
        ("_INBOX_client.default.x", "client.default"),
        ("_INBOX_gateway.abc.2", "gateway"),
        ("_INBOX_admin.q", "admin"),
        ("_INBOX_config.q", "config"),
        ("_INBOX.abc.1", None),
        ("_INBOX_client.", None),
        ("somewhere.else", None),
    ],
)
def test_the_caller_is_the_identity_its_reply_inbox_belongs_to(reply: str, caller: str | None) -> None:
    assert caller_of(reply) == caller


def test_the_namespace_is_the_agent_s_prefix() -> None:
    assert namespace_of("research/helper") == "research"
    assert namespace_of("helper") is None
    assert namespace_of(None) is None


def test_a_message_of_several_records_reads_as_each_of_them() -> None:
    records = [UsageRecord(request_id=f"r{i}", time_ms=i, router="a", seq=i, status=200) for i in (1, 2, 3)]
    data = b"\n".join(usage_record_encoder.encode(r) for r in records)
    assert decode_records(data) == records
    with pytest.raises(msgspec.MsgspecError):
        decode_records(b'{"request_id": "x"}')


def test_retention_is_bounded_by_default_and_refuses_unbounded_or_unreadable_settings() -> None:
    assert usage_retention({}) == (DEFAULT_MAX_AGE_S, DEFAULT_MAX_BYTES)
    assert usage_retention({"MODELBUS_USAGE_MAX_AGE": "7d", "MODELBUS_USAGE_MAX_BYTES": "2GiB"}) == (
        7 * 86400,
        2 * 1024**3,
    )
    assert usage_retention({"MODELBUS_USAGE_MAX_BYTES": "500MB"})[1] == 500 * 1000**2
    for env in (
        {"MODELBUS_USAGE_MAX_AGE": "0d"},
        {"MODELBUS_USAGE_MAX_AGE": "forever"},
        {"MODELBUS_USAGE_MAX_BYTES": "-1"},
        {"MODELBUS_USAGE_MAX_BYTES": "0"},
        {"MODELBUS_USAGE_MAX_BYTES": "10kb"},
    ):
        with pytest.raises(InvalidRetention, match="MODELBUS_USAGE_MAX"):
            usage_retention(env)
