"""The published event contract is the code's: docs/asyncapi.json and the table in
docs/events.md are regenerated from the registry, and this test fails when they are stale."""

from __future__ import annotations

import json

from shared.asyncapi import asyncapi_document, event_table_markdown
from tests.infra import ROOT


def test_the_committed_asyncapi_document_is_the_one_the_code_generates() -> None:
    committed = json.loads((ROOT / "docs/asyncapi.json").read_text())
    assert committed == json.loads(json.dumps(asyncapi_document())), (
        "docs/asyncapi.json is stale: python -m shared.asyncapi > docs/asyncapi.json"
    )


def test_the_event_table_in_the_docs_lists_every_registered_type() -> None:
    assert event_table_markdown() in (ROOT / "docs/events.md").read_text(), (
        "docs/events.md's table of types is stale (shared.asyncapi.event_table_markdown)"
    )


def test_the_readme_quick_start_is_the_two_make_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci/run").read_text()
