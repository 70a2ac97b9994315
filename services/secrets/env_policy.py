"""Which of its own environment variables the secrets service hands out for ``env:`` references.

``env:VAR`` reads the secrets service's environment, which also holds what
the service itself runs on: its broker passwords, the master key, the Vault
token, telemetry headers. None of that may ever be handed to a provider
worker, so a variable is refused, whatever it holds and whether it is set or
not, when its name is:

* under ``NATS_``, ``MODELBUS_``, ``VAULT_`` or ``OTEL_`` (the broker identity
  and the state identity's password, the master key and its file, the admin
  token, the allow-list itself, the Vault address and token, OTLP exporter
  headers that may carry tokens), compared case-insensitively; or
* one of the proxy variables httpx reads for the service's Vault calls
  (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, any case),
  which may carry ``user:password@``.

The secrets service uses no cloud SDK, so ``AWS_*``, ``GOOGLE_*`` and the like
are not its own credentials and are not reserved; give the secrets service
only the variables meant for workers, or narrow it further with an
allow-list: ``MODELBUS_SECRETS_ENV_ALLOW="OPENAI_*,LLM_*_API_KEY"`` (comma- or
space-separated ``fnmatch`` patterns, matched case-sensitively against the
whole name). When it is set, only matching names resolve; reserved names stay
refused even if a pattern matches them. Unset (or empty), every name that is
not reserved resolves, including what the configuration importers generate
(``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ``ANTHROPIC_AUTH_TOKEN``,
``AZURE_OPENAI_KEY``, ``TOGETHER_API_KEY``, ``LLM_<P>_API_KEY``,
``ORLOJ_SECRET_<NAME>``).

The decision depends on the name alone and is made before the environment is
read, so a refusal looks and takes the same whether the variable is set or not.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass

ALLOW_ENV = "MODELBUS_SECRETS_ENV_ALLOW"
"""Comma- or space-separated fnmatch patterns: the only variable names ``env:`` references may read."""
RESERVED_PREFIXES = ("NATS_", "MODELBUS_", "VAULT_", "OTEL_")
"""Name prefixes of the secrets service's own configuration; never handed out."""
RESERVED_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
"""Proxy settings the service's own HTTP client reads (they may hold credentials); never handed out."""

_SPLIT = re.compile(r"[,\s]+")


def reserved(variable: str) -> bool:
    """Whether ``variable`` belongs to the secrets service's own configuration (any case)."""
    upper = variable.upper()
    return upper.startswith(RESERVED_PREFIXES) or upper in RESERVED_NAMES


@dataclass(frozen=True)
class EnvPolicy:
    """The names ``env:`` references (and bare names' ``ORLOJ_SECRET_*`` variables) may read."""

    allow: tuple[str, ...] = ()
    """Patterns of :data:`ALLOW_ENV`; empty: every name that is not reserved."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EnvPolicy:
        """The policy the service's environment sets (:data:`ALLOW_ENV`)."""
        return cls(tuple(p for p in _SPLIT.split(env.get(ALLOW_ENV, "")) if p))

    def refusal(self, variable: str) -> str | None:
        """Why ``variable`` may not be handed out, or ``None`` if it may. Depends on the name only."""
        if reserved(variable):
            return (
                f"variable {variable} is reserved for the secrets service's own configuration "
                f"({', '.join(p + '*' for p in RESERVED_PREFIXES)}, proxy settings) and is never handed out"
            )
        if self.allow and not any(fnmatch.fnmatchcase(variable, p) for p in self.allow):
            return f"variable {variable} is not allowed by {ALLOW_ENV} ({', '.join(self.allow)})"
        return None

    def allows(self, variable: str) -> bool:
        """Whether ``variable`` may be handed out."""
        return self.refusal(variable) is None

    def read(self, env: Mapping[str, str], variable: str) -> str | None:
        """The value of ``variable`` if the policy allows it and it is set and not empty; else ``None``."""
        if not self.allows(variable):
            return None
        return env.get(variable) or None
