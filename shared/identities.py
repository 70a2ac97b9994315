"""Broker-enforced identities: one NATS user per service role, plus client and admin.

``modelbus up`` generates random passwords on first run (``identities.json``,
mode 0600, in its data directory), renders the nats-server ``authorization``
block below, and starts each service as its role. Permissions are allow-lists,
so anything not listed is refused by the broker itself:

* only **providers** may publish to ``modelbus.v1.secrets.get``;
* **secrets** may only serve its subjects, answer, announce changes and use its
  own KV bucket;
* every identity receives replies only on its **own inbox prefix**
  (``_INBOX_<role>``), so nobody can subscribe to another's replies (or ``>``);
* the **router** reads configuration but cannot write it (publishing to the
  config log, and deleting or purging the config, audit or secrets streams,
  are denied);
* the **client** may only publish completion requests and read its own inbox;
* the **admin** identity (the CLI) may use the admin subjects.

A service connects as its role when ``NATS_USER``, ``NATS_PASSWORD`` and
``MODELBUS_INBOX_PREFIX`` are set (see :func:`connection_env`); that works the
same against an external nats-server configured with this block.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.keyfile import write_new_private_file
from shared.subjects import (
    AUDIT_STREAM,
    AUDIT_SUBJECT,
    AUDIT_VERIFY,
    BREAKERS_BUCKET,
    BUDGETS_BUCKET,
    CHAT_COMPLETIONS,
    CONFIG_EVENTS,
    CONFIG_LOG,
    CONFIG_STREAM,
    PROVIDER_PREFIX,
    ROUTER_REVISIONS,
    ROUTER_STATUS,
    RUNS_BUCKET,
    SECRETS_BUCKET,
    SECRETS_CHANGED,
    SECRETS_DELETE,
    SECRETS_DESCRIBE,
    SECRETS_GET,
    SECRETS_LIST,
    SECRETS_PUT,
)

ROLES = ("config", "router", "providers", "secrets", "client", "admin")
USER_ENV = "NATS_USER"
PASSWORD_ENV = "NATS_PASSWORD"
INBOX_ENV = "MODELBUS_INBOX_PREFIX"
IDENTITIES_FILE = "identities.json"
CLIENT_FILE = "client.json"


def inbox_prefix(role: str) -> str:
    """The only inbox subjects ``role`` may subscribe to."""
    return f"_INBOX_{role}"


def _kv(bucket: str) -> str:
    return f"KV_{bucket}"


def _js_admin_denied() -> list[str]:
    """Destructive JetStream API calls on the streams nobody but their owner may change."""
    out = []
    for stream in (CONFIG_STREAM, AUDIT_STREAM, _kv(SECRETS_BUCKET)):
        for op in ("CREATE", "UPDATE", "DELETE", "PURGE"):
            out.append(f"$JS.API.STREAM.{op}.{stream}")
        out.append(f"$JS.API.STREAM.MSG.DELETE.{stream}")
    return out


def _secret_reads_denied() -> list[str]:
    stream = _kv(SECRETS_BUCKET)
    return [
        f"$KV.{SECRETS_BUCKET}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
    ]


def permissions(role: str) -> dict[str, Any]:
    """The nats-server ``permissions`` object of one role."""
    own_inbox = f"{inbox_prefix(role)}.>"
    if role == "client":
        return {"publish": {"allow": [CHAT_COMPLETIONS]}, "subscribe": {"allow": [own_inbox]}}
    if role == "admin":
        return {
            "publish": {"allow": ["modelbus.v1.config.>", AUDIT_VERIFY, CHAT_COMPLETIONS]},
            "subscribe": {"allow": [own_inbox]},
        }
    if role == "providers":
        return {
            # Requesters' inboxes too: successful answers are delivered straight to
            # the client (see ProviderCall.deliver_to).
            "publish": {
                "allow": [
                    SECRETS_GET,
                    f"{inbox_prefix('router')}.>",
                    f"{inbox_prefix('client')}.>",
                    f"{inbox_prefix('admin')}.>",
                ]
            },
            "subscribe": {"allow": [f"{PROVIDER_PREFIX}.*.chat", SECRETS_CHANGED, own_inbox]},
        }
    if role == "secrets":
        stream = _kv(SECRETS_BUCKET)
        return {
            "publish": {
                "allow": [
                    SECRETS_CHANGED,
                    f"$KV.{SECRETS_BUCKET}.>",
                    "$JS.API.INFO",
                    f"$JS.API.STREAM.INFO.{stream}",
                    f"$JS.API.STREAM.CREATE.{stream}",
                    f"$JS.API.STREAM.MSG.GET.{stream}",
                    f"$JS.API.DIRECT.GET.{stream}",
                    f"$JS.API.DIRECT.GET.{stream}.>",
                    f"$JS.API.CONSUMER.CREATE.{stream}",
                    f"$JS.API.CONSUMER.CREATE.{stream}.>",
                    f"$JS.API.CONSUMER.DELETE.{stream}.>",
                    f"$JS.API.CONSUMER.INFO.{stream}.>",
                    f"$JS.FC.{stream}.>",
                ]
            },
            "subscribe": {
                "allow": [SECRETS_GET, SECRETS_PUT, SECRETS_DELETE, SECRETS_LIST, SECRETS_DESCRIBE, own_inbox]
            },
            "allow_responses": {"max": 1, "expires": "30s"},
        }
    if role == "router":
        return {
            "publish": {
                "allow": [
                    f"{PROVIDER_PREFIX}.*.chat",
                    ROUTER_REVISIONS,
                    f"{inbox_prefix('client')}.>",
                    f"{inbox_prefix('admin')}.>",
                    f"{inbox_prefix('config')}.>",
                    "$JS.API.>",
                    "$JS.FC.>",
                    *(f"$KV.{b}.>" for b in (RUNS_BUCKET, BREAKERS_BUCKET, BUDGETS_BUCKET)),
                ],
                "deny": [CONFIG_LOG, AUDIT_SUBJECT, *_js_admin_denied(), *_secret_reads_denied()],
            },
            "subscribe": {"allow": [CHAT_COMPLETIONS, ROUTER_STATUS, own_inbox]},
        }
    if role == "config":
        return {
            "publish": {
                "allow": [
                    CONFIG_LOG,
                    CONFIG_EVENTS,
                    AUDIT_SUBJECT,
                    ROUTER_STATUS,
                    SECRETS_PUT,
                    SECRETS_DELETE,
                    SECRETS_DESCRIBE,
                    CHAT_COMPLETIONS,
                    "$JS.API.>",
                    "$JS.FC.>",
                    f"$KV.{RUNS_BUCKET}.>",
                ],
                "deny": _secret_reads_denied(),
            },
            "subscribe": {"allow": ["modelbus.v1.config.>", AUDIT_VERIFY, ROUTER_REVISIONS, own_inbox]},
            "allow_responses": {"max": 1, "expires": "60s"},
        }
    raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")


def render_authorization(passwords: Mapping[str, str]) -> str:
    """The nats-server ``authorization`` block for every role (JSON is valid NATS config)."""
    users = [{"user": role, "password": passwords[role], "permissions": permissions(role)} for role in ROLES]
    return "authorization " + json.dumps({"users": users}, indent=2) + "\n"


def load_or_create(data_dir: Path) -> dict[str, str]:
    """Role passwords from ``identities.json``, generated (0600) on first run."""
    path = data_dir / IDENTITIES_FILE
    if path.exists():
        stored = json.loads(path.read_text())
        if set(stored) >= set(ROLES):
            return {role: str(stored[role]) for role in ROLES}
        path.unlink()  # an older file without every role: regenerate
    passwords = {role: secrets.token_urlsafe(24) for role in ROLES}
    write_new_private_file(path, json.dumps(passwords, indent=2).encode())
    return passwords


def connection_env(role: str, passwords: Mapping[str, str]) -> dict[str, str]:
    """Environment that makes a modelbus process connect as ``role``."""
    return {USER_ENV: role, PASSWORD_ENV: passwords[role], INBOX_ENV: inbox_prefix(role)}


def write_client_file(data_dir: Path, nats_url: str, passwords: Mapping[str, str]) -> Path:
    """``client.json`` (0600): how any program connects as the client identity."""
    path = data_dir / CLIENT_FILE
    path.unlink(missing_ok=True)
    info = {"url": nats_url, "user": "client", "password": passwords["client"], "inbox_prefix": inbox_prefix("client")}
    return write_new_private_file(path, json.dumps(info, indent=2).encode())
