"""Masking: each built-in pattern, secret values and their encodings, nesting, log records."""

from __future__ import annotations

import base64
import io
import logging
import urllib.parse

import pytest

from opsconductor.safety.masking import (
    MASK,
    Masker,
    MaskingLogFilter,
    install_log_masking,
)

CASES = [
    ("password=hunter2 user=bob", "hunter2", "user=bob"),
    ("DB_PASSWORD: 'abc def'", "abc def", "DB_PASSWORD"),
    ('{"password": "p@ss w0rd", "user": "x"}', "p@ss w0rd", '"user": "x"'),
    ('{"client_secret":"zzz-top-1"}', "zzz-top-1", "client_secret"),
    ('{\\"api_key\\": \\"inner-key-1\\"}', "inner-key-1", "api_key"),
    ("postgresql://app:s3cr3tpw@db.internal:5432/app", "s3cr3tpw", "db.internal:5432"),
    ("mongodb+srv://root:m0ng0pw@cluster0/x", "m0ng0pw", "cluster0"),
    ("Server=db;User Id=sa;Password=Pa55w0rd;Database=x", "Pa55w0rd", "Database=x"),
    ("Authorization: Bearer abcdef123456.xyz", "abcdef123456", "Authorization"),
    ('curl -H "Authorization: Basic dXNlcjpwYXNzd29yZA=="', "dXNlcjpwYXNzd29yZA", "curl"),
    ("sending bearer tok_9f8e7d6c5b4a", "tok_9f8e7d6c5b4a", "sending"),
    ("key AKIAIOSFODNN7EXAMPLE here", "AKIAIOSFODNN7EXAMPLE", "here"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI", "aws"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abc123def end", "eyJhbGciOiJIUzI1NiJ9",
     "end"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\nafter",
     "MIIEowIBAAKCAQEA", "after"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA", "b3BlbnNzaC1rZXkt", ""),
    ("gh ghp_abcdefghijklmnopqrstuvwxyz0123456789 x", "ghp_abcdefghijklmnop", "gh "),
    ("slack xoxb-123456789012-abcdefghij", "xoxb-123456789012", "slack"),
    ("stripe sk_live_abcdefghijklmnop1234", "sk_live_abcdefghijklmnop1234", "stripe"),
    ("openai sk-proj-abcdefghijklmnopqrstuvwx", "sk-proj-abcdefghijklmnopqrstuvwx", "openai"),
    ("card 4111 1111 1111 1111 ok", "4111 1111 1111 1111", "card"),
    ("card 5500-0000-0000-0004.", "5500-0000-0000-0004", "card"),
    ("api_token=t0k3n-value&x=1", "t0k3n-value", "x=1"),
]


@pytest.mark.parametrize(("text", "secret", "kept"), CASES)
def test_builtin_patterns(text: str, secret: str, kept: str) -> None:
    out = Masker().mask_text(text)
    assert secret not in out
    assert MASK in out
    assert kept in out


@pytest.mark.parametrize("text", [
    "step restart-nginx on web-1 completed in 0.52 s (exit 0)",
    "fencing_token=5 acquired",
    "order 4111111111111112 is not a card (Luhn fails)",
    # a sha256 whose 13-digit run passes Luhn: digits inside a word are no card
    "d179dfbd8933427272376ba03605ac01da8c170a6e71457f6a1301d49e9f7024",
    "2026-11-28T12:38:09Z took 1234567 ms",
    "https://example.com/api/v1/items?page=2",
    "ssh://git@github.com/org/repo",
])
def test_benign_text_untouched(text: str) -> None:
    assert Masker().mask_text(text) == text


def test_secret_values_and_encodings() -> None:
    value = "Canary-Value/42+x"
    m = Masker().with_secrets([value, "ab"])  # too short values are ignored
    raw = value.encode()
    forms = [value, base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode(),
             base64.b64encode(raw).decode().rstrip("="), urllib.parse.quote(value, safe=""),
             urllib.parse.quote_plus(value)]
    for form in forms:
        out = m.mask_text(f"before {form} after")
        assert form not in out and out == f"before {MASK} after", form
    assert m.mask_text("ab cd") == "ab cd"
    # the base masker does not know the value
    assert value in Masker().mask_text(f"v {value}")


def test_nested_structures_keep_keys() -> None:
    m = Masker().with_secrets(["topsecret-1"])
    data = {"stdout": "x topsecret-1 y", "rows": [["password=abc"], ("topsecret-1", 3)],
            "headers": {"X-Api-Key": "kkk", "Content-Type": "json", "token": 1234},
            "password_required": True, "n": None, "b": b"pw=bytes1"}
    out = m.mask(data)
    assert out["stdout"] == "x *** y"
    assert out["rows"] == [["password=***"], ("***", 3)]
    assert out["headers"] == {"X-Api-Key": "***", "Content-Type": "json", "token": "***"}
    assert out["password_required"] is True and out["n"] is None
    assert out["b"] == b"pw=***"
    assert set(out) == set(data)


def test_custom_patterns_config_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    m = Masker([r"ACME-[0-9]{6}", r"pin (?P<secret>\d{4})"])
    assert m.mask_text("id ACME-123456 pin 9876") == "id *** pin ***"
    monkeypatch.setenv("OPSC_MASK_PATTERNS", '["corp_[a-z]{5}"]')
    assert Masker().mask_text("x corp_abcde") == "x ***"
    monkeypatch.setenv("OPSC_MASK_PATTERNS", "not json")
    with pytest.raises(ValueError, match="OPSC_MASK_PATTERNS"):
        Masker()


def test_log_filter_masks_message_args_and_exceptions() -> None:
    logger = logging.getLogger("opsc.test.masking")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    try:
        filt = install_log_masking(logger)
        assert install_log_masking(logger) is filt  # idempotent
        assert sum(isinstance(f, MaskingLogFilter) for f in handler.filters) == 1
        filt.live.register(["live-canary-123"])
        logger.warning("connecting with %s to %s", "password=pw1234",
                       "postgres://u:dbpass99@h/db")
        logger.info("value live-canary-123 seen")
        try:
            raise RuntimeError("failed with token=tok-abc-999 and live-canary-123")
        except RuntimeError:
            logger.exception("boom %s", "Bearer abcdefghijkl")
        filt.live.forget(["live-canary-123"])
        logger.info("after forget live-canary-123")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    for leaked in ("pw1234", "dbpass99", "tok-abc-999", "abcdefghijkl"):
        assert leaked not in text
    assert text.count("live-canary-123") == 1 and "after forget live-canary-123" in text
    assert "RuntimeError" in text and "Traceback" in text


def test_registry_is_reference_counted() -> None:
    filt = MaskingLogFilter()
    filt.live.register(["shared-secret-1"])
    filt.live.register(["shared-secret-1"])
    filt.live.forget(["shared-secret-1"])
    rec = logging.LogRecord("x", 20, "f", 1, "v=%s", ("shared-secret-1",), None)
    filt.filter(rec)
    assert rec.getMessage() == "v=***"
    filt.live.forget(["shared-secret-1"])
    rec = logging.LogRecord("x", 20, "f", 1, "v=%s", ("shared-secret-1",), None)
    filt.filter(rec)
    assert rec.getMessage() == "v=shared-secret-1"


def test_install_on_root_covers_handlers() -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    root.addHandler(handler)
    try:
        filt = install_log_masking()
        assert filt in root.filters and filt in handler.filters
    finally:
        root.removeHandler(handler)
        root.removeFilter(filt)
