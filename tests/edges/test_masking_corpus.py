"""The masker against a corpus of credentials that were never registered, and of look-alikes
that must pass untouched (digests, UUIDs, commit ids, base64 of ordinary text, versions,
paths); the rules data file's own invariants; and hostile inputs that would make a
backtracking pattern stall."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import re2
import yaml

from opsconductor.safety.masking import MASK, RULES, Masker, load_rules

CORPUS = yaml.safe_load((Path(__file__).parent / "masking_corpus.yaml").read_text())


@pytest.fixture(scope="module")
def masker() -> Masker:
    return Masker(use_env=False)


def test_every_credential_masked_and_no_benign_line_altered(masker: Masker) -> None:
    leaked = [(c["line"], out) for c in CORPUS["credentials"]
              if c["secret"] in (out := masker.mask_text(c["line"])) or MASK not in out]
    altered = [(line, out) for line in CORPUS["benign"]
               if (out := masker.mask_text(line)) != line]
    creds, benign = len(CORPUS["credentials"]), len(CORPUS["benign"])
    print(f"masking corpus: {creds - len(leaked)}/{creds} credential lines masked, "
          f"{benign - len(altered)}/{benign} benign lines unchanged")
    assert creds >= 50 and benign >= 20
    assert not leaked, leaked
    assert not altered, altered


def test_the_measured_gaps_are_closed(masker: Masker) -> None:
    """The 16 forms that passed the masker before, one line each."""
    gaps = {
        "mysql -u root -pS3cr3t": "S3cr3t", "curl -u admin:pass https://h": ":pass",
        "sshpass -p pass ssh h": "-p pass", "psql --password x -h db": "--password x",
        "hvs.CAESIJ2b3Z1cnRtZXN0X3Rva2Vu": "hvs.", "npm_" + "a1" * 18: "npm_",
        "pypi-AgEIcHlwaS5vcmc" + "x" * 60: "pypi-", "dckr_pat_" + "Ab1" * 9: "dckr_pat_",
        "https://hooks.slack.com/services/T0000/B0000/" + "Xy" * 12: "Xy" * 12,
        "AccountKey=" + "Ab+/" * 11 + "A==": "Ab+/",
        "https://a.blob.core.windows.net/c?sv=1&sig=" + "Q" * 30: "Q" * 30,
        "aws_secret_access_key: " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY":
            "wJalrXUtnFEMI",
        "AKIAIOSFODNN7EXAMPLE wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY": "wJalrXUtnFEMI",
        "Private-Lines: 1\nAAAAIEl3b25kZXJzb21lcHJpdmF0ZWtleQ==\n": "AAAAIEl3b25",
        "Private-MAC: " + "ab12" * 16: "ab12",
        "PGPASSWORD=pgS3cret psql": "pgS3cret",
    }
    leaked = {line: out for line, secret in gaps.items()
              if secret in (out := masker.mask_text(line))}
    print(f"measured gaps: {len(gaps) - len(leaked)}/{len(gaps)} closed")
    assert not leaked, leaked


def test_registered_secrets_still_masked_with_the_rules(masker: Masker) -> None:
    m = masker.with_secrets(["opsc-registered-Value-77"])
    out = m.mask_text("user=x val=opsc-registered-Value-77 npm_" + "z9" * 18)
    assert "opsc-registered-Value-77" not in out and "npm_" not in out
    assert out.count(MASK) == 2


def test_rules_file_invariants() -> None:
    """Unique ids, RE2-compilable, a masked group, keywords that a match must contain."""
    assert len(RULES) >= 40 and len({r.id for r in RULES}) == len(RULES)
    for rule in RULES:
        assert isinstance(rule.regex, re2._Regexp), rule.id
        assert rule.source in ("gitleaks", "opsconductor"), rule.id
        for line in [c["line"] for c in CORPUS["credentials"]] + CORPUS["benign"]:
            if rule.regex.search(line):  # the prefilter may never hide a match
                assert any(k in line.lower() for k in rule.keywords), (rule.id, line)
    with pytest.raises(ValueError, match=r"rule 'bad'.*RE2"):
        load_rules("[[rules]]\nid = 'bad'\nregex = '(a)\\1'\nkeywords = ['a']\n")
    with pytest.raises(ValueError, match="lower-case keywords"):
        load_rules("[[rules]]\nid = 'up'\nregex = 'x'\nkeywords = ['X']\n")


@pytest.mark.parametrize("hostile", [
    "password=" * 40_000, "a:" * 150_000, "://" + ":" * 200_000 + "@",
    "Bearer " + "a" * 300_000, "-----BEGIN RSA PRIVATE KEY-----" + "A" * 300_000,
    "mysql " + " -p" * 100_000, "curl " + " -u a:" * 60_000, "--pass " * 50_000,
    '{"token": "' + "\\\\" * 100_000, "1 " * 150_000, "sig=" * 70_000,
    "aws_secret_access_key " * 20_000,
], ids=lambda s: s[:12])
def test_hostile_input_is_masked_in_linear_time(masker: Masker, hostile: str) -> None:
    started = time.monotonic()
    masker.mask_text(hostile)
    elapsed = time.monotonic() - started
    print(f"{hostile[:12]!r} x{len(hostile)}: {elapsed * 1000:.0f} ms")
    assert elapsed < 3.0, f"{len(hostile)} hostile characters took {elapsed:.1f}s"
