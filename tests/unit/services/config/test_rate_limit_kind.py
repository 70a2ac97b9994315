"""The RateLimit kind and the endpoint quota fields, from documents to the compiled config."""

from __future__ import annotations

import pytest

from services.config.documents import compile_text
from shared.errors import ConfigError
from shared.routing import RateLimit

ENDPOINT = """\
apiVersion: modelbus.dev/v1
kind: ModelEndpoint
metadata: {name: katan}
spec: {provider: mock, default_model: m, rpm: 60, tpm: 90000}
"""


def rate_limit(name: str, spec: str) -> str:
    return f"apiVersion: modelbus.dev/v1\nkind: RateLimit\nmetadata: {{name: {name}}}\nspec: {spec}\n"


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        compile_text(text)
    assert caught.value.http_status == 400
    return caught.value.message


def test_rate_limits_and_endpoint_quotas_compile_into_the_routing_config() -> None:
    config = compile_text(
        "---\n".join(
            [
                ENDPOINT,
                rate_limit("every-key", "{scope: key, rpm: 100}"),
                rate_limit("research", "{scope: namespace, match: research, rpm: 10, tpm: 20000}"),
            ]
        )
    )
    assert config.rate_limits == [
        RateLimit(name="every-key", scope="key", rpm=100),
        RateLimit(name="research", scope="namespace", match="research", rpm=10, tpm=20000),
    ]
    endpoint = config.endpoints["katan"]
    assert (endpoint.rpm, endpoint.tpm) == (60, 90000)


def test_a_rate_limit_without_rpm_or_tpm_is_refused_with_its_name() -> None:
    message = config_error("---\n".join([ENDPOINT, rate_limit("empty", "{scope: agent}")]))
    assert "RateLimit" in message and "empty" in message
    assert "no limit: give rpm, tpm or both" in message


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("{scope: team, rpm: 1}", "scope"),
        ("{scope: key, rpm: 0}", "rpm"),
        ("{scope: key, tpm: -5}", "tpm"),
        ("{scope: key, rpm: 1, burst: 3}", "burst"),
    ],
)
def test_a_bad_rate_limit_field_is_named(spec: str, field: str) -> None:
    message = config_error("---\n".join([ENDPOINT, rate_limit("bad", spec)]))
    assert "bad" in message and field in message


def test_a_namespace_match_with_a_slash_is_refused_as_never_matching() -> None:
    message = config_error("---\n".join([ENDPOINT, rate_limit("ns", "{scope: namespace, match: a/b, rpm: 1}")]))
    assert "RateLimit ns: spec.match" in message and "could never match" in message


def test_an_endpoint_quota_must_be_positive() -> None:
    message = config_error(ENDPOINT.replace("rpm: 60", "rpm: 0"))
    assert "rpm" in message
