"""Reading configuration documents in any supported format.

``load_documents`` splits multi-document YAML or JSON; ``parse_documents``
converts each document from its format (:mod:`services.config.formats`) to
native resources and validates them (:mod:`services.config.resources`), and
``compile_config`` (:mod:`services.config.compile`) resolves references. Every
error names the document, the field path and the reason::

    doc 2 (ModelEndpoint openai-default): spec.base_url: not a URL

This is the admin path, not the hot path, so pydantic's thorough messages are
worth their cost here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from services.config.compile import compile_config, derive_locality
from services.config.formats import convert
from services.config.resources import API_VERSION, Resource, SecretValue, parse_native
from shared.errors import ConfigError
from shared.routing import RoutingConfig

__all__ = [
    "API_VERSION",
    "Parsed",
    "Resource",
    "SecretValue",
    "compile_config",
    "compile_text",
    "derive_locality",
    "load_documents",
    "parse_documents",
    "parse_resources",
]


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's C loader when PyYAML was built with it: ~10x faster than the pure-Python one."""


@dataclass
class Parsed:
    """Everything read from a set of documents."""

    resources: list[Resource] = field(default_factory=list)
    secrets: list[SecretValue] = field(default_factory=list)
    """Values for the secrets service; never stored in configuration."""
    notes: list[str] = field(default_factory=list)
    """Fields and sections accepted but not used."""


def load_documents(text: str, *, source: str = "<input>") -> list[dict[str, Any]]:
    """Split multi-document YAML (JSON is YAML too) into raw documents."""
    try:
        docs = [d for d in yaml.load_all(text, Loader=_LOADER) if d is not None]
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML or JSON: {exc}") from exc
    out: list[dict[str, Any]] = []
    for index, doc in enumerate(docs, start=1):
        if isinstance(doc, list):  # a JSON array of documents
            out.extend(doc)
        elif isinstance(doc, dict):
            out.append(doc)
        else:
            raise ConfigError(f"doc {index}: expected a mapping, got {type(doc).__name__}")
    return out


def parse_documents(docs: Iterable[Mapping[str, Any]]) -> Parsed:
    """Convert and validate documents of any format; all errors are reported together."""
    parsed = Parsed()
    errors: list[str] = []
    for index, raw in enumerate(docs, start=1):
        if not isinstance(raw, Mapping):
            errors.append(f"doc {index}: expected a mapping")
            continue
        try:
            converted = convert(index, raw)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        parsed.notes.extend(converted.notes)
        for native in converted.documents:
            try:
                item = parse_native(index, native, source=converted.source)
            except ValueError as exc:
                errors.append(str(exc))
                continue
            if isinstance(item, SecretValue):
                parsed.secrets.append(item)
            else:
                parsed.resources.append(item)
    if errors:
        raise ConfigError("; ".join(errors))
    return parsed


def parse_resources(docs: Iterable[Mapping[str, Any]]) -> list[Resource]:
    """The configuration resources of ``docs`` (secrets are set aside)."""
    return parse_documents(docs).resources


def compile_text(text: str, *, source: str = "<input>", revision: int = 0) -> RoutingConfig:
    """Parse, validate and compile a configuration file's text."""
    return compile_config(parse_resources(load_documents(text, source=source)), revision=revision)
