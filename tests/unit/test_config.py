from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import Settings, markdown_table
from pipelines.errors import ERROR_CODES, SwitchboardError

pytestmark = pytest.mark.unit
README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_documents_every_setting():
    readme = README.read_text()
    for name in Settings.model_fields:
        assert f"`SWITCHBOARD_{name.upper()}`" in readme, f"README lacks SWITCHBOARD_{name.upper()}"
    assert markdown_table() in readme, "README settings table is stale: paste `python -m pipelines.config`"


def test_readme_documents_every_error_code():
    readme = README.read_text()
    for code in ERROR_CODES:
        assert f"`{code}`" in readme


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("SWITCHBOARD_DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("SWITCHBOARD_MAX_MESSAGE_BYTES", "2048")
    s = Settings()
    assert s.sqlalchemy_url == "postgresql+psycopg://u@h/db" and s.max_message_bytes == 2048


def test_settings_are_validated(monkeypatch):
    monkeypatch.setenv("SWITCHBOARD_INTENT_THRESHOLD", "1.5")
    with pytest.raises(ValueError):
        Settings()


def test_unknown_error_codes_are_refused():
    with pytest.raises(ValueError):
        SwitchboardError("x", code="made_up")
    assert SwitchboardError("x", code="pii_check_failed").retryable is True
