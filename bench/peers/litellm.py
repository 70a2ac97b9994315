"""LiteLLM's proxy as a peer: PyPI ``litellm[proxy]`` in its own virtualenv, one uvicorn worker.

Scenarios a and b run this same peer (:mod:`bench.litellm_proxy`). The config is the minimal one of
LiteLLM's production guide (https://docs.litellm.ai/docs/proxy/prod): one model
``echo`` forwarded to the OpenAI API at the upstream, and a master key, which
every request must carry as its bearer. No database, no callbacks, no cache.

``--num_workers 1`` is one uvicorn worker (one process); ``LITELLM_LOG=ERROR``
sets uvicorn's log level, which keeps its per-request access log off. LiteLLM
keeps its upstream connections alive in its own pooled HTTP client.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import yaml

from bench.peers import (
    LOOPBACK,
    UPSTREAM_MODEL,
    Peer,
    Running,
    Upstream,
    dist_version,
    free_port,
    pip_install,
    serve,
)

# 1.107.0 was a compromised release (a supply-chain attack), and newer ones do not
# resolve on our package mirror; pinning below it keeps every run reproducible.
REQUIREMENT = "litellm[proxy]>=1.106,<1.107"
ENVIRONMENT = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the model price list at start
    "LITELLM_LOG": "ERROR",
    "LITELLM_MODE": "PRODUCTION",  # the production guide's setting: no .env is read
}


def proxy_config(upstream: Upstream, master_key: str) -> str:
    """LiteLLM's config: one model, ``echo``, forwarded to the OpenAI API at ``upstream``."""
    config = {
        "model_list": [
            {
                "model_name": UPSTREAM_MODEL,
                "litellm_params": {
                    "model": f"openai/{UPSTREAM_MODEL}",
                    "api_base": upstream.base_url,
                    "api_key": upstream.api_key,
                },
            }
        ],
        "general_settings": {"master_key": master_key},
        # A no-op since LiteLLM dropped its telemetry; kept so the config says what we want.
        "litellm_settings": {"telemetry": False},
    }
    return str(yaml.safe_dump(config, sort_keys=False))


class LiteLLM(Peer):
    """LiteLLM's proxy server (Python), with a master key, in front of the OpenAI-compatible upstream."""

    name = "litellm"
    title = "LiteLLM proxy (Python, PyPI litellm[proxy])"
    family = "python"

    def install(self, log_path: Path) -> None:
        pip_install(self.env_dir, [REQUIREMENT], log_path)

    def version(self) -> str | None:
        return dist_version(self.env_dir, "litellm")

    def start(self, upstream: Upstream, work_dir: Path, log_path: Path) -> Running:
        master_key = f"sk-bench-{secrets.token_hex(16)}"
        work_dir.mkdir(parents=True, exist_ok=True)
        config = work_dir / "litellm.yaml"
        config.write_text(proxy_config(upstream, master_key))
        port = free_port()
        argv = [
            str(self.env_dir / "bin" / "litellm"),
            "--config",
            str(config),
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--num_workers",
            "1",
        ]
        return serve(
            argv,
            log_path,
            cwd=work_dir,
            port=port,
            headers={"authorization": f"Bearer {master_key}"},
            env=ENVIRONMENT,
            version=self.version(),
        )
