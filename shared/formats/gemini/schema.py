"""JSON Schema and Gemini's ``Schema`` (an OpenAPI 3.0 subset), both ways.

Gemini takes tool parameters and ``responseSchema`` in its own subset
(https://ai.google.dev/api/caching#Schema). Towards Gemini (:func:`schema_to_native`)
a JSON Schema keeps that subset: local ``$ref`` inlined (recursive ones are
rejected), ``oneOf`` becomes ``anyOf``, a type list becomes ``nullable`` (plus
``anyOf`` for several types), enum values become strings, ``const`` a one-value
enum, string formats other than ``enum``/``date-time`` and the numeric ones are
dropped, and every other key (``additionalProperties``, ``$schema``, ...) is dropped.

From Gemini (:func:`schema_from_native`, for a client speaking Gemini's format)
a ``Schema`` becomes JSON Schema: type names lower-cased (``OBJECT`` → ``object``),
``nullable: true`` adds ``"null"`` to the type, ``example`` becomes ``examples``,
``propertyOrdering`` is dropped (JSON Schema has no order), and counts sent as
strings (proto ``int64``: ``"minItems": "1"``) become integers.
"""

from __future__ import annotations

from typing import Any

import msgspec

from shared.errors import InvalidRequest

_SCHEMA_KEYS = frozenset(
    "type format title description nullable enum items minItems maxItems properties required minProperties "
    "maxProperties minLength maxLength pattern example anyOf propertyOrdering default minimum maximum".split()
)
_SCHEMA_FORMATS = frozenset({"enum", "date-time", "float", "double", "int32", "int64"})
_COUNTS = frozenset("minItems maxItems minProperties maxProperties minLength maxLength".split())


def schema_to_native(schema: dict[str, Any], param: str) -> dict[str, Any]:
    """A JSON Schema as the subset Gemini accepts; a ``$ref`` it cannot inline is a 400 naming ``param``."""
    defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    try:
        cleaned: dict[str, Any] = _clean(schema, defs)
    except ValueError as exc:
        raise InvalidRequest(f"{param}: {exc}", param=param) from None
    return cleaned


def _clean(schema: Any, defs: dict[str, Any], seen: frozenset[str] = frozenset()) -> Any:
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if not ref.startswith(("#/$defs/", "#/definitions/")) or name not in defs:
            raise ValueError(f"cannot resolve $ref {ref!r}")
        if name in seen:
            raise ValueError(f"recursive $ref {ref!r} is not supported by Gemini")
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return _clean({**defs[name], **rest}, defs, seen | {name})
    out: dict[str, Any] = {}
    for key, value in schema.items():
        key = "anyOf" if key == "oneOf" else key
        if key not in _SCHEMA_KEYS:
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {prop: _clean(sub, defs, seen) for prop, sub in value.items()}
        elif key == "items":
            out[key] = _clean(value, defs, seen)
        elif key == "anyOf" and isinstance(value, list):
            out[key] = [_clean(sub, defs, seen) for sub in value]
        elif key == "type" and isinstance(value, list):
            kinds = [kind for kind in value if kind != "null"]
            if len(kinds) < len(value):
                out["nullable"] = True
            if len(kinds) == 1:
                out["type"] = kinds[0]
            elif kinds:
                out["anyOf"] = [{"type": kind} for kind in kinds]
        elif key == "enum" and isinstance(value, list):
            out[key] = [_enum_value(v) for v in value if v is not None]
        elif key == "format" and value not in _SCHEMA_FORMATS:
            continue
        else:
            out[key] = value
    if "const" in schema and "enum" not in out:
        out["enum"] = [_enum_value(schema["const"])]
    return out


def _enum_value(value: Any) -> str:
    """Gemini enums are strings only."""
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


def schema_from_native(schema: dict[str, Any]) -> dict[str, Any]:
    """A Gemini ``Schema`` as JSON Schema."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            kind = value.lower()
            if kind != "type_unspecified":
                out["type"] = kind
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: _sub(sub) for name, sub in value.items()}
        elif key == "items":
            out[key] = _sub(value)
        elif key == "anyOf" and isinstance(value, list):
            out[key] = [_sub(sub) for sub in value]
        elif key == "example":
            out["examples"] = [value]
        elif key in _COUNTS and isinstance(value, str) and value.isdigit():
            out[key] = int(value)
        elif key not in ("nullable", "propertyOrdering"):
            out[key] = value
    if schema.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def _sub(value: Any) -> Any:
    return schema_from_native(value) if isinstance(value, dict) else value
