"""Logging set-up shared by every service process.

Logs go to stderr, one line per record, so ``modelbus up`` can prefix each
line with the service name. ``MODELBUS_LOG_LEVEL`` sets the level.
"""

from __future__ import annotations

import logging
import os
import sys

READY_MARKER = "modelbus-service-ready"
"""Logged once by each service when it is serving; ``modelbus up`` waits for it."""


def setup_logging(service: str) -> logging.Logger:
    """Configure the root logger for a service process and return its logger."""
    level = os.environ.get("MODELBUS_LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # FastStream logs every message at INFO; that is noise on a request path.
    logging.getLogger("faststream").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("modelbus.faststream").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    return logging.getLogger(f"modelbus.{service}")


def announce_ready(log: logging.Logger, detail: str = "") -> None:
    """Tell the supervisor (and the operator) this service is serving.

    Written straight to stderr, not through logging, so the supervisor sees it
    whatever ``MODELBUS_LOG_LEVEL`` is.
    """
    sys.stderr.write(f"{READY_MARKER} {log.name} {detail}\n")
    sys.stderr.flush()
