"""The AsyncAPI documents: generated from the code, one per service, and committed up to date."""

from __future__ import annotations

import importlib
import json
from typing import Any

import pytest
import yaml

from scripts import gen_asyncapi
from services.providers.registry import ADAPTERS
from shared.routing import PROVIDER_TYPES
from shared.subjects import (
    AUDIT_VERIFY,
    CHAT_COMPLETIONS,
    CONFIG_APPLY,
    CONFIG_DELETE,
    CONFIG_EVENTS,
    CONFIG_GET,
    CONFIG_HISTORY,
    CONFIG_KEYS_CREATE,
    CONFIG_KEYS_DELETE,
    CONFIG_KEYS_LIST,
    CONFIG_QUEUE,
    CONFIG_RESOURCES,
    CONFIG_ROLLBACK,
    CONFIG_ROUTERS,
    CONFIG_WAIT,
    ROUTER_QUEUE,
    SECRETS_CHANGED,
    SECRETS_DELETE,
    SECRETS_DESCRIBE,
    SECRETS_GET,
    SECRETS_LIST,
    SECRETS_PUT,
    SECRETS_QUEUE,
    provider_outcome_subject,
    provider_queue,
    provider_subject,
)


def _doc(service: str) -> dict[str, Any]:
    return gen_asyncapi.document(service)


def _channels(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Channels by address (subject)."""
    return {channel["address"]: channel for channel in doc["channels"].values()}


def _payload(doc: dict[str, Any], channel: dict[str, Any]) -> dict[str, Any]:
    """The payload schema of a channel's single message, references followed."""
    (message_ref,) = channel["messages"].values()
    message = doc["components"]["messages"][message_ref["$ref"].rsplit("/", 1)[-1]]
    schema_ref = message["payload"]["$ref"]
    assert schema_ref.startswith("#/components/schemas/")
    schema: dict[str, Any] = doc["components"]["schemas"][schema_ref.rsplit("/", 1)[-1]]
    return schema


def _operations(doc: dict[str, Any], action: str) -> set[str]:
    """Addresses of the channels the service has an operation with ``action`` on."""
    by_key = {key: channel["address"] for key, channel in doc["channels"].items()}
    return {
        by_key[op["channel"]["$ref"].removeprefix("#/channels/")]
        for op in doc["operations"].values()
        if op["action"] == action
    }


def test_every_service_has_a_document_titled_after_it() -> None:
    for service in gen_asyncapi.SERVICES:
        doc = _doc(service)
        assert doc["asyncapi"] == "3.0.0"
        assert doc["info"]["title"] == f"modelbus-{service}"
        assert doc["info"]["description"]


def test_documents_do_not_depend_on_the_nats_url_of_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://somewhere-else:4222")
    for service in gen_asyncapi.SERVICES:
        importlib.reload(importlib.import_module(f"services.{service}.asyncapi"))  # a fresh broker
        hosts = {server["host"] for server in _doc(service)["servers"].values()}
        assert hosts == {"127.0.0.1:4222"}


def test_router_document_receives_chat_completions_in_the_router_queue_group() -> None:
    doc = _doc("router")
    channel = _channels(doc)[CHAT_COMPLETIONS]
    assert channel["bindings"]["nats"]["queue"] == ROUTER_QUEUE
    assert CHAT_COMPLETIONS in _operations(doc, "receive")
    assert "raw nats-py" in channel["description"]


def test_router_request_payload_is_the_chat_completion_request_schema() -> None:
    doc = _doc("router")
    schema = _payload(doc, _channels(doc)[CHAT_COMPLETIONS])
    assert schema["title"] == "ChatCompletionRequest"
    assert schema["required"] == ["messages"]
    assert schema["additionalProperties"] is False
    messages = schema["properties"]["messages"]
    assert messages["minItems"] == 1
    assert messages["items"]["discriminator"] == "role"
    roles = {variant["properties"]["role"]["enum"][0] for variant in messages["items"]["anyOf"]}
    assert roles == {"system", "developer", "user", "assistant", "tool"}


def test_router_document_sends_provider_calls_to_every_provider_subject() -> None:
    doc = _doc("router")
    channels = _channels(doc)
    subjects = {provider_subject(t) for t in ADAPTERS}
    assert subjects <= _operations(doc, "send")
    for subject in subjects:
        assert _payload(doc, channels[subject])["title"] == "ProviderCall"


def test_providers_document_receives_each_provider_type_in_its_queue_group() -> None:
    doc = _doc("providers")
    channels = _channels(doc)
    assert {provider_subject(t) for t in ADAPTERS} <= _operations(doc, "receive")
    for provider_type in ADAPTERS:
        channel = channels[provider_subject(provider_type)]
        assert channel["bindings"]["nats"]["queue"] == provider_queue(provider_type)
        assert "raw nats-py" in channel["description"]
        schema = _payload(doc, channel)
        assert schema["title"] == "ProviderCall"
        assert set(schema["required"]) == {"endpoint", "model", "request"}


def test_provider_call_documents_what_its_raw_fields_hold() -> None:
    doc = _doc("providers")
    schema = _payload(doc, _channels(doc)[provider_subject(next(iter(ADAPTERS)))])
    assert schema["properties"]["endpoint"]["title"] == "Endpoint"
    assert "auth_ref" in schema["properties"]["endpoint"]["properties"]
    assert schema["properties"]["request"]["title"] == "ChatCompletionRequest"
    assert "messages" in schema["properties"]["request"]["properties"]


def test_providers_document_sends_credential_requests_to_the_secrets_service() -> None:
    doc = _doc("providers")
    assert SECRETS_GET in _operations(doc, "send")
    schema = _payload(doc, _channels(doc)[SECRETS_GET])
    assert schema["title"] == "CredentialRequest"
    assert schema["required"] == ["ref"]


def test_config_document_answers_config_get_and_publishes_config_events() -> None:
    doc = _doc("config")
    channels = _channels(doc)
    assert CONFIG_GET in _operations(doc, "receive")
    assert channels[CONFIG_GET]["bindings"]["nats"]["queue"] == CONFIG_QUEUE
    assert CONFIG_EVENTS in _operations(doc, "send")
    schema = _payload(doc, channels[CONFIG_EVENTS])
    assert schema["title"] == "ConfigChanged"
    assert schema["properties"]["op"]["enum"] == ["delete", "replace", "upsert"]


def test_secrets_document_answers_secrets_get_in_the_secrets_queue_group() -> None:
    doc = _doc("secrets")
    channel = _channels(doc)[SECRETS_GET]
    assert SECRETS_GET in _operations(doc, "receive")
    assert channel["bindings"]["nats"]["queue"] == SECRETS_QUEUE


def test_documents_name_only_their_own_service_subjects() -> None:
    expected = {
        "config": {
            CONFIG_GET,
            CONFIG_EVENTS,
            CONFIG_APPLY,
            CONFIG_RESOURCES,
            CONFIG_DELETE,
            CONFIG_HISTORY,
            CONFIG_ROLLBACK,
            CONFIG_WAIT,
            CONFIG_ROUTERS,
            CONFIG_KEYS_CREATE,
            CONFIG_KEYS_LIST,
            CONFIG_KEYS_DELETE,
            AUDIT_VERIFY,
        },
        "router": {CHAT_COMPLETIONS}
        | {provider_subject(t) for t in PROVIDER_TYPES}
        | {provider_outcome_subject(t) for t in PROVIDER_TYPES},
        "providers": {provider_subject(t) for t in ADAPTERS}
        | {provider_outcome_subject(t) for t in ADAPTERS}
        | {SECRETS_GET},
        "secrets": {SECRETS_GET, SECRETS_PUT, SECRETS_DELETE, SECRETS_LIST, SECRETS_DESCRIBE, SECRETS_CHANGED},
    }
    for service, subjects in expected.items():
        assert set(_channels(_doc(service))) == subjects, service


def test_every_reference_in_a_document_resolves() -> None:
    for service in gen_asyncapi.SERVICES:
        doc = _doc(service)
        for ref in _refs(doc):
            node: Any = doc
            for part in ref.removeprefix("#/").split("/"):
                part = part.replace("%7B", "{").replace("%7D", "}").replace("~1", "/").replace("~0", "~")
                assert isinstance(node, dict) and part in node, f"{service}: dangling {ref}"
                node = node[part]


def test_committed_documents_are_up_to_date_with_the_code() -> None:
    for service in gen_asyncapi.SERVICES:
        path = gen_asyncapi.path_for(service)
        assert path.exists(), f"{path} is missing; run `python -m scripts.gen_asyncapi`"
        assert path.read_text(encoding="utf-8") == gen_asyncapi.render(service), (
            f"{path} is stale; run `python -m scripts.gen_asyncapi`"
        )


def test_committed_documents_say_what_faststream_docs_gen_says() -> None:
    # The script only reorders name-keyed maps; the content is FastStream's own.
    for service in gen_asyncapi.SERVICES:
        committed = yaml.safe_load(gen_asyncapi.path_for(service).read_text(encoding="utf-8"))
        faststream = json.loads(gen_asyncapi.app_for(service).schema.to_specification().to_json())
        assert committed == faststream, service


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []
