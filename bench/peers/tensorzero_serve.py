"""Run TensorZero's own Rust HTTP gateway, embedded in the PyPI wheel, as a long-lived process.

The ``tensorzero`` wheel ships no gateway binary: the Rust gateway is compiled
into its extension module, and ``tensorzero._start_http_gateway`` (what the
package's ``patch_openai_client`` uses) starts that gateway's axum server, with
its OpenAI-compatible routes, on ``127.0.0.1`` and a port it picks itself. The
server runs on the extension's own Tokio runtime; no request passes through
Python. This script only starts it, writes its base URL to a file (the port is
not ours to choose), and then sleeps in ``sigwait`` until SIGTERM or SIGINT.

Run it with the tensorzero virtualenv's interpreter and ``-P``: without it the
script's own directory comes first on ``sys.path``, and the sibling module
``tensorzero.py`` (the peer definition) would shadow the real package.

    python -P tensorzero_serve.py --config tensorzero.toml --address-file address.txt
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import tensorzero


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="the tensorzero.toml to load")
    parser.add_argument("--address-file", required=True, type=Path, help="where to write the gateway's base URL")
    args = parser.parse_args()

    # Block the signals before the gateway starts its threads, so they inherit the
    # mask and the signal is left to the sigwait below.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    gateway = tensorzero._start_http_gateway(
        config_file=str(args.config),
        clickhouse_url=None,
        postgres_url=None,
        valkey_url=None,
        async_setup=False,
    )
    # Written whole, then renamed: a reader never sees half a URL.
    partial = args.address_file.with_name(args.address_file.name + ".partial")
    partial.write_text(gateway.base_url + "\n")
    os.replace(partial, args.address_file)
    signal.sigwait(stop_signals)
    gateway.close()  # graceful shutdown of the axum server


if __name__ == "__main__":
    main()
