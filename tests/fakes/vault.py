"""A small fake HashiCorp Vault: the KV version 2 secrets engine as Vault's API docs describe it.

Docs: https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v2 (OpenBao
serves the same API: https://openbao.org/api-docs/secret/kv/kv-v2/). No Vault
server can be installed here, so this fake stands in for one. It follows the
published shapes, not modelbus's client:

* Every request needs ``X-Vault-Token`` naming a known token, else
  ``403 {"errors": ["permission denied"]}``. A token may be limited to path
  prefixes inside the mount (a policy, roughly); other paths are a 403 too.
  With :attr:`FakeVault.namespace` set, ``X-Vault-Namespace`` must match, or the
  mount is not found (as in another namespace).
* ``GET /v1/<mount>/data/<path>`` answers the latest version (``?version=N``
  an older one) in Vault's envelope: ``{"request_id", "lease_id", "renewable",
  "lease_duration", "data": {"data": {...}, "metadata": {"created_time",
  "custom_metadata", "deletion_time", "destroyed", "version"}}, "wrap_info",
  "warnings", "auth", "mount_type"}``. No such secret: ``404 {"errors": []}``.
  A soft-deleted version is a 404 whose body still carries the envelope, with
  ``data: null`` and ``deletion_time`` set, as Vault sends it.
* ``POST``/``PUT`` ``/v1/<mount>/data/<path>`` with ``{"data": {...},
  "options": {"cas": N}}`` writes a new version (versions count up from 1, 10
  kept) and answers its metadata under ``data``; a wrong ``cas`` or no ``data``
  is a 400.
* ``DELETE /v1/<mount>/data/<path>`` soft-deletes the latest version (204).
* ``GET /v1/<mount>/metadata/<path>`` answers the key's metadata and versions;
  ``DELETE`` removes every version and the metadata (204, also when absent).
* ``LIST /v1/<mount>/metadata/<folder>/`` (or ``GET ...?list=true``) answers
  ``{"data": {"keys": [...]}}``: the folder's secrets and sub-folders (``name/``),
  sorted; an empty or unknown folder is ``404 {"errors": []}``.
* An unknown mount is ``404`` "no handler for route", as Vault says it.

Served on a loopback port (:meth:`FakeVault.start`) for real processes, or
in-process through ``httpx.ASGITransport(app=fake.app)`` for unit tests.
Knobs for failure tests: ``fail_status`` (answer every request with it, e.g.
503 ``Vault is sealed``) and :attr:`FakeVault.requests` (method, path and
headers of each request, to check what the client sent).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MAX_VERSIONS = 10
"""Vault's default ``max_versions``."""


def _now() -> str:
    # Vault writes nanoseconds; Python has microseconds, padded to look the same.
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


class Recorded:
    """One request as the fake received it."""

    def __init__(self, method: str, path: str, headers: dict[str, str]) -> None:
        self.method = method
        self.path = path
        self.headers = headers


class _Version:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.created_time = _now()
        self.deletion_time = ""
        self.destroyed = False

    def metadata(self, version: int) -> dict[str, Any]:
        return {
            "created_time": self.created_time,
            "custom_metadata": None,
            "deletion_time": self.deletion_time,
            "destroyed": self.destroyed,
            "version": version,
        }


class _Key:
    def __init__(self) -> None:
        self.versions: dict[int, _Version] = {}
        self.current = 0
        self.created_time = _now()
        self.updated_time = self.created_time


class FakeVault:
    """The fake server; :meth:`start` runs it on a free loopback port in a thread.

    ``tokens`` maps each valid token to the path prefixes (inside the mount) it
    may touch, ``None`` for all of them.
    """

    def __init__(
        self,
        tokens: dict[str, tuple[str, ...] | None],
        *,
        mounts: tuple[str, ...] = ("secret",),
        namespace: str | None = None,
        fail_status: int | None = None,
    ) -> None:
        self.tokens = tokens
        self.mounts: dict[str, dict[str, _Key]] = {m: {} for m in mounts}
        self.namespace = namespace
        self.fail_status = fail_status
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        methods = ["GET", "POST", "PUT", "DELETE", "LIST"]
        self.app = Starlette(routes=[Route("/v1/{rest:path}", self._route, methods=methods)])
        """The ASGI app: served on a port by :meth:`start`, or in-process with ``httpx.ASGITransport``."""

    @property
    def address(self) -> str:
        """What ``VAULT_ADDR`` is set to."""
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------ test helpers

    def put(self, path: str, data: dict[str, Any], *, mount: str = "secret") -> int:
        """Write a version directly, as ``vault kv put`` would; its version number."""
        with self._lock:
            return self._write(self.mounts[mount], path, data)

    def latest(self, path: str, *, mount: str = "secret") -> dict[str, Any] | None:
        """The latest version's data, ``None`` when absent or deleted."""
        with self._lock:
            key = self.mounts[mount].get(path)
            version = key.versions.get(key.current) if key else None
            return None if version is None or version.deletion_time or version.destroyed else dict(version.data)

    def version_count(self, path: str, *, mount: str = "secret") -> int:
        """How many versions ``path`` has had (0 when its metadata is gone)."""
        with self._lock:
            key = self.mounts[mount].get(path)
            return key.current if key else 0

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout_s: float = 10.0) -> FakeVault:
        """Bind a free port and serve until :meth:`stop`."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        # h11, not httptools: llhttp knows a fixed set of methods, and LIST is not among them.
        config = uvicorn.Config(self.app, http="h11", log_level="warning", timeout_graceful_shutdown=1, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake Vault did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Ask the server to exit and wait for its thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeVault:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ routing

    async def _route(self, request: Request) -> Response:
        rest = request.path_params["rest"]
        self.requests.append(Recorded(request.method, "/v1/" + rest, dict(request.headers)))
        if self.fail_status is not None:
            return _errors(self.fail_status, ["Vault is sealed"] if self.fail_status == 503 else ["internal error"])
        token = request.headers.get("x-vault-token", "")
        if token not in self.tokens:
            return _errors(403, ["permission denied"])
        found = self._split(rest, request.headers.get("x-vault-namespace"))
        if found is None:
            return _errors(404, [f'no handler for route "{rest}". route entry not found.'])
        mount, kind, path = found
        allowed = self.tokens[token]
        if allowed is not None and not any(path.startswith(p) for p in allowed):
            return _errors(403, ["permission denied"])
        body: Any = None
        if request.method in ("POST", "PUT"):
            try:
                body = await request.json()
            except ValueError:
                return _errors(400, ["error parsing JSON"])
        with self._lock:
            keys = self.mounts[mount]
            if kind == "data":
                return self._data(request, keys, path, body)
            return self._metadata(request, keys, path)

    def _split(self, rest: str, namespace: str | None) -> tuple[str, str, str] | None:
        if (namespace or None) != self.namespace:
            return None
        for mount in self.mounts:
            for kind in ("data", "metadata"):
                head = f"{mount}/{kind}/"
                if rest.startswith(head) or rest == head.rstrip("/"):
                    return mount, kind, rest.removeprefix(head)
        return None

    # ------------------------------------------------------------ data

    def _data(self, request: Request, keys: dict[str, _Key], path: str, body: Any) -> Response:
        if not path or path.endswith("/"):
            return _errors(405, ["1 error occurred:\n\t* unsupported operation\n\n"])
        if request.method == "GET":
            key = keys.get(path)
            wanted = request.query_params.get("version", "0")
            number = key.current if key and wanted in ("", "0") else int(wanted) if wanted.isdigit() else -1
            version = key.versions.get(number) if key else None
            if version is None:
                return _errors(404, [])
            if version.deletion_time or version.destroyed:
                return JSONResponse(_envelope({"data": None, "metadata": version.metadata(number)}), status_code=404)
            return JSONResponse(_envelope({"data": version.data, "metadata": version.metadata(number)}))
        if request.method in ("POST", "PUT"):
            if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
                return _errors(400, ["no data provided"])
            options = body.get("options") or {}
            cas = options.get("cas") if isinstance(options, dict) else None
            key = keys.get(path)
            if cas is not None and cas != (key.current if key else 0):
                return _errors(400, ["check-and-set parameter did not match the current version"])
            number = self._write(keys, path, body["data"])
            return JSONResponse(_envelope(keys[path].versions[number].metadata(number)))
        if request.method == "DELETE":
            key = keys.get(path)
            if key is not None and key.current in key.versions:
                key.versions[key.current].deletion_time = _now()
            return Response(status_code=204)
        return _errors(405, ["1 error occurred:\n\t* unsupported operation\n\n"])

    def _write(self, keys: dict[str, _Key], path: str, data: dict[str, Any]) -> int:
        key = keys.setdefault(path, _Key())
        key.current += 1
        key.versions[key.current] = _Version(dict(data))
        key.updated_time = key.versions[key.current].created_time
        for old in [n for n in key.versions if n <= key.current - MAX_VERSIONS]:
            del key.versions[old]
        return key.current

    # ------------------------------------------------------------ metadata

    def _metadata(self, request: Request, keys: dict[str, _Key], path: str) -> Response:
        listing = request.method == "LIST" or (
            request.method == "GET" and request.query_params.get("list") in ("true", "1")
        )
        if listing:
            folder = path.rstrip("/") + "/" if path.strip("/") else ""
            children: set[str] = set()
            for name in keys:
                if name.startswith(folder):
                    head, slash, _ = name.removeprefix(folder).partition("/")
                    children.add(head + slash)
            if not children:
                return _errors(404, [])
            return JSONResponse(_envelope({"keys": sorted(children)}))
        if request.method == "GET":
            key = keys.get(path)
            if key is None:
                return _errors(404, [])
            return JSONResponse(
                _envelope(
                    {
                        "cas_required": False,
                        "created_time": key.created_time,
                        "current_version": key.current,
                        "custom_metadata": None,
                        "delete_version_after": "0s",
                        "max_versions": 0,
                        "oldest_version": min(key.versions, default=0),
                        "updated_time": key.updated_time,
                        "versions": {
                            str(n): {k: v for k, v in version.metadata(n).items() if k not in ("version",)}
                            for n, version in key.versions.items()
                        },
                    }
                )
            )
        if request.method == "DELETE":
            keys.pop(path, None)
            return Response(status_code=204)
        return _errors(405, ["1 error occurred:\n\t* unsupported operation\n\n"])


def _envelope(data: Any) -> dict[str, Any]:
    """Vault's response envelope around ``data``."""
    return {
        "request_id": str(uuid.uuid4()),
        "lease_id": "",
        "renewable": False,
        "lease_duration": 0,
        "data": data,
        "wrap_info": None,
        "warnings": None,
        "auth": None,
        "mount_type": "kv",
    }


def _errors(status: int, errors: list[str]) -> JSONResponse:
    return JSONResponse({"errors": errors}, status_code=status)
