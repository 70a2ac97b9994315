"""What a request cost: prices per token kind, the shipped default table, and the arithmetic.

Token kinds. A price has one rate per kind, per million tokens, and every token of
an answer is counted in exactly one kind (:class:`TokenKinds`):

* ``input``: prompt tokens neither read from nor written to the provider's cache;
* ``cache_read``: prompt tokens read from the cache;
* ``cache_write``: prompt tokens written to the cache;
* ``output``: completion tokens other than reasoning;
* ``reasoning``: completion tokens spent on hidden reasoning.

Providers do not count alike. OpenAI's ``prompt_tokens`` *includes* its
``prompt_tokens_details.cached_tokens`` (and ``completion_tokens`` includes
``completion_tokens_details.reasoning_tokens``); Anthropic's ``input_tokens``
*excludes* both ``cache_read_input_tokens`` and ``cache_creation_input_tokens``;
Gemini's ``promptTokenCount`` includes ``cachedContentTokenCount``. The provider
adapters already bring all of them to OpenAI's convention in
:class:`shared.chat.Usage` (and ``Modelbus-Usage``, :class:`shared.usage.TokenCounts`):
prompt tokens include cache reads and cache writes, completion tokens include
reasoning. :func:`tokens_from_usage` and :func:`tokens_from_counts` take the parts
out again, so a cached token is charged at the cache rate only, never also at
the input rate, and a reasoning token at the reasoning rate only.

What is lost when a field is absent: a provider that does not report cached
tokens has them charged at the ``input`` rate (an over-count, never an
under-count, for every vendor that discounts cache reads); one that does not
report reasoning tokens has them charged at the ``output`` rate, which is what
every vendor in the shipped table bills anyway. A breakdown larger than its total
(a provider bug) is cut to the total, so no kind is ever negative.

Money. Rates and costs are :class:`decimal.Decimal`, computed in a private
context of 50 digits: vendors publish rates like ``$0.075`` or ``$0.0028`` per
million tokens, which binary floats cannot hold, and a ledger's totals must add
up exactly to its records. A cost is exact (``tokens * rate / 10**6`` needs no
rounding); round only for display. The usage ledger's :meth:`PriceTable.cost_text`
gets the same number in integers (each price's rates scaled to whole numbers of one
unit once per table), as plain decimal text. A model without a price costs ``None``
(unknown), never 0.

Precedence (:class:`PriceTable`), first match wins:

1. a ModelPrice for that ``endpoint`` and ``model``;
2. ModelPrices with a ``model_pattern`` that matches (and whose ``provider``, if
   set, is the endpoint's), the longest pattern first; at equal length one with
   a ``provider`` before one without; then by name;
3. the shipped table (:data:`DEFAULT_PRICES_RESOURCE`), in the same order, unless
   ``RoutingDefaults.default_prices`` is off.

Patterns are :func:`fnmatch.fnmatchcase` globs: ``*`` any run of characters,
``?`` one character, ``[seq]`` / ``[!seq]`` a character class; case-sensitive,
matched against the whole model name.
"""

from __future__ import annotations

import decimal
import functools
import importlib.resources
import re
from collections.abc import Iterable
from decimal import Decimal
from fnmatch import translate
from typing import Any

import msgspec
from msgspec import Struct

from shared.chat import Usage
from shared.routing import Price
from shared.usage import TokenCounts

PER_MILLION = 1_000_000
DEFAULT_PRICES_RESOURCE = "data/prices.json"
"""The shipped table, inside the ``shared`` package."""
LOOKUP_CACHE_SIZE = 4096
"""Pattern lookups remembered per table: model names come from requests (``endpoint/anything``),
so the memo is bounded and starts over when full rather than growing with what clients send."""

_MONEY = decimal.Context(prec=50, rounding=decimal.ROUND_HALF_EVEN)
_ZERO = Decimal(0)


class TokenKinds(Struct, kw_only=True, frozen=True):
    """The tokens of one answer, each in exactly one kind (the parts never overlap)."""

    input: int = 0
    """Prompt tokens neither read from nor written to the provider's cache."""
    output: int = 0
    """Completion tokens other than reasoning."""
    cache_read: int = 0
    """Prompt tokens read from the provider's cache."""
    cache_write: int = 0
    """Prompt tokens written to the provider's cache."""
    reasoning: int = 0
    """Completion tokens spent on reasoning."""


def _split(total: int, cache_read: int, cache_write: int, completion: int, reasoning: int) -> TokenKinds:
    total = max(total, 0)
    cache_read = min(max(cache_read, 0), total)
    cache_write = min(max(cache_write, 0), total - cache_read)
    completion = max(completion, 0)
    reasoning = min(max(reasoning, 0), completion)
    return TokenKinds(
        input=total - cache_read - cache_write,
        output=completion - reasoning,
        cache_read=cache_read,
        cache_write=cache_write,
        reasoning=reasoning,
    )


def tokens_from_usage(usage: Usage) -> TokenKinds:
    """The token kinds of an internal (OpenAI-convention) :class:`~shared.chat.Usage`.

    ``prompt_tokens`` minus ``prompt_tokens_details.cached_tokens`` and
    ``.cache_write_tokens`` is ``input``; ``completion_tokens`` minus
    ``completion_tokens_details.reasoning_tokens`` is ``output``. An absent detail
    counts as 0, so its tokens stay in ``input`` / ``output`` (see the module notes).
    """
    prompt = usage.prompt_tokens_details
    completion = usage.completion_tokens_details
    return _split(
        usage.prompt_tokens,
        usage.cached_prompt_tokens,
        (prompt.cache_write_tokens or 0) if prompt is not None else 0,
        usage.completion_tokens,
        (completion.reasoning_tokens or 0) if completion is not None else 0,
    )


def tokens_from_counts(counts: TokenCounts) -> TokenKinds:
    """The token kinds of ``Modelbus-Usage`` (:func:`shared.usage.parse_usage_header`), whose
    ``input_tokens`` include both cache counts and ``output_tokens`` include reasoning."""
    return _split(
        counts.input_tokens,
        counts.cache_read_tokens,
        counts.cache_write_tokens,
        counts.output_tokens,
        counts.reasoning_tokens,
    )


def cost_of(price: Price | None, tokens: TokenKinds) -> Decimal | None:
    """What ``tokens`` cost at ``price``, exactly, in ``price.currency``; ``None`` without a price.

    Each kind at its own rate, plus ``per_request`` once.
    """
    if price is None:
        return None
    m = _MONEY
    per_million = m.add(
        m.add(
            m.add(m.multiply(price.input, tokens.input), m.multiply(price.output, tokens.output)),
            m.add(m.multiply(price.cache_read, tokens.cache_read), m.multiply(price.cache_write, tokens.cache_write)),
        ),
        m.multiply(price.reasoning, tokens.reasoning),
    )
    return m.add(per_million.scaleb(-6, m), price.per_request)


# ------------------------------------------------------------------ the table


def precedence(price: Price) -> tuple[int, int, int, str]:
    """Sort key of :class:`PriceTable`: ModelPrices before shipped prices, the longest pattern
    first, one limited to a provider before one that is not, then by name (documented order)."""
    return (
        0 if price.origin == "config" else 1,
        -len(price.model_pattern or ""),
        0 if price.provider else 1,
        price.name,
    )


class PriceTable:
    """The prices of one configuration revision, for lookups on the hot path.

    Built once per revision and never changed, apart from a bounded memo of
    pattern lookups: an exact ``(endpoint, model)`` is one dict lookup; a pattern
    scan runs once per ``(provider, model)`` and is remembered.
    """

    __slots__ = ("_exact", "_memo", "_patterns", "_units", "prices")

    def __init__(self, prices: Iterable[Price]) -> None:
        self.prices: tuple[Price, ...] = tuple(prices)
        """Every price, in precedence order."""
        self._exact: dict[tuple[str, str], Price] = {}
        patterns: list[Price] = []
        for price in self.prices:
            if price.endpoint is not None and price.model is not None:
                self._exact.setdefault((price.endpoint, price.model), price)
            elif price.model_pattern is not None:
                patterns.append(price)
        patterns.sort(key=precedence)
        self.prices = tuple(sorted(self.prices, key=lambda p: (p.model_pattern is not None, *precedence(p))))
        self._patterns: tuple[tuple[re.Pattern[str], str | None, Price], ...] = tuple(
            (re.compile(translate(p.model_pattern or "")), p.provider, p) for p in patterns
        )
        self._memo: dict[tuple[str, str], Price | None] = {}
        self._units: dict[int, _Units] = {id(p): _Units.of(p) for p in self.prices}
        """Each price's rates as whole numbers, for :meth:`cost_text` (by identity: the table holds them)."""

    def cost_text(self, price: Price, counts: TokenCounts) -> str:
        """``cost_of(price, tokens_from_counts(counts))`` as exact plain decimal text (``0.0004275``),
        in integer arithmetic: what the usage ledger records for every answer, so it stays cheap."""
        units = self._units.get(id(price))
        if units is None or units.price is not price:  # a price this table did not hand out
            units = _Units.of(price)
        return units.cost_text(counts)

    def lookup(self, endpoint: str, provider: str, model: str) -> Price | None:
        """The price that applies to ``model`` at ``endpoint`` (of type ``provider``), or ``None``."""
        exact = self._exact.get((endpoint, model))
        if exact is not None:
            return exact
        key = (provider, model)
        try:
            return self._memo[key]
        except KeyError:
            pass
        found = None
        for pattern, only, price in self._patterns:
            if (only is None or only == provider) and pattern.match(model):
                found = price
                break
        if len(self._memo) >= LOOKUP_CACHE_SIZE:
            self._memo.clear()
        self._memo[key] = found
        return found


class _Units:
    """One price's rates as integers ``n`` with ``rate == n * 10**exponent`` (one exponent for all)."""

    __slots__ = ("cache_read", "cache_write", "exponent", "input", "output", "per_request", "price", "reasoning")

    def __init__(self, price: Price, exponent: int, n: list[int]) -> None:
        self.price = price
        self.exponent = exponent
        self.input, self.output, self.cache_read, self.cache_write, self.reasoning, per_request = n
        self.per_request = per_request * PER_MILLION  # in the per-token unit, 10**(exponent - 6)

    @classmethod
    def of(cls, price: Price) -> _Units:
        rates = (price.input, price.output, price.cache_read, price.cache_write, price.reasoning, price.per_request)
        exponent = min(0, *(int(r.as_tuple().exponent) for r in rates))
        return cls(price, exponent, [int(r.scaleb(-exponent, _MONEY)) for r in rates])

    def cost_text(self, counts: TokenCounts) -> str:
        k = tokens_from_counts(counts)
        total = (
            k.input * self.input
            + k.output * self.output
            + k.cache_read * self.cache_read
            + k.cache_write * self.cache_write
            + k.reasoning * self.reasoning
            + self.per_request
        )
        places = 6 - self.exponent  # digits after the point: 10**(exponent - 6) per unit
        digits = str(total).rjust(places + 1, "0")
        return f"{digits[:-places]}.{digits[-places:]}"


# ------------------------------------------------------------------ the shipped table


class _DefaultModel(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    name: str
    patterns: list[str]
    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None
    per_request: Decimal = _ZERO
    note: str | None = None


class _DefaultVendor(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    provider: str
    source: str
    as_of: str
    models: list[_DefaultModel]
    read_via: list[str] = []
    note: str | None = None


class _DefaultTable(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    format: int
    currency: str
    unit: str
    vendors: dict[str, _DefaultVendor]
    rules: list[str] = []


def price_from_rates(
    *,
    name: str,
    input: Decimal,
    output: Decimal,
    cache_read: Decimal | None = None,
    cache_write: Decimal | None = None,
    reasoning: Decimal | None = None,
    per_request: Decimal = _ZERO,
    **target: Any,
) -> Price:
    """A complete :class:`~shared.routing.Price` with the documented fallbacks filled in:
    ``cache_read`` and ``cache_write`` default to ``input`` (a vendor without a cache discount
    bills those tokens as input), ``reasoning`` to ``output`` (every vendor in the shipped table
    bills reasoning as output)."""
    return Price(
        name=name,
        input=input,
        output=output,
        cache_read=input if cache_read is None else cache_read,
        cache_write=input if cache_write is None else cache_write,
        reasoning=output if reasoning is None else reasoning,
        per_request=per_request,
        **target,
    )


def parse_default_table(data: bytes) -> list[Price]:
    """The prices of a shipped-table document (one :class:`Price` per model pattern)."""
    table = msgspec.json.decode(data, type=_DefaultTable)
    prices: list[Price] = []
    for vendor_name, vendor in table.vendors.items():
        for model in vendor.models:
            for pattern in model.patterns:
                prices.append(
                    price_from_rates(
                        name=f"default:{vendor_name}/{model.name}",
                        input=model.input,
                        output=model.output,
                        cache_read=model.cache_read,
                        cache_write=model.cache_write,
                        reasoning=model.reasoning,
                        per_request=model.per_request,
                        currency=table.currency,
                        model_pattern=pattern,
                        provider=vendor.provider,
                        origin="default",
                        source=vendor.source,
                        as_of=vendor.as_of,
                    )
                )
    return prices


@functools.cache
def default_prices() -> tuple[Price, ...]:
    """The shipped table (``shared/data/prices.json``), read once."""
    data = importlib.resources.files("shared").joinpath(DEFAULT_PRICES_RESOURCE).read_bytes()
    return tuple(parse_default_table(data))


def format_money(amount: Decimal | None, currency: str = "USD", places: int = 6) -> str:
    """``1.234567 USD`` for display (rounded half-even to ``places``); ``unknown`` for ``None``."""
    if amount is None:
        return "unknown"
    return f"{amount.quantize(Decimal(1).scaleb(-places), context=_MONEY)} {currency}"
