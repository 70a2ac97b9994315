"""The error tree: how upstream statuses map, and how errors survive the wire."""

from __future__ import annotations

import json
import re

import pytest

from shared.errors import (
    AuthenticationError,
    AuthFailed,
    BadUpstreamRequest,
    BadUpstreamResponse,
    ConfigError,
    DeadlineExceeded,
    InvalidRequest,
    ModelbusError,
    NoRouteAvailable,
    NotFound,
    PayloadTooLarge,
    PolicyDenied,
    ProviderError,
    RateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_from_status,
    error_from_wire,
)

# ---------------------------------------------------------------- error_from_status


@pytest.mark.parametrize(
    ("status", "cls", "wire_status", "retryable"),
    [
        (429, RateLimited, 429, True),
        (401, AuthFailed, 401, False),
        (403, AuthFailed, 403, False),
        (408, UpstreamTimeout, 504, True),
        (504, UpstreamTimeout, 504, True),
        (500, UpstreamUnavailable, 500, True),
        (502, UpstreamUnavailable, 502, True),
        (503, UpstreamUnavailable, 503, True),
        (400, BadUpstreamRequest, 400, False),
        (404, BadUpstreamRequest, 404, False),
        (422, BadUpstreamRequest, 422, False),
    ],
)
def test_upstream_status_maps_to_the_most_specific_error(
    status: int, cls: type[ProviderError], wire_status: int, retryable: bool
) -> None:
    err = error_from_status(status, "upstream said no", provider="openai", model="gpt-x")
    assert type(err) is cls
    assert err.http_status == wire_status
    assert err.retryable is retryable
    assert err.provider == "openai"
    assert err.model == "gpt-x"
    assert err.message == "upstream said no"


def test_rate_limit_keeps_the_upstream_retry_after_hint() -> None:
    assert error_from_status(429, "slow down", retry_after=12.5).retry_after == 12.5


def test_a_non_error_upstream_status_is_a_bad_response_naming_the_status() -> None:
    err = error_from_status(302, "redirected")
    assert isinstance(err, BadUpstreamResponse)
    assert not err.retryable
    assert "302" in err.message


# ---------------------------------------------------------------- wire round trip


def over_the_wire(err: ModelbusError) -> ModelbusError:
    """What the receiving side rebuilds: status header, JSON body, Retry-After header."""
    return error_from_wire(err.http_status, err.to_json(), retry_after=err.retry_after)


ROUND_TRIPS = [
    pytest.param(RateLimited("slow", code="rate_limited", param="model", retry_after=2.5), id="RateLimited"),
    pytest.param(UpstreamTimeout("late", code="upstream_timeout", param="p"), id="UpstreamTimeout"),
    pytest.param(UpstreamUnavailable("down", status=503, param="p"), id="UpstreamUnavailable-503"),
    pytest.param(BadUpstreamResponse("junk", param="p"), id="BadUpstreamResponse"),
    pytest.param(InvalidRequest("bad", code="invalid_field", param="temperature"), id="InvalidRequest"),
    pytest.param(PayloadTooLarge("big", param="body"), id="PayloadTooLarge"),
    pytest.param(AuthenticationError("who?", code="bad_key"), id="AuthenticationError"),
    pytest.param(PolicyDenied("no", param="model"), id="PolicyDenied"),
    pytest.param(NotFound("nope", param="model"), id="NotFound"),
    pytest.param(DeadlineExceeded("too slow", retry_after=1.0), id="DeadlineExceeded"),
    pytest.param(ModelbusError("boom", code="internal"), id="ModelbusError"),
    pytest.param(UpstreamUnavailable("bad gateway", status=502, retry_after=3.0), id="UpstreamUnavailable-502"),
    pytest.param(UpstreamUnavailable("ise", status=500), id="UpstreamUnavailable-500"),
    pytest.param(AuthFailed("key rejected", status=401), id="AuthFailed-401"),
    pytest.param(AuthFailed("forbidden", status=403), id="AuthFailed-403"),
    pytest.param(BadUpstreamRequest("bad", status=400, param="tools"), id="BadUpstreamRequest-400"),
    pytest.param(BadUpstreamRequest("no model", status=404), id="BadUpstreamRequest-404"),
    pytest.param(BadUpstreamRequest("schema", status=422), id="BadUpstreamRequest-422"),
    pytest.param(ConfigError("doc 1: bad"), id="ConfigError"),
    pytest.param(NoRouteAvailable("all down", retry_after=5.0), id="NoRouteAvailable"),
]


@pytest.mark.parametrize("err", ROUND_TRIPS)
def test_an_error_sent_over_the_wire_comes_back_as_the_same_error(err: ModelbusError) -> None:
    back = over_the_wire(err)
    assert type(back) is type(err)
    assert back.http_status == err.http_status
    assert back.code == err.code
    assert back.param == err.param
    assert back.retryable == err.retryable
    assert back.retry_after == err.retry_after
    assert back.message == err.message


@pytest.mark.parametrize("err", [p.values[0] for p in ROUND_TRIPS], ids=[p.id for p in ROUND_TRIPS])
def test_an_error_sent_over_the_wire_keeps_status_and_retryability(err: ModelbusError) -> None:
    """What the router decides on survives even where the class does not."""
    back = over_the_wire(err)
    assert isinstance(back, ModelbusError)
    assert back.http_status == err.http_status
    assert back.retryable == err.retryable
    assert back.retry_after == err.retry_after


def test_the_wire_body_is_the_openai_error_shape_plus_retryable() -> None:
    err = RateLimited("slow down", param="model")
    assert json.loads(err.to_json()) == {
        "error": {
            "message": "slow down",
            "type": "rate_limit_error",
            "code": "rate_limited",
            "param": "model",
            "retryable": True,
        }
    }


@pytest.mark.parametrize("status", [400, 404, 413, 422, 429, 500, 502, 503, 504])
@pytest.mark.parametrize(
    "body",
    [b"", b"<html>Bad Gateway</html>", b'{"error": "flat string"}', b"null", b'{"ok": true}'],
)
def test_an_unreadable_error_body_still_yields_an_error_of_that_status(status: int, body: bytes) -> None:
    err = error_from_wire(status, body, retry_after=4.0)
    assert isinstance(err, ModelbusError)
    assert err.http_status == status
    assert err.retryable is (status == 429 or status >= 500)
    assert err.retry_after == 4.0
    assert str(status) in err.message


def _all_subclasses(cls: type) -> set[type]:
    out: set[type] = set()
    sub: type
    for sub in cls.__subclasses__():
        out |= {sub} | _all_subclasses(sub)
    return out


def _drawn_parents() -> dict[str, str | None]:
    """Each class drawn in the tree of shared/errors.py's docstring, with the class drawn above it."""
    import shared.errors as errors_module

    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []  # (column, name) of the rows above, outermost first
    for line in (errors_module.__doc__ or "").splitlines():
        row = re.match(r"^(\s*(?:[│ ]   )*(?:[├└]── )?)([A-Z]\w+)", line)
        if row is None or not (row.group(1).strip() or row.group(2) == "ModelbusError"):
            continue
        column, name = len(row.group(1)), row.group(2)
        while stack and stack[-1][0] >= column:
            stack.pop()
        parents[name] = stack[-1][1] if stack else None
        stack.append((column, name))
    return parents


def test_every_error_class_in_the_code_is_drawn_in_the_tree_of_shared_errors_under_its_parent() -> None:
    import importlib
    import pkgutil

    import services
    import shared

    for package in (shared, services):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)
    drawn = _drawn_parents()
    assert drawn["ModelbusError"] is None
    classes = {cls for cls in _all_subclasses(ModelbusError) if not cls.__module__.startswith("tests")}
    assert len(classes) >= 25
    missing = sorted(cls.__name__ for cls in classes if cls.__name__ not in drawn)
    assert not missing, f"error classes missing from the drawing in shared/errors.py: {missing}"
    for cls in classes:
        assert drawn[cls.__name__] == cls.__mro__[1].__name__, f"{cls.__name__} is drawn under the wrong parent"
