"""Start a throwaway modelbus for the measurement scripts: own nats-server, own data dir.

Not for production: ``modelbus up`` is. This only saves each script the same
twenty lines, and stops everything it started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.natsserver import EmbeddedNats, die_with_parent, terminate  # noqa: E402


@contextmanager
def running_stack(*up_args: str, env: Mapping[str, str] | None = None, prefix: str = "modelbus-") -> Iterator[str]:
    """Yield the NATS URL of a running stack (`modelbus up --nats-url ... *up_args`)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    server = EmbeddedNats(tmp / "nats")
    url = server.start()
    stack = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.cli",
            "--data-dir",
            str(tmp / "home"),
            "up",
            "--nats-url",
            url,
            "--http-port",
            "0",
            *up_args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**os.environ, "MODELBUS_LOG_LEVEL": "WARNING", **(env or {})},
        preexec_fn=die_with_parent,
    )
    try:
        assert stack.stdout is not None
        for line in stack.stdout:
            if line.startswith("ready "):
                break
        else:
            raise RuntimeError("the stack did not start")
        threading.Thread(target=lambda: [None for _ in stack.stdout], daemon=True).start()  # type: ignore[union-attr]
        yield url
    finally:
        terminate(stack, 30)
        server.stop()
