"""Secrets from files: `OPSC_<FIELD>_FILE` (a mounted Docker or Kubernetes secret) gives the
value of a secret-bearing setting; a missing file or both forms set is one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsconductor.schema.config import FILE_FIELDS, SettingsFileError, load_settings


def test_a_secret_file_gives_the_value_less_its_trailing_newline(tmp_path: Path) -> None:
    url = tmp_path / "database_url"
    url.write_text("postgresql://opsc_app_worker:s3cret@db:5432/opsconductor?sslmode=verify-full\n")
    token = tmp_path / "vault_token"
    token.write_text("hvs.token-from-a-file")
    settings = load_settings({"OPSC_HOME": str(tmp_path), "OPSC_DATABASE_URL_FILE": str(url),
                              "OPSC_VAULT_TOKEN_FILE": str(token)})
    assert settings.database_url == url.read_text().strip()
    assert settings.vault_token is not None
    assert settings.vault_token.get_secret_value() == "hvs.token-from-a-file"
    assert set(FILE_FIELDS) <= set(type(settings).model_fields)


def test_a_missing_file_or_both_forms_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(SettingsFileError) as missing:
        load_settings({"OPSC_HOME": str(tmp_path),
                       "OPSC_DATABASE_URL_FILE": str(tmp_path / "absent")})
    assert "OPSC_DATABASE_URL_FILE" in str(missing.value) and "absent" in str(missing.value)
    (tmp_path / "url").write_text("postgresql://a@b/c")
    with pytest.raises(SettingsFileError) as both:
        load_settings({"OPSC_HOME": str(tmp_path), "OPSC_DATABASE_URL": "postgresql://x@y/z",
                       "OPSC_DATABASE_URL_FILE": str(tmp_path / "url")})
    assert "OPSC_DATABASE_URL or OPSC_DATABASE_URL_FILE" in str(both.value)
