"""Each service owns its code: nothing under services/<a>/ imports services/<b>/, and shared/
imports no service. Only the composition (services/embedded.py, services/registry.py,
services/front_door.py) names them all; the gateway's entry point runs the front door."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shared.settings import SERVICES
from tests.infra import ROOT


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


# (file, module): the one exception. `python -m services.gateway run` is the distributed mode's
# front door, whose app (the console and the other services' routes) is composed there.
ALLOWED = {("services/gateway/__main__.py", "services.front_door")}


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_only_itself_and_shared(service: str) -> None:
    offenders = []
    for path in (ROOT / "services" / service).rglob("*.py"):
        for mod in imported_modules(path):
            if (str(path.relative_to(ROOT)), mod) in ALLOWED:
                continue
            if mod.startswith("services.") and not mod.startswith(f"services.{service}"):
                offenders.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert not offenders


def test_shared_code_imports_no_service() -> None:
    offenders = [
        f"{p.relative_to(ROOT)} imports {m}"
        for p in (ROOT / "shared").rglob("*.py")
        for m in imported_modules(p)
        if m == "services" or m.startswith("services.")
    ]
    assert not offenders


def test_every_service_has_the_layout_of_the_design_card() -> None:
    for service in SERVICES:
        base = ROOT / "services" / service
        for part in (
            "domain",
            "service_layer",
            "adapters",
            "entrypoints",
            "migrations/versions",
            "__main__.py",
            "spec.py",
        ):
            assert (base / part).exists(), f"services/{service}/{part} is missing"
