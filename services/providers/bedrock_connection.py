"""How the Bedrock adapter reaches AWS: region, base URL, credentials and SigV4 signatures.

Options (``endpoint.options``):

============== ==============================================================
``region``     AWS region for the default URL and the signature; required
               unless ``base_url`` is a ``bedrock-runtime.<region>.amazonaws.com`` URL
``profile``    AWS profile for the default credential chain (no ``auth``)
============== ==============================================================

Credentials: the endpoint's secret (or a BYO call credential) is JSON
``{"access_key_id", "secret_access_key", "session_token"?}``; without one the default AWS
chain (environment, profile, SSO, container, instance metadata) is resolved once, off the
event loop, and cached (an empty chain is looked up again after :data:`CHAIN_RETRY_S`).
Requests are signed with botocore's ``SigV4Auth`` for service ``bedrock``, over exactly the
URL sent. Every part of the key (access key id, secret access key, session token) is
recorded on the connection for scrubbing (:mod:`services.providers.scrub`): the key id is
not secret to AWS, but it names the account and AWS error messages quote it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

import msgspec
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError
from botocore.session import Session
from botocore.utils import percent_encode

from services.providers.adapter import config_error
from services.providers.base import EndpointConnection
from shared.errors import AuthFailed

# botocore logs the canonical request, session token included, at DEBUG.
logging.getLogger("botocore.auth").setLevel(logging.INFO)

SERVICE = "bedrock"
"""The SigV4 service name of Bedrock Runtime."""
PROVIDER = "bedrock"
CHAIN_RETRY_S = 60.0
"""How long an empty default credential chain is remembered before it is looked up again."""

_REGION = re.compile(r"^[a-z0-9-]+$")
_REGION_IN_HOST = re.compile(r"bedrock-runtime(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com")


class _AwsKeys(msgspec.Struct, frozen=True):
    """The endpoint secret's format (Orloj's)."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None


_keys_decoder = msgspec.json.Decoder(_AwsKeys)


class BedrockConnection:
    """One Bedrock endpoint's region, base URL and credentials; signs each request."""

    def __init__(self, connection: EndpointConnection) -> None:
        """Raises :class:`shared.errors.ConfigError` naming the option at fault."""
        self.connection = connection
        endpoint = connection.endpoint
        region = str_option(endpoint.options, "region")
        if region is not None and not _REGION.match(region):
            raise config_error(endpoint.name, "options.region", f"{region!r} is not an AWS region name")
        base = endpoint.base_url or (f"https://bedrock-runtime.{region}.amazonaws.com" if region else None)
        if base is None:
            raise config_error(endpoint.name, "options.region", "bedrock needs options.region or a base_url")
        if region is None:
            found = _REGION_IN_HOST.search(base)
            if found is None:
                raise config_error(
                    endpoint.name, "base_url", "options.region is required to sign for a custom base_url"
                )
            region = found.group(1)
        self.region = region
        self.base = base.rstrip("/")
        self.profile = str_option(endpoint.options, "profile")
        self._chain: Any = None
        self._chain_checked = -CHAIN_RETRY_S
        self._chain_lock = asyncio.Lock()

    def url(self, model: str, operation: str) -> str:
        """``{base}/model/{modelId}/{operation}``, the model id one path segment."""
        # ':' and '/' are escaped, as botocore's serializer does.
        return f"{self.base}/model/{percent_encode(model)}/{operation}"

    async def signed_headers(self, url: str, body: bytes, *, accept: str) -> dict[str, str]:
        """The headers of a POST of ``body`` to ``url``, SigV4 ``Authorization`` included."""
        credentials = await self.credentials()
        aws_request = AWSRequest(
            method="POST", url=url, data=body, headers={"content-type": "application/json", "accept": accept}
        )
        SigV4Auth(credentials, SERVICE, self.region).add_auth(aws_request)
        return {str(k): str(v) for k, v in aws_request.headers.items()}

    async def credentials(self) -> Credentials:
        """The call's key pair: BYO or the endpoint's secret, else the default AWS chain."""
        secret = await self.connection.credential()
        if secret is None:
            return await self._chain_credentials()
        try:
            keys = _keys_decoder.decode(secret)
        except msgspec.MsgspecError:
            raise AuthFailed(
                f"{self.connection.endpoint.name}: the bedrock credential must be JSON "
                '{"access_key_id", "secret_access_key", "session_token"?}',
                provider=PROVIDER,
            ) from None
        self.connection.sent(keys.access_key_id, keys.secret_access_key, keys.session_token)
        return Credentials(keys.access_key_id, keys.secret_access_key, keys.session_token)

    async def _chain_credentials(self) -> Credentials:
        """The default AWS chain, looked up off the event loop once and cached."""
        name = self.connection.endpoint.name
        if self._chain is None and time.monotonic() - self._chain_checked >= CHAIN_RETRY_S:
            async with self._chain_lock:
                if self._chain is None and time.monotonic() - self._chain_checked >= CHAIN_RETRY_S:
                    self._chain_checked = time.monotonic()
                    try:
                        self._chain = await asyncio.to_thread(_resolve_chain, self.profile)
                    except BotoCoreError as exc:
                        raise AuthFailed(
                            f"{name}: AWS credential chain failed ({type(exc).__name__})", provider=PROVIDER
                        ) from None
        chain = self._chain
        if chain is None:
            raise AuthFailed(f"{name}: no auth set and no AWS credentials in the default chain", provider=PROVIDER)
        refresh_needed = getattr(chain, "refresh_needed", None)
        if refresh_needed is not None and refresh_needed():
            frozen = await asyncio.to_thread(chain.get_frozen_credentials)  # may call STS or IMDS
        else:
            frozen = chain.get_frozen_credentials()
        self.connection.sent(frozen.access_key, frozen.secret_key, frozen.token)
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)


def _resolve_chain(profile: str | None) -> Any:
    """Blocking: botocore's default credential chain (env, profile, SSO, container, IMDS)."""
    return Session(profile=profile).get_credentials()


def str_option(options: Mapping[str, Any], key: str) -> str | None:
    """A string option; absent and empty are ``None``."""
    value = options.get(key)
    return str(value) if value not in (None, "") else None
