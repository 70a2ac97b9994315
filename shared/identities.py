"""Broker-enforced identities: who may publish and subscribe to what.

``modelbus up`` generates a random password per identity on first run
(``identities.json``, mode 0600, in its data directory), renders the
nats-server ``authorization`` block below with **bcrypt hashes only**, and
starts each service as its identities. Permissions are allow-lists, so
anything not listed is refused by the broker itself.

Two rules shape the table:

* **A reply subject is the requester's choice**, and nats-server checks no
  permission on it. An identity that answers requests therefore may publish to
  nothing but its requesters' inboxes and the subjects it calls itself.
  Services that also keep JetStream state (router, config, secrets) use a
  second identity for that, ``<role>-state``, which answers no request. A
  request with reply ``$JS.API.STREAM.PURGE...`` or ``$KV....`` is thus
  refused by the broker, and by the service (:class:`shared.bus.ReplyGuard`).
* **Every identity reads only its own inbox** (``_INBOX_<role>``; applications
  ``_INBOX_client.<name>``), so nobody can subscribe to another's replies.

The HTTP gateway (``gateway``) has one identity, not two: it answers no NATS
request, so no requester chooses a subject it publishes to. It is a requester
like an application (``llm.v1.chat.completions``, replies on ``_INBOX_gateway``,
which routers and providers may answer on), reads the config stream the way
``router-state`` does (for ``GET /v1/models``) and reads and watches the API-key
bucket (hashes only): never writes, deletes or purges it, no other KV, no secrets.
Only ``config-state`` writes the key bucket; no other identity may read it.
(The one message its client library answers by itself is a JetStream
flow-control request on its consumer's deliver subject: a random inbox of its
own, which nobody else can subscribe to.)

JetStream permissions are the exact API subjects of the streams and buckets
each state identity uses (:func:`_kv_rw`, :func:`_stream_reader`); no
identity may delete or purge the config, audit or secrets streams, and only
``config-state`` may append to the config log and the audit stream.
The usage ledger (``MODELBUS_USAGE``) is appended to by ``router-state`` alone,
read by ``admin`` alone, created and reconfigured by ``config-state`` alone
(which may neither read nor append to it), and deleted or purged by nobody; the
opt-in text records (``MODELBUS_USAGE_TEXT``) likewise, appended to by ``providers`` alone.
``admin`` reads the budgets bucket (``modelbus get budgets``) and may not write it. Only
``config-state`` and ``secrets-state`` may update streams (to migrate settings
and the replica count): each its own, and ``config-state`` the routers' two
buckets too, so that ``router-state`` may reconfigure nothing.

Applications each get an identity of their own (``modelbus create client
NAME``): user ``client-NAME``, inbox ``_INBOX_client.NAME``. The registry of
their bcrypt hashes is ``clients.json``; their passwords exist only in their
credentials files.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shared import js_permissions as jsp
from shared.keyfile import write_private_file
from shared.subjects import (
    AUDIT_STREAM,
    AUDIT_SUBJECT,
    AUDIT_VERIFY,
    BREAKERS_BUCKET,
    BUDGETS_BUCKET,
    CHAT_COMPLETIONS,
    CONFIG_APPLY,
    CONFIG_DELETE,
    CONFIG_EVENTS,
    CONFIG_GET,
    CONFIG_HISTORY,
    CONFIG_KEYS_CREATE,
    CONFIG_KEYS_DELETE,
    CONFIG_KEYS_LIST,
    CONFIG_KEYS_SUBJECTS,
    CONFIG_LOG,
    CONFIG_RESOURCES,
    CONFIG_ROLLBACK,
    CONFIG_ROUTERS,
    CONFIG_STREAM,
    CONFIG_WAIT,
    GATEWAY_KEYS_BUCKET,
    PROVIDER_PREFIX,
    RATE_LIMITS_BUCKET,
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
    USAGE_RECORDS,
    USAGE_STREAM,
    USAGE_TEXT,
    USAGE_TEXT_STREAM,
)

SERVICE_ROLES = ("config", "router", "providers", "secrets", "gateway")
"""Roles that run a modelbus service process."""
STATE_ROLES = {"config": "config-state", "router": "router-state", "secrets": "secrets-state"}
"""The second identity of each service that keeps JetStream state."""
ROLES = (
    "config",
    "config-state",
    "router",
    "router-state",
    "providers",
    "secrets",
    "secrets-state",
    "gateway",
    "client",
    "admin",
)
USER_ENV = "NATS_USER"
PASSWORD_ENV = "NATS_PASSWORD"
INBOX_ENV = "MODELBUS_INBOX_PREFIX"
STATE_USER_ENV = "MODELBUS_STATE_USER"
STATE_PASSWORD_ENV = "MODELBUS_STATE_PASSWORD"
STATE_INBOX_ENV = "MODELBUS_STATE_INBOX_PREFIX"
IDENTITIES_FILE = "identities.json"
CLIENT_FILE = "client.json"
CLIENTS_REGISTRY = "clients.json"
"""``{name: {"user", "hash", "inbox_prefix", "created_at"}}`` of the applications' identities."""
CLIENTS_DIR = "clients"
"""``clients/NAME.json``: each application's credentials file (0600)."""
DEFAULT_CLIENT = "default"
"""The application name of the shared ``client`` identity (the quick start's)."""
CLIENT_INBOX_ROOT = "_INBOX_client"
BCRYPT_COST = 8
"""Cost of the bcrypt hashes in the server configuration. The passwords are
192-bit random tokens, so the cost adds nothing against guessing; it is kept
low because nats-server pays it on every connect."""

_CLIENT_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")


def inbox_prefix(role: str) -> str:
    """The only inbox subjects ``role`` may subscribe to."""
    if role == "client":
        return client_inbox_prefix(DEFAULT_CLIENT)
    return f"_INBOX_{role}"


def client_inbox_prefix(name: str) -> str:
    """Inbox prefix of application ``name``: under ``_INBOX_client``, which routers and
    providers may answer on, but of which each application reads only its own part."""
    return f"{CLIENT_INBOX_ROOT}.{name}"


def client_user(name: str) -> str:
    """Broker user name of application ``name`` (``client`` for the default one)."""
    return "client" if name == DEFAULT_CLIENT else f"client-{name}"


def client_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name an application identity, or ``None``."""
    if name == DEFAULT_CLIENT:
        return f"{DEFAULT_CLIENT!r} is the built-in client identity; choose another name"
    if not _CLIENT_NAME_RE.fullmatch(name):
        return "client names are 1 to 32 characters: lower-case letters, digits and '-', not at either end"
    return None


REQUESTERS: dict[str, tuple[str, ...]] = {
    "router": (CLIENT_INBOX_ROOT, "_INBOX_admin", "_INBOX_config", "_INBOX_gateway"),
    "secrets": ("_INBOX_providers", "_INBOX_config", "_INBOX_admin"),
    "config": ("_INBOX_admin",),
    "providers": ("_INBOX_router",),
}
"""Inbox prefixes each serving role answers on: the identities allowed to ask it."""
DELIVERY_INBOXES: tuple[str, ...] = REQUESTERS["router"]
"""Where providers may deliver a completion straight to its requester (``ProviderCall.deliver_to``)."""


def requester_inboxes(role: str) -> tuple[str, ...]:
    """Reply-subject prefixes (ending in ``.``) that ``role`` may answer on."""
    return tuple(f"{p}." for p in REQUESTERS[role])


def _inboxes(prefixes: tuple[str, ...]) -> list[str]:
    return [f"{p}.>" for p in prefixes]


def permissions(role: str, *, client_name: str = DEFAULT_CLIENT) -> dict[str, Any]:
    """The nats-server ``permissions`` object of one role (``client_name`` for applications)."""
    own_inbox = f"{inbox_prefix(role)}.>"
    if role == "client":
        return {
            "publish": {"allow": [CHAT_COMPLETIONS]},
            "subscribe": {"allow": [f"{client_inbox_prefix(client_name)}.>"]},
        }
    if role == "gateway":
        # A requester (its own inbox only, so it cannot hear the routers' queue) that reads the
        # routing configuration like a router: never a provider, secrets or config admin subject.
        return {
            "publish": {
                "allow": [
                    CHAT_COMPLETIONS,
                    *jsp.stream_reader(CONFIG_STREAM),
                    *jsp.stream_reader(jsp.kv(GATEWAY_KEYS_BUCKET)),
                ]
            },
            "subscribe": {"allow": [own_inbox]},
        }
    if role == "admin":
        # The admin subjects one by one: never the config log or events, which
        # only config-state writes (a publish there would be a forged revision).
        return {
            "publish": {
                "allow": [
                    CONFIG_GET,
                    CONFIG_APPLY,
                    CONFIG_RESOURCES,
                    CONFIG_DELETE,
                    CONFIG_HISTORY,
                    CONFIG_ROLLBACK,
                    CONFIG_WAIT,
                    CONFIG_ROUTERS,
                    AUDIT_VERIFY,
                    CONFIG_KEYS_CREATE,
                    CONFIG_KEYS_LIST,
                    CONFIG_KEYS_DELETE,
                    SECRETS_LIST,
                    CHAT_COMPLETIONS,
                    *jsp.stream_reader(USAGE_STREAM),  # `modelbus usage`: read only, never append
                    *jsp.stream_reader(USAGE_TEXT_STREAM),  # `modelbus usage --text`: prompts, admin only
                    *jsp.stream_reader(jsp.kv(BUDGETS_BUCKET)),  # `modelbus get budgets`: read only, never write
                    *jsp.stream_reader(jsp.kv(RATE_LIMITS_BUCKET)),  # current counts: read only
                ]
            },
            "subscribe": {"allow": [own_inbox]},
        }
    if role == "providers":
        return {
            "publish": {
                "allow": [
                    SECRETS_GET,
                    USAGE_TEXT,  # opt-in text records: append only, never read
                    *_inboxes(REQUESTERS["providers"]),
                    *_inboxes(DELIVERY_INBOXES),
                ]
            },
            "subscribe": {
                "allow": [f"{PROVIDER_PREFIX}.*.chat", f"{PROVIDER_PREFIX}.*.outcome", SECRETS_CHANGED, own_inbox]
            },
        }
    if role == "router":
        return {
            "publish": {
                "allow": [f"{PROVIDER_PREFIX}.*.chat", f"{PROVIDER_PREFIX}.*.outcome", *_inboxes(REQUESTERS["router"])]
            },
            "subscribe": {"allow": [CHAT_COMPLETIONS, ROUTER_STATUS, own_inbox]},
        }
    if role == "router-state":
        return {
            "publish": {
                "allow": [
                    ROUTER_REVISIONS,
                    USAGE_RECORDS,  # append to the usage ledger (core publish, no ack); never read it
                    *jsp.stream_reader(CONFIG_STREAM),
                    *jsp.kv_rw(BREAKERS_BUCKET),
                    *jsp.kv_rw(BUDGETS_BUCKET),
                    *jsp.kv_rw(RATE_LIMITS_BUCKET),
                    *jsp.stream_reader(jsp.kv(RUNS_BUCKET)),
                    f"$KV.{RUNS_BUCKET}.>",
                ]
            },
            "subscribe": {"allow": [own_inbox]},
        }
    if role == "secrets":
        return {
            "publish": {"allow": _inboxes(REQUESTERS["secrets"])},
            "subscribe": {
                "allow": [SECRETS_GET, SECRETS_PUT, SECRETS_DELETE, SECRETS_LIST, SECRETS_DESCRIBE, own_inbox]
            },
        }
    if role == "secrets-state":
        return {
            "publish": {"allow": [SECRETS_CHANGED, "$JS.API.INFO", *jsp.kv_rw(SECRETS_BUCKET, update=True)]},
            "subscribe": {"allow": [own_inbox]},
        }
    if role == "config":
        return {
            "publish": {
                "allow": [
                    *_inboxes(REQUESTERS["config"]),
                    ROUTER_STATUS,
                    SECRETS_PUT,
                    SECRETS_DELETE,
                    SECRETS_DESCRIBE,
                    SECRETS_LIST,
                    CHAT_COMPLETIONS,
                ]
            },
            "subscribe": {
                "allow": [
                    "modelbus.v1.config.*",
                    CONFIG_KEYS_SUBJECTS,
                    AUDIT_VERIFY,
                    ROUTER_REVISIONS,
                    own_inbox,
                ],
                # The config log and events are JetStream's and the routers' business.
                "deny": [CONFIG_LOG, CONFIG_EVENTS],
            },
        }
    if role == "config-state":
        return {
            "publish": {
                "allow": [
                    CONFIG_EVENTS,
                    *jsp.stream_owner(CONFIG_STREAM, CONFIG_LOG, update=True),
                    *jsp.stream_owner(AUDIT_STREAM, AUDIT_SUBJECT, update=True),
                    *jsp.kv_rw(RUNS_BUCKET, update=True),
                    *jsp.kv_rw(GATEWAY_KEYS_BUCKET, update=True),
                    *jsp.replica_migration(jsp.kv(BREAKERS_BUCKET)),
                    *jsp.replica_migration(jsp.kv(BUDGETS_BUCKET)),
                    *jsp.replica_migration(jsp.kv(RATE_LIMITS_BUCKET)),
                    *jsp.stream_creator(USAGE_STREAM),
                    *jsp.stream_creator(USAGE_TEXT_STREAM),
                ]
            },
            "subscribe": {"allow": [own_inbox]},
        }
    raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash nats-server accepts in place of a password (``$2b$`` is read as ``$2a$``)."""
    import bcrypt

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=BCRYPT_COST)).decode()
    return "$2a$" + hashed[4:]


def render_authorization(passwords: Mapping[str, str], clients: Mapping[str, Mapping[str, str]] | None = None) -> str:
    """The nats-server ``authorization`` block (JSON is valid NATS config): every role and
    every registered application, each with a bcrypt hash, never a password."""
    users: list[dict[str, Any]] = [
        {"user": role, "password": bcrypt_hash(passwords[role]), "permissions": permissions(role)} for role in ROLES
    ]
    for name, entry in sorted((clients or {}).items()):
        users.append(
            {"user": entry["user"], "password": entry["hash"], "permissions": permissions("client", client_name=name)}
        )
    return "authorization " + json.dumps({"users": users}, indent=2) + "\n"


def load_or_create(data_dir: Path) -> dict[str, str]:
    """Role passwords from ``identities.json`` (0600); missing roles are added, existing ones kept."""
    path = data_dir / IDENTITIES_FILE
    stored: dict[str, str] = {}
    if path.exists():
        stored = {k: str(v) for k, v in json.loads(path.read_text()).items()}
        if set(stored) >= set(ROLES):
            return {role: stored[role] for role in ROLES}
    passwords = {role: stored.get(role) or secrets.token_urlsafe(24) for role in ROLES}
    write_private_file(path, json.dumps(passwords, indent=2).encode())
    return passwords


def connection_env(role: str, passwords: Mapping[str, str]) -> dict[str, str]:
    """Environment that makes a modelbus process connect as ``role`` (and its state identity)."""
    env = {USER_ENV: role, PASSWORD_ENV: passwords[role], INBOX_ENV: inbox_prefix(role)}
    state = STATE_ROLES.get(role)
    if state is not None:
        env.update({STATE_USER_ENV: state, STATE_PASSWORD_ENV: passwords[state], STATE_INBOX_ENV: inbox_prefix(state)})
    return env


def credentials(url: str, user: str, password: str, prefix: str) -> dict[str, str]:
    """The credentials-file object any NATS client can connect with."""
    return {"url": url, "user": user, "password": password, "inbox_prefix": prefix}


def write_client_file(
    data_dir: Path,
    nats_url: str,
    passwords: Mapping[str, str],
    *,
    http_url: str | None = None,
    api_key: str | None = None,
    metrics_urls: Sequence[str] = (),
) -> Path:
    """``client.json`` (0600): how any program connects as the default client identity, over NATS
    and, with ``http_url`` and ``api_key`` (the gateway's default key), over HTTP.

    The HTTP fields are extra keys of the same object, so a reader that knows only the
    NATS fields (:func:`shared.client.load_credentials`, any NATS client) reads it as before.
    """
    info: dict[str, str] = credentials(nats_url, "client", passwords["client"], inbox_prefix("client"))
    if http_url:
        info["http_url"] = http_url
    if api_key:
        info["api_key"] = api_key
    if metrics_urls:  # every service's Prometheus endpoint, comma-separated
        info["metrics_urls"] = ",".join(metrics_urls)
    return write_private_file(data_dir / CLIENT_FILE, json.dumps(info, indent=2).encode())


# ---------------------------------------------------------------- applications


def load_clients(data_dir: Path) -> dict[str, dict[str, str]]:
    """The application registry (``clients.json``): name → user, bcrypt hash, inbox prefix."""
    path = data_dir / CLIENTS_REGISTRY
    try:
        return {str(k): dict(v) for k, v in json.loads(path.read_text()).items()}
    except FileNotFoundError:
        return {}


def _save_clients(data_dir: Path, clients: Mapping[str, Mapping[str, str]]) -> None:
    write_private_file(data_dir / CLIENTS_REGISTRY, json.dumps(clients, indent=2, sort_keys=True).encode())


def client_file(data_dir: Path, name: str) -> Path:
    """Where application ``name``'s credentials file is written."""
    return data_dir / CLIENTS_DIR / f"{name}.json"


def create_client(data_dir: Path, name: str, nats_url: str) -> Path:
    """Register application ``name`` and write its credentials file (0600); returns its path.

    Raises :class:`ValueError` for a bad or taken name. The password is written
    only to the credentials file; the registry keeps its bcrypt hash.
    """
    problem = client_name_problem(name)
    if problem:
        raise ValueError(f"client {name!r}: {problem}")
    clients = load_clients(data_dir)
    if name in clients:
        raise ValueError(f"client {name!r} exists; delete it first to issue new credentials")
    password = secrets.token_urlsafe(24)
    prefix = client_inbox_prefix(name)
    info = credentials(nats_url, client_user(name), password, prefix)
    path = write_private_file(client_file(data_dir, name), json.dumps(info, indent=2).encode())
    clients[name] = {
        "user": client_user(name),
        "hash": bcrypt_hash(password),
        "inbox_prefix": prefix,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    _save_clients(data_dir, clients)
    return path


def delete_client(data_dir: Path, name: str) -> None:
    """Remove application ``name`` from the registry and delete its credentials file."""
    clients = load_clients(data_dir)
    if name not in clients:
        raise KeyError(f"no client {name!r}")
    del clients[name]
    _save_clients(data_dir, clients)
    client_file(data_dir, name).unlink(missing_ok=True)
