"""A benchmark of modelbus against calling the upstream directly and against LiteLLM.

``python -m bench`` (or ``make bench``) starts every server it needs on
loopback (llm-katan, modelbus stacks, the LiteLLM proxy, an OTLP sink),
measures scenarios a-g with a closed-loop load generator on uvloop, and
writes ``results.json``, ``results.md`` and plots to ``--out``. See
``bench/__main__.py`` for the options and ``bench/scenarios/`` for what each
scenario measures.
"""

from __future__ import annotations

import sys


def progress(message: str) -> None:
    """One progress line on stderr (stdout carries the final report)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)
