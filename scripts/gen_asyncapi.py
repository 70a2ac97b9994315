"""Write docs/asyncapi/<service>.yaml, one AsyncAPI document per service, from the code.

Run from the repository root: ``python -m scripts.gen_asyncapi`` (or ``make docs``).
``--check`` writes nothing and exits 1 when a committed document is stale.

Each document comes from the service's ``services.<svc>.asyncapi:app``, the
same object ``faststream docs gen services.<svc>.asyncapi:app --yaml`` reads.
The only difference is ordering: FastStream keeps a broker's subscribers and
publishers in a ``WeakSet``, so the order of channels and operations in its
output follows memory addresses and can change from one run to the next. Here
every name-keyed map is sorted, so a document changes only when the code does.
"""

from __future__ import annotations

import argparse
import importlib
import io
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "docs" / "asyncapi"
SERVICES: tuple[str, ...] = ("config", "router", "providers", "secrets")
"""Services with a ``services.<svc>.asyncapi`` module."""

_TOP_LEVEL_ORDER = ("asyncapi", "id", "info", "defaultContentType", "servers", "channels", "operations", "components")


def app_for(service: str) -> Any:
    """The FastStream app documenting ``service``."""
    return importlib.import_module(f"services.{service}.asyncapi").app


def document(service: str) -> dict[str, Any]:
    """The service's AsyncAPI document as plain data, name-keyed maps sorted."""
    raw = app_for(service).schema.to_specification().to_jsonable()
    doc = {key: raw[key] for key in _TOP_LEVEL_ORDER if key in raw}
    doc.update({key: value for key, value in raw.items() if key not in doc})
    for key in ("servers", "channels", "operations"):
        if isinstance(doc.get(key), dict):
            doc[key] = dict(sorted(doc[key].items()))
    components = doc.get("components")
    if isinstance(components, dict):
        doc["components"] = {
            name: dict(sorted(section.items())) if isinstance(section, dict) else section
            for name, section in components.items()
        }
    return doc


def render(service: str) -> str:
    """The YAML text of the service's document, as written to docs/asyncapi/."""
    out = io.StringIO(newline="\n")
    yaml.dump(document(service), out, sort_keys=False, allow_unicode=True)
    return out.getvalue()


def path_for(service: str) -> Path:
    """Where the service's document is committed."""
    return OUT_DIR / f"{service}.yaml"


def main(argv: list[str] | None = None) -> int:
    """Write (or, with ``--check``, verify) every service's document."""
    parser = argparse.ArgumentParser(prog="python -m scripts.gen_asyncapi", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify the committed documents; write nothing")
    args = parser.parse_args(argv)
    stale = []
    for service in SERVICES:
        text, path = render(service), path_for(service)
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            print(f"{path.relative_to(ROOT)}: up to date")
        elif args.check:
            stale.append(path)
            print(f"{path.relative_to(ROOT)}: stale", file=sys.stderr)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"{path.relative_to(ROOT)}: written")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
