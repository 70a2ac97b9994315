"""shared.admin: the kind names the admin commands accept."""

from __future__ import annotations

import pytest

from services.config.resources import CONFIG_KINDS
from shared.admin import KINDS, canonical_kind
from shared.errors import InvalidRequest


def test_every_configuration_kind_is_known_to_the_admin_commands() -> None:
    assert set(KINDS) == set(CONFIG_KINDS)
    for kind in CONFIG_KINDS:
        assert canonical_kind(kind.lower()) == kind


@pytest.mark.parametrize(
    ("name", "kind"),
    [("modelprice", "ModelPrice"), ("model-prices", "ModelPrice"), ("budget", "Budget"), ("rate-limit", "RateLimit")],
)
def test_the_governance_kinds_are_found_by_their_usual_names(name: str, kind: str) -> None:
    assert canonical_kind(name) == kind


def test_an_unknown_kind_names_the_ones_there_are() -> None:
    with pytest.raises(InvalidRequest, match="Budget"):
        canonical_kind("budgte")
