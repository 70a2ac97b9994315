"""Make msgspec structs usable as payload types in FastStream's AsyncAPI documents.

FastStream 0.7.8 builds every payload schema through pydantic (``create_model``
over the handler's parameters, then ``model_json_schema``), even when the
broker decodes with ``MsgSpecSerializer``. Pydantic cannot describe a
:class:`msgspec.Struct`, so a handler annotated with a struct makes the whole
document fail with ``PydanticSchemaGenerationError`` (upstream issue
ag2ai/faststream#2101).

:func:`payload` wraps a struct in :data:`typing.Annotated` with pydantic's
public hooks: ``GetPydanticSchema`` (an opaque core schema, so pydantic never
looks inside the struct), ``WithJsonSchema`` (the JSON Schema msgspec itself
generates for the struct) and ``Field(title=...)`` (so the schema is listed
under the struct's name). The annotated type is still the struct, so msgspec
decodes it as usual.

The schema is inlined: pydantic rejects ``$ref`` values that point at
definitions it did not generate, so nested structs cannot stay references.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

import msgspec
from faststream import FastStream
from faststream.nats import NatsBroker
from faststream.specification import AsyncAPI
from pydantic import Field, GetPydanticSchema, WithJsonSchema
from pydantic_core import core_schema

__all__ = ["RAW_NATS_NOTE", "SPEC_SERVER_URL", "application", "json_schema", "package_version", "payload"]

SPEC_SERVER_URL = "nats://127.0.0.1:4222"
"""The server every document names; fixed, so a document never depends on ``NATS_URL``."""
RAW_NATS_NOTE = (
    "At runtime this subject is served by raw nats-py (shared.bus.RequestServer), not by "
    "FastStream, for latency; this declaration only documents it."
)
"""Sentence ending the description of every documentation-only subscriber."""


def json_schema(struct: type[msgspec.Struct], raw_fields: Mapping[str, type[Any]] | None = None) -> dict[str, Any]:
    """msgspec's JSON Schema of ``struct``, with every reference inlined.

    ``raw_fields`` documents :class:`msgspec.Raw` fields (which msgspec renders
    as ``{}``, any JSON) with the schema of the type their bytes hold.
    Descriptions (class docstrings) are unwrapped, and discriminators are reduced
    to the property name, as AsyncAPI's Schema Object expects.
    """
    (top,), components = msgspec.json.schema_components([struct])
    schema: dict[str, Any] = _inline(top, components, ())
    for name, held in (raw_fields or {}).items():
        if name not in schema.get("properties", {}):
            raise KeyError(f"{struct.__name__} has no field {name!r}")
        (held_top,), held_components = msgspec.json.schema_components([held])
        held_schema = _inline(held_top, held_components, ())
        note = f"This field holds {held.__name__} JSON, embedded byte for byte (msgspec.Raw)."
        held_schema["description"] = "\n\n".join(filter(None, (held_schema.get("description"), note)))
        schema["properties"][name] = held_schema
    return schema


def payload(struct: type[msgspec.Struct], **raw_fields: type[Any]) -> Any:
    """``struct``, annotated so that FastStream can put its schema in an AsyncAPI document."""
    schema = json_schema(struct, raw_fields)
    return Annotated[
        struct,
        GetPydanticSchema(lambda _source, _handler: core_schema.any_schema()),
        WithJsonSchema(schema),
        Field(title=struct.__name__),
    ]


def _unwrap(docstring: str) -> str:
    """A docstring as text: dedented, each paragraph on one line."""
    paragraphs = inspect.cleandoc(docstring).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def _inline(node: Any, components: Mapping[str, Any], seen: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_inline(item, components, seen) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            raise ValueError(f"recursive type {name} cannot be inlined")
        return _inline(components[name], components, (*seen, name))
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "description" and isinstance(value, str):
            out[key] = _unwrap(value)
        elif key == "discriminator" and isinstance(value, dict):
            out[key] = value["propertyName"]
        else:
            out[key] = _inline(value, components, seen)
    return out


def package_version() -> str:
    """The installed modelbus version, used as every document's ``info.version``."""
    try:
        return version("modelbus")
    except PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
        return "0.0.0"


def application(broker: NatsBroker, service: str, description: str) -> FastStream:
    """A never-started FastStream app whose ``schema`` is the service's AsyncAPI document."""
    return FastStream(
        broker,
        specification=AsyncAPI(
            title=f"modelbus-{service}",
            version=package_version(),
            description=description,
        ),
    )
