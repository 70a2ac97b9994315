"""Prices: each provider's token convention priced once per token, precedence, unknown, exact money."""

from __future__ import annotations

import random
from decimal import Decimal

from shared.chat import CompletionTokensDetails, PromptTokensDetails, Usage
from shared.formats import openai as openai_native
from shared.formats.anthropic import wire as anthropic_wire
from shared.formats.anthropic.upstream import map_usage as anthropic_usage
from shared.formats.bedrock import response as bedrock_response
from shared.formats.bedrock import wire as bedrock_wire
from shared.formats.gemini import upstream as gemini_upstream
from shared.formats.gemini import wire as gemini_wire
from shared.pricing import (
    LOOKUP_CACHE_SIZE,
    PriceTable,
    TokenKinds,
    cost_of,
    default_prices,
    format_money,
    price_from_rates,
    tokens_from_counts,
    tokens_from_usage,
)
from shared.routing import Price
from shared.usage import TokenCounts, parse_usage_header, usage_header

D = Decimal

# Rates per million tokens chosen so every kind has a different price: a token counted in the
# wrong kind, or twice, changes the cost.
RATES = price_from_rates(
    name="t",
    input=D("3"),
    output=D("15"),
    cache_read=D("0.3"),
    cache_write=D("3.75"),
    reasoning=D("20"),
    per_request=D("0.001"),
    endpoint="e",
    model="m",
)


def per_million(amount: str) -> Decimal:
    return D(amount) / 1_000_000


def test_openai_cached_tokens_are_part_of_the_prompt_and_charged_only_at_the_cache_rate() -> None:
    usage = Usage(
        prompt_tokens=1000,
        completion_tokens=300,
        total_tokens=1300,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=800),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=100),
    )
    kinds = tokens_from_usage(usage)
    assert kinds == TokenKinds(input=200, cache_read=800, output=200, reasoning=100)
    # 200*3 + 800*0.3 + 200*15 + 100*20 per million, plus 0.001 per request
    assert cost_of(RATES, kinds) == per_million("5840") + D("0.001")


def test_anthropic_input_excludes_both_cache_counts_and_each_is_charged_once() -> None:
    native = anthropic_wire.Usage(
        input_tokens=50, output_tokens=40, cache_read_input_tokens=1000, cache_creation_input_tokens=200
    )
    kinds = tokens_from_usage(anthropic_usage(native))
    assert kinds == TokenKinds(input=50, cache_read=1000, cache_write=200, output=40)
    assert sum(v for v in (kinds.input, kinds.cache_read, kinds.cache_write)) == 1250


def test_gemini_cached_content_is_inside_the_prompt_and_thoughts_are_outside_the_candidates() -> None:
    meta = gemini_wire.UsageMetadata(
        prompt_token_count=1000, candidates_token_count=100, cached_content_token_count=600, thoughts_token_count=250
    )
    kinds = tokens_from_usage(gemini_upstream._map_usage(meta))
    assert kinds == TokenKinds(input=400, cache_read=600, output=100, reasoning=250)


def test_bedrock_cache_reads_are_added_to_the_prompt_and_charged_at_the_cache_rate() -> None:
    native = bedrock_wire.TokenUsage(input_tokens=10, output_tokens=5, cache_read_input_tokens=90)
    kinds = tokens_from_usage(bedrock_response._map_usage(native))
    assert kinds == TokenKinds(input=10, cache_read=90, output=5)


def test_bedrock_cache_writes_are_charged_at_the_cache_write_rate() -> None:
    native = bedrock_wire.TokenUsage(input_tokens=10, output_tokens=5, cache_write_input_tokens=90)
    kinds = tokens_from_usage(bedrock_response._map_usage(native))
    assert kinds == TokenKinds(input=10, cache_write=90, output=5)


def test_deepseek_cache_hits_are_charged_at_the_cache_rate() -> None:
    body = (
        b'{"id":"x","object":"chat.completion","created":1,"model":"deepseek-chat","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":100,'
        b'"completion_tokens":5,"total_tokens":105,"prompt_cache_hit_tokens":80,"prompt_cache_miss_tokens":20}}'
    )
    usage = openai_native.completion_from_native(body).usage
    assert usage is not None
    assert tokens_from_usage(usage) == TokenKinds(input=20, cache_read=80, output=5)


def test_the_usage_header_carries_every_kind_to_the_same_split() -> None:
    usage = Usage(
        prompt_tokens=120,
        completion_tokens=30,
        total_tokens=150,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=70, cache_write_tokens=20),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=12),
    )
    counts = parse_usage_header(usage_header(usage))
    assert counts is not None
    assert tokens_from_counts(counts) == tokens_from_usage(usage)
    assert tokens_from_counts(counts) == TokenKinds(input=30, cache_read=70, cache_write=20, output=18, reasoning=12)


def test_a_missing_breakdown_charges_everything_at_the_input_and_output_rates() -> None:
    kinds = tokens_from_usage(Usage(prompt_tokens=100, completion_tokens=10, total_tokens=110))
    assert kinds == TokenKinds(input=100, output=10)
    assert cost_of(RATES, kinds) == per_million("450") + D("0.001")


def test_a_breakdown_larger_than_its_total_is_cut_so_no_kind_goes_negative() -> None:
    kinds = tokens_from_counts(
        TokenCounts(input_tokens=10, output_tokens=5, cache_read_tokens=8, cache_write_tokens=8, reasoning_tokens=9)
    )
    assert kinds == TokenKinds(input=0, cache_read=8, cache_write=2, output=0, reasoning=5)
    assert min(kinds.input, kinds.output, kinds.cache_read, kinds.cache_write, kinds.reasoning) >= 0
    assert kinds.input + kinds.cache_read + kinds.cache_write == 10 and kinds.output + kinds.reasoning == 5


def test_reasoning_is_charged_at_its_own_rate_and_defaults_to_output() -> None:
    kinds = TokenKinds(output=0, reasoning=1_000_000)
    assert cost_of(RATES, kinds) == D("20.001")
    defaulted = price_from_rates(name="d", input=D("1"), output=D("4"), model_pattern="x")
    assert defaulted.reasoning == D("4") and defaulted.cache_read == D("1") and defaulted.cache_write == D("1")


def test_no_price_is_unknown_never_zero() -> None:
    assert cost_of(None, TokenKinds(input=10)) is None
    assert format_money(None) == "unknown"
    assert PriceTable([]).lookup("e", "openai", "gpt-4o") is None


def test_costs_are_exact_decimals_that_add_up_where_floats_do_not() -> None:
    cheap = price_from_rates(name="c", input=D("0.1"), output=D("0.2"), model_pattern="*")
    one = cost_of(cheap, TokenKinds(input=1, output=1))
    assert one == D("3E-7")
    total = sum((one for _ in range(10)), D(0))
    assert total == D("0.000003")
    assert sum([3e-7] * 10) != 3e-6  # what floats would have made of it
    assert format(total, "f") == "0.0000030"
    huge = cost_of(cheap, TokenKinds(input=10**15, output=10**15 + 1))
    assert huge == D("300000000.0000002")


def _pattern(name: str, pattern: str, *, provider: str | None = None, origin: str = "config") -> Price:
    return price_from_rates(name=name, input=D(1), output=D(1), model_pattern=pattern, provider=provider, origin=origin)


def test_precedence_exact_then_longest_pattern_then_provider_then_config_before_shipped() -> None:
    exact = price_from_rates(name="exact", input=D(9), output=D(9), endpoint="ep", model="gpt-4o-mini")
    table = PriceTable(
        [
            _pattern("shipped-long", "gpt-4o-mini-really-long*", origin="default"),
            _pattern("short", "gpt-*"),
            _pattern("long", "gpt-4o-*"),
            _pattern("long-openai", "gpt-4o-*", provider="openai"),
            exact,
        ]
    )

    def name(endpoint: str, provider: str, model: str) -> str | None:
        found = table.lookup(endpoint, provider, model)
        return found.name if found else None

    assert name("ep", "openai", "gpt-4o-mini") == "exact"
    assert name("other", "openai", "gpt-4o-mini") == "long-openai"
    assert name("other", "azure", "gpt-4o-mini") == "long"
    assert name("other", "azure", "gpt-3.5") == "short"
    # a ModelPrice wins over a longer shipped pattern
    assert name("other", "azure", "gpt-4o-mini-really-long-name") == "long"
    assert name("other", "azure", "claude") is None
    assert name("other", "azure", "GPT-4o") is None  # case-sensitive


def test_the_lookup_memo_stays_bounded_and_gives_the_same_answers() -> None:
    table = PriceTable([_pattern("any", "m-*")])
    for i in range(LOOKUP_CACHE_SIZE + 10):
        assert table.lookup("e", "mock", f"m-{i}") is not None
    assert len(table._memo) <= LOOKUP_CACHE_SIZE
    assert table.lookup("e", "mock", "m-0") is not None and table.lookup("e", "mock", "x") is None


def test_the_shipped_table_prices_common_models_with_a_source_and_date() -> None:
    table = PriceTable(default_prices())
    for provider, model in [
        ("openai", "gpt-4o-mini"),
        ("openai", "gpt-4o-2024-08-06"),
        ("anthropic", "claude-sonnet-4-5-20250929"),
        ("bedrock", "us.anthropic.claude-sonnet-4-20250514-v1:0"),
        ("gemini", "gemini-2.5-flash"),
        ("deepseek", "deepseek-chat"),
    ]:
        price = table.lookup("ep", provider, model)
        assert price is not None, model
        assert price.source and price.source.startswith("https://") and price.as_of and price.origin == "default"
    mini = table.lookup("ep", "openai", "gpt-4o-mini")
    assert mini is not None and mini.name.endswith("/gpt-4o-mini") and mini.cache_read == D("0.075")
    # a shipped price is limited to its vendor: the same name elsewhere is unknown
    assert table.lookup("ep", "mock", "gpt-4o-mini") is None


def test_the_ledgers_integer_cost_text_is_exactly_cost_of() -> None:
    rng = random.Random(16)

    def rate() -> Decimal:
        return D(rng.randint(0, 10**6)).scaleb(-rng.randint(0, 12))

    for _ in range(500):
        price = price_from_rates(
            name="r",
            input=rate(),
            output=rate(),
            cache_read=rate(),
            cache_write=rate(),
            reasoning=rate(),
            per_request=rate(),
            model_pattern="*",
        )
        table = PriceTable([price])
        counts = TokenCounts(
            input_tokens=rng.randint(0, 10**7),
            output_tokens=rng.randint(0, 10**6),
            cache_read_tokens=rng.randint(0, 10**7),  # sometimes more than the prompt: cut like cost_of
            cache_write_tokens=rng.randint(0, 10**5),
            reasoning_tokens=rng.randint(0, 10**6),
        )
        text = table.cost_text(price, counts)
        assert "E" not in text and D(text) == cost_of(price, tokens_from_counts(counts))
    # a price the table did not hand out is priced all the same
    other = price_from_rates(name="o", input=D("0.5"), output=D("1"), model_pattern="*")
    assert D(PriceTable([]).cost_text(other, TokenCounts(input_tokens=2, output_tokens=1))) == D("0.000002")
