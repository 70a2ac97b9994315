"""Attacks on the config service and its streams, on a real secure ``modelbus up``.

The attacker holds one identity's credentials: ``admin`` (the CLI's, so any
local process that can read them), ``config`` (a compromised config worker:
the identity that answers admin requests), ``config-state`` or any other.
Refusals by the broker are asserted through the NATS error callback; refusals
by the service through what it logged and what it did not write.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from shared import headers as H
from shared.admin import (
    SECRET_KIND,
    ApplyRequest,
    ApplyResult,
    AuditReport,
    DeleteRequest,
    ResourceList,
    ResourceQuery,
    RouterList,
)
from shared.envelopes import SecretList
from shared.subjects import (
    AUDIT_STREAM,
    AUDIT_SUBJECT,
    AUDIT_VERIFY,
    CONFIG_APPLY,
    CONFIG_DELETE,
    CONFIG_GET,
    CONFIG_LOG,
    CONFIG_RESOURCES,
    CONFIG_ROUTERS,
    CONFIG_STREAM,
    SECRETS_LIST,
)
from tests.conftest import run
from tests.integration.secure_stack import SecureStack, start_secure_stack, wait_until

pytestmark = pytest.mark.timeout(180)

TOKEN = "config-attacks-admin-token-4d1f"
SECRET_VALUE = "sk-config-attacks-9b7e1c"
READY_ADMIN = re.compile(r"modelbus-service-ready modelbus\.config config admin=(http://\S+)")
ENV = {
    "MODELBUS_ADMIN_HTTP": "127.0.0.1:0",
    "MODELBUS_ADMIN_TOKEN": TOKEN,
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    with start_secure_stack(Path(tmp_path_factory.mktemp("config-attacks")), env=ENV) as s:
        yield s


def alias_document(name: str) -> str:
    doc = {"apiVersion": "modelbus.dev/v1", "kind": "ModelAlias", "metadata": {"name": name},
           "spec": {"targets": [{"endpoint": "mock", "model": "mock-1"}]}}  # fmt: skip
    return json.dumps(doc)


async def admin_call(stack: SecureStack, subject: str, request: Any, reply_type: type[Any]) -> Any:
    nc = await stack.connect("admin")
    try:
        body = b"" if request is None else msgspec.json.encode(request)
        msg = await nc.request(subject, body, timeout=30)
    finally:
        await nc.close()
    assert msg.headers and msg.headers.get(H.STATUS) == "200", msg.data
    return msgspec.json.decode(msg.data, type=reply_type)


async def stream_last(stack: SecureStack, stream: str) -> int:
    nc = await stack.connect("config-state")
    try:
        return int((await nc.jetstream().stream_info(stream)).state.last_seq)
    finally:
        await nc.close()


async def as_role(stack: SecureStack, role: str, *publishes: tuple[str, bytes]) -> list[str]:
    """Publish as ``role``; the permission violations the broker reported."""
    errors: list[str] = []
    nc = await stack.connect(role, errors)
    try:
        for subject, body in publishes:
            await nc.publish(subject, body)
        await nc.flush(timeout=2)
        await wait_until(lambda: len(errors) >= len(publishes), timeout_s=2)
    finally:
        await nc.close()
    return errors


def violated(errors: list[str], subject: str) -> bool:
    """Whether the broker reported a permissions violation on ``subject`` (it writes it lower-case)."""
    return any("permissions violation" in e.lower() and subject.lower() in e.lower() for e in errors)


def admin_url(stack: SecureStack) -> str:
    found = READY_ADMIN.search("".join(stack.output))
    assert found, "".join(stack.output[-40:])
    return found.group(1)


# ---------------------------------------------------------------- reply subjects chosen by the attacker

BAD_REPLIES = [CONFIG_LOG, AUDIT_SUBJECT, f"$JS.API.STREAM.PURGE.{AUDIT_STREAM}"]


@pytest.mark.parametrize("reply", BAD_REPLIES)
def test_an_admin_request_with_a_reply_outside_the_admin_inbox_is_ignored_and_writes_nothing(
    stack: SecureStack, reply: str
) -> None:
    tag = BAD_REPLIES.index(reply)
    injected = ApplyRequest(documents=alias_document(f"injected-{tag}"), actor="cli:mallory")
    honest = ApplyRequest(documents=alias_document(f"honest-{tag}"), actor="cli:alice")

    async def attack() -> tuple[int, int, ApplyResult, int, int]:
        before = await stream_last(stack, CONFIG_STREAM), await stream_last(stack, AUDIT_STREAM)
        nc = await stack.connect("admin")
        try:
            await nc.publish(CONFIG_GET, b"", reply=reply)
            await nc.publish(CONFIG_APPLY, msgspec.json.encode(injected), reply=reply)
            # Handled after the injected apply, which (unguarded) would reach the commit lock first:
            # once this one is answered, the injected one has either committed or been refused.
            msg = await nc.request(CONFIG_APPLY, msgspec.json.encode(honest), timeout=30)
        finally:
            await nc.close()
        result = msgspec.json.decode(msg.data, type=ApplyResult)
        return (*before, result, await stream_last(stack, CONFIG_STREAM), await stream_last(stack, AUDIT_STREAM))

    config_before, audit_before, honest_result, config_after, audit_after = run(attack())
    assert honest_result.revision == config_before + 1
    assert (config_after, audit_after) == (config_before + 1, audit_before + 1)  # the honest apply only
    aliases = run(admin_call(stack, CONFIG_RESOURCES, ResourceQuery(kind="ModelAlias"), ResourceList))
    assert f"injected-{tag}" not in {r.name for r in aliases.items}
    assert "refused a request on modelbus.v1.config." in "".join(stack.output)


def test_the_admin_identity_cannot_publish_a_revision_and_routers_never_install_one(stack: SecureStack) -> None:
    forged = b'{"revision": 999, "routing": {}}'
    before = run(stream_last(stack, CONFIG_STREAM))
    errors = run(as_role(stack, "admin", (CONFIG_LOG, forged)))
    assert violated(errors, CONFIG_LOG), errors
    assert run(stream_last(stack, CONFIG_STREAM)) == before
    routers = run(admin_call(stack, CONFIG_ROUTERS, None, RouterList))
    assert routers.items and all(r.revision == before for r in routers.items)


# ---------------------------------------------------------------- the audit stream


@pytest.mark.parametrize("role", ["config", "config-state", "admin", "router-state", "secrets-state"])
def test_no_identity_may_delete_or_purge_the_audit_stream(stack: SecureStack, role: str) -> None:
    delete, purge = f"$JS.API.STREAM.DELETE.{AUDIT_STREAM}", f"$JS.API.STREAM.PURGE.{AUDIT_STREAM}"
    errors = run(as_role(stack, role, (delete, b""), (purge, b"")))
    assert violated(errors, delete) and violated(errors, purge), errors
    assert run(stream_last(stack, AUDIT_STREAM)) >= 1


@pytest.mark.parametrize("role", ["config", "admin", "client", "router", "router-state", "providers", "secrets"])
def test_no_identity_but_config_state_may_append_to_the_audit_stream(stack: SecureStack, role: str) -> None:
    before = run(stream_last(stack, AUDIT_STREAM))
    errors = run(as_role(stack, role, (AUDIT_SUBJECT, b'{"index": 1}')))
    assert violated(errors, AUDIT_SUBJECT), errors
    assert run(stream_last(stack, AUDIT_STREAM)) == before


def test_the_audit_chain_of_the_secure_stack_verifies(stack: SecureStack) -> None:
    report = run(admin_call(stack, AUDIT_VERIFY, None, AuditReport))
    assert report.ok, report
    assert report.entries >= 1 and report.revisions >= 1


# ---------------------------------------------------------------- secrets through the config service


def test_a_secret_is_deleted_through_the_config_service_and_the_deletion_is_audited(stack: SecureStack) -> None:
    secret = {"apiVersion": "modelbus.dev/v1", "kind": "Secret", "metadata": {"name": "attack-test"},
              "spec": {"stringData": {"value": SECRET_VALUE}}}  # fmt: skip
    applied = run(
        admin_call(stack, CONFIG_APPLY, ApplyRequest(documents=json.dumps(secret), actor="cli:alice"), ApplyResult)
    )
    assert applied.secrets == ["attack-test"]

    async def names() -> set[str]:
        listed = await admin_call(stack, SECRETS_LIST, None, SecretList)
        return {s.name for s in listed.items}

    assert "attack-test" in run(names())
    request = DeleteRequest(kind=SECRET_KIND, name="attack-test", actor="cli:alice")
    deleted = run(admin_call(stack, CONFIG_DELETE, request, ApplyResult))
    assert (deleted.changes, deleted.secrets) == ([], ["attack-test"])
    assert "attack-test" not in run(names())

    async def audit_tail() -> list[dict[str, Any]]:
        nc = await stack.connect("config-state")
        try:
            js = nc.jetstream()
            last = (await js.stream_info(AUDIT_STREAM)).state.last_seq
            return [json.loads((await js.get_msg(AUDIT_STREAM, seq=s)).data or b"") for s in (last - 1, last)]
        finally:
            await nc.close()

    set_entry, delete_entry = run(audit_tail())
    assert (set_entry["action"], delete_entry["action"]) == ("secret.set", "secret.delete")
    assert delete_entry["target"] == "secret attack-test" and delete_entry["actor"] == "cli:alice"
    assert SECRET_VALUE not in json.dumps([set_entry, delete_entry])
    assert run(admin_call(stack, AUDIT_VERIFY, None, AuditReport)).ok


# ---------------------------------------------------------------- the HTTP admin API in secure mode


def test_the_endpoint_probe_answers_in_secure_mode(stack: SecureStack) -> None:
    """The probe is a completion the config service asks for on its own inbox (``_INBOX_config``):
    the router must accept that reply subject, and providers must deliver to it."""
    reply = httpx.post(
        f"{admin_url(stack)}/api/v1/system/llm/providers/mock/test",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={"timeout_ms": 10_000},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["ok"] is True, body
    assert body["endpoint"] == "mock"
