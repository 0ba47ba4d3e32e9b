"""Masking of secrets in text, nested outputs and log records. On by default, no opt-out.

What is masked (replaced by `***`):

- exact secret values (those resolved for a step, and the live ones a `LiveSecrets` registry
  holds while steps use them), plus their base64 (standard, URL-safe, with and without padding)
  and URL-encoded forms; values shorter than `MIN_SECRET_LENGTH` are ignored, since masking
  every occurrence of "ab" would destroy output without protecting anything;
- common patterns: the value after a sensitive key in `key=value`, `key: value` and JSON
  (`password`, `passwd`, `secret`, `token`, `api_key`, `access_key`, `private_key`,
  `client_secret`, `credential(s)`, `authorization`, `cookie`, ...), the password in URL
  userinfo (`scheme://user:PASS@host`, so every URL-style connection string), `Bearer` and
  `Basic` credentials, AWS access key ids, well-known API key formats (GitHub, GitLab, Slack,
  Stripe, Google, OpenAI-style `sk-`), JWTs, PEM private key blocks, and card numbers that pass
  the Luhn check;
- unregistered credentials, by rules kept as data in `masking_rules.toml` beside this module
  (token formats adapted from gitleaks' rule set, MIT, credited in the file's header, and
  command-line forms: `mysql -pPASS`, `sshpass -p PASS`, `curl -u user:PASS`,
  `--password=PASS` / `--password PASS`, `PGPASSWORD=PASS`, Azure `AccountKey=` and SAS
  `sig=`, an AWS secret key next to `aws_secret_access_key` or after an access key id,
  PuTTY private lines): each rule an RE2 pattern (linear time, whatever the text), compiled
  once at import, masking its `secret` group;
- custom regexes from config (`Masker(extra_patterns=[...])`) or the settings' `mask_patterns`
  (`OPSC_MASK_PATTERNS`, a JSON list of regex strings); a pattern with a group named
  `secret` (or any group) masks that group only, otherwise the whole match;
- in `mask(obj)`: every scalar under a sensitive dict key, whatever it looks like.

Not masked: a check report line (`PASS: x.exit_code == 0 -- ...`, as the `validate` tool and
the checks write them): an upper-case `PASS:` at the start of a line is the verdict, not the
short key `pass`. `pass: x`, `DB_PASS: x` and `PASS=x` still are.

Why it is fast (`bench/bench_masking.py` prints MB/s): every pattern has trigger substrings
(a data rule's `keywords`) without which it cannot match. One RE2 set of every trigger, run
once over the text (a single linear DFA pass, case-insensitive), says which are present; a
text with none (most log lines) costs that one pass. A sensitive key word selects the ONE
combined alternation of the built-in structural patterns (a leading first-character class
keeps it cheap); a line with only, say, `://` runs just the URL pattern, one with `npm_` just
that rule. Card numbers are looked for only where a cheap one-class regex finds a 13+ digit
run, and then checked with Luhn. The built-in patterns are Python `re`, written so that no
input makes them backtrack: their repetitions are over classes that cannot overlap what
follows, or bounded (`tests/edges/test_masking_corpus.py` times them on hostile input).
"""

from __future__ import annotations

import base64
import importlib.resources
import logging
import re
import threading
import tomllib
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import re2

if TYPE_CHECKING:
    from opsconductor.schema.config import Settings

MASK = "***"
MIN_SECRET_LENGTH = 4
ENV_PATTERNS = "OPSC_MASK_PATTERNS"

_SENSITIVE_WORDS = (
    r"passw(?:or)?d|passphrase|pwd|secret|(?<!fencing_)(?<!fencing )token|api[_\-]?key|apikey"
    r"|access[_\-]?key|private[_\-]?key|auth[_\-]?key|client[_\-]?secret|credentials?"
    r"|authorization|cookie|session[_\-]?(?:id|key)|signature|x-api-key"
)
# A key that contains a sensitive word (db_password, AWS_SECRET_ACCESS_KEY, X-Auth-Token) or
# is exactly one of a few short names.
_KEY = rf"[A-Za-z0-9_.\-]*?(?:{_SENSITIVE_WORDS})[A-Za-z0-9_.\-]*|pass|pw|auth"
SENSITIVE_KEY = re.compile(rf"^(?:{_KEY})$", re.IGNORECASE)

# The key/value forms stay Python `re` (they need lookaround, which RE2 lacks); every other
# built-in form is a rule of the data file. Both are linear: no repetition here can match
# what follows it, so a failed attempt never backtracks over more than the key.
_PATTERNS: list[tuple[str, str]] = [
    # JSON: "password": "value"  (value with escapes; non-string values too)
    ("json", rf"(?P<json_k>\"(?i:{_KEY})\"\s*:\s*)(?:\"(?:[^\"\\]|\\.)*\"|[^\s,\}}\]]+)"),
    # key=value, key: value, key="value", --password value is not guessable; keep to separators
    # The bare `pass` is not the verdict of a check report line (`PASS: expr`, line start).
    ("kv", rf"(?P<kv_k>(?i:(?:{_SENSITIVE_WORDS})[A-Za-z0-9_.\-]*"
           r"|(?<![A-Za-z0-9])(?:(?!(?<![^\n])(?-i:PASS):[ \t])pass|pw|auth))"
           r"(?:\\?[\"'])?\s*(?:=|:)\s*)"
           r"(?:(?i:bearer|basic|token|digest|negotiate)\s+)?"
           r"(?:\\\"(?:[^\\\"]|\\[^\"])*?\\\"|\"(?:[^\"\\]|\\.)*\"|'[^']*'"
           r"|(?!\*\*\*)[^\s,;&\"'\}\]\)<>\\]+)"),
]
# The leading class lists every branch's possible first character, so most positions are
# rejected by one C-level set test instead of trying every alternative.
_KEYVALUE = re.compile(r"(?=[\"pPsStTaAcCwW])(?:"
                       + "|".join(f"(?P<{name}>{rx})" for name, rx in _PATTERNS) + ")")
# Its triggers (a sensitive word), and a linear RE2 superset of where it can match: a key
# word, more key characters, an optional quote, a separator. Only the lines this finds (and
# the line after, for a value past a line break) run the Python pattern.
_KV_TRIGGERS = ("pass", "pw", "secret", "token", "api", "access", "private", "auth",
                "credential", "cookie", "session", "signature")
_KV_HINT_PATTERN = (r"(?i)(?:(?:passw(?:or)?d|passphrase|pwd|secret|token|api[_\-]?key|apikey"
                    r"|access[_\-]?key|private[_\-]?key|auth[_\-]?key|client[_\-]?secret"
                    r"|credential|authorization|cookie|session[_\-]?(?:id|key)|signature"
                    r"|x-api-key)[A-Za-z0-9_.\-]*|(?:^|[^A-Za-z0-9])(?:pass|pw|auth))"
                    r"(?:\\?[\"'])?\s*[=:]")


# -- credential rules kept as data (masking_rules.toml) --

RULES_FILE = "masking_rules.toml"


@dataclass(frozen=True)
class CredentialRule:
    """One rule of the data file: an RE2 pattern whose `secret` group is masked."""

    id: str
    source: str
    description: str
    pattern: str
    keywords: tuple[str, ...]
    regex: Any  # re2 compiled pattern
    group: int  # the group masked; 0 means the whole match, -1 the first that took part


def _re2_options(*, literal: bool = False, case_sensitive: bool = True) -> re2.Options:
    options = re2.Options()
    options.log_errors = False
    options.literal = literal
    options.case_sensitive = case_sensitive
    return options


def load_rules(text: str | None = None) -> tuple[CredentialRule, ...]:
    """The rules of `masking_rules.toml` (or of `text`); ValueError naming the rule that is
    malformed, so a bad edit of the data file fails at import, never silently."""
    if text is None:
        text = importlib.resources.files("opsconductor.safety").joinpath(RULES_FILE).read_text()
    doc = tomllib.loads(text)
    rules: list[CredentialRule] = []
    seen: set[str] = set()
    for n, raw in enumerate(doc.get("rules", [])):
        rid = str(raw.get("id") or f"rules[{n}]")
        keywords = tuple(str(k) for k in raw.get("keywords") or ())
        if rid in seen or not keywords or any(k != k.lower() or not k for k in keywords):
            raise ValueError(f"masking rule {rid!r}: needs a unique id and lower-case keywords")
        seen.add(rid)
        try:
            regex = re2.compile(str(raw["regex"]), _re2_options())
        except (KeyError, re2.error) as err:
            raise ValueError(f"masking rule {rid!r}: RE2 cannot compile its regex: {err}") \
                from None
        secret = raw.get("secret", "secret" if "secret" in regex.groupindex else None)
        group = (regex.groupindex[secret] if isinstance(secret, str) and secret in
                 regex.groupindex else int(secret) if isinstance(secret, int)
                 else -1 if regex.groups else 0)
        if isinstance(secret, str) and secret not in regex.groupindex:
            raise ValueError(f"masking rule {rid!r}: no group named {secret!r}")
        rules.append(CredentialRule(rid, str(raw.get("source", "")),
                                    str(raw.get("description", "")), str(raw["regex"]),
                                    keywords, regex, group))
    return tuple(rules)


RULES = load_rules()


def _rule_sub(rule: CredentialRule, mask: str | bytes) -> Any:
    """The replacement function of `rule` for RE2's sub (str or bytes text)."""
    def sub(m: Any) -> Any:
        g = rule.group
        if g == -1:
            g = next((i for i in range(1, rule.regex.groups + 1) if m.start(i) >= 0), 0)
        start, end = m.span(g)
        whole = m.group(0)
        if start < 0 or start == end:
            return whole
        s0 = m.start()
        return whole[: start - s0] + mask + whole[end - s0:]
    return sub


_RULE_SUBS = tuple((_rule_sub(r, MASK), _rule_sub(r, MASK.encode())) for r in RULES)

# Every trigger of the built-in groups and of the data rules in one RE2 set: one pass over
# the text tells which are present (including overlapping ones: `sshpass` and `pass`).
_TRIGGER_LIST: tuple[str, ...] = tuple(dict.fromkeys(
    [*_KV_TRIGGERS, *(k for rule in RULES for k in rule.keywords)]))
_TRIGGER_SET = re2.Set.SearchSet(_re2_options(literal=True, case_sensitive=False))
for _t in _TRIGGER_LIST:
    _TRIGGER_SET.Add(_t)
_TRIGGER_SET.Compile()
_KV_HINT = re2.compile(_KV_HINT_PATTERN, _re2_options())
_KV_OF = frozenset(i for i, t in enumerate(_TRIGGER_LIST) if t in _KV_TRIGGERS)
_RULES_OF: tuple[frozenset[int], ...] = tuple(
    frozenset(r for r, rule in enumerate(RULES) if t in rule.keywords) for t in _TRIGGER_LIST)


def _view(s: str) -> str | bytes:
    """What RE2 scans: the ASCII bytes of an ASCII text (its offsets are the text's, and RE2's
    wrapper skips converting them), else the text; bytes with the surrogates escaped for a
    text that cannot be encoded (offsets then differ: `_spans` falls back)."""
    if s.isascii():
        return s.encode("ascii")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (bytes decoded with surrogateescape)
        return s.encode("utf-8", "surrogateescape")
    return s


def _spans(rx: Any, s: str, view: str | bytes) -> list[tuple[int, int]] | None:
    """Offsets in `s` of `rx`'s matches, or None when `view` cannot give them."""
    if isinstance(view, bytes) and len(view) != len(s):
        return None
    return [m.span() for m in rx.finditer(view)]


def _key_values(s: str, view: str | bytes) -> str:
    """The key/value patterns over the lines the RE2 hint finds (the only places they can
    match, with the next line for a value past a line break); nothing else is scanned."""
    hints = _spans(_KV_HINT, s, view)
    if hints is None:
        return _KEYVALUE.sub(_builtin_sub, s)
    return _around(s, hints, _lines_of,
                   lambda window: _KEYVALUE.sub(_builtin_sub, window))


def _lines_of(s: str, pos: int, start: int, end: int) -> tuple[int, int]:
    """The lines of a key/value hint, with the next line (a value past a line break)."""
    begin = max(pos, s.rfind("\n", 0, start) + 1)
    stop = s.find("\n", end)
    stop = len(s) if stop == -1 else s.find("\n", stop + 1)
    return begin, len(s) if stop == -1 else stop


def _around(s: str, hints: list[tuple[int, int]],
            window: Callable[[str, int, int, int], tuple[int, int]],
            sub: Callable[[str], str]) -> str:
    """`sub` over the windows of `s` around the RE2 hints (`window(s, pos, start, end)`, never
    before `pos`, the end of the last one), the text between them copied as it is."""
    out: list[str] = []
    pos = 0
    for start, end in hints:
        if end <= pos:
            continue
        begin, stop = window(s, pos, start, end)
        out += [s[pos:begin], sub(s[begin:stop])]
        pos = stop
    out.append(s[pos:])
    return "".join(out)


def _apply_rule(n: int, s: str, view: str | bytes) -> str:
    """Rule `n` over `s`: one RE2 search of the scan view first, the substitution only when
    the rule matches somewhere (most keyword hits are not credentials)."""
    rx = RULES[n].regex
    if rx.search(view) is None:
        return s
    if isinstance(view, bytes) and len(view) == len(s):  # ASCII: no offset conversions
        return rx.sub(_RULE_SUBS[n][1], view).decode("ascii")
    try:
        return rx.sub(_RULE_SUBS[n][0], s)
    except UnicodeEncodeError:
        raw = rx.sub(_RULE_SUBS[n][1], s.encode("utf-8", "surrogateescape"))
        return raw.decode("utf-8", "surrogateescape")


# A run of digits inside a word (a hex digest, a UUID, an id) is not a card number.
_CARD = re.compile(r"(?<![0-9A-Za-z])\d(?:[ \-]?\d){12,18}(?![0-9A-Za-z])")
# Where card numbers can be: 13 or more digits with single separators, found by RE2.
_CARD_HINT = re2.compile(r"[0-9](?:[ \-]?[0-9]){12,}", _re2_options())


def _cards(s: str) -> str:
    """Card numbers masked, the Python pattern run only around the digit runs RE2 found."""
    view = _view(s)
    hints = _spans(_CARD_HINT, s, view)
    if hints is None:
        return _CARD.sub(_card_sub, s)
    return _around(s, hints, _digit_run, lambda window: _CARD.sub(_card_sub, window))


def _digit_run(s: str, pos: int, start: int, end: int) -> tuple[int, int]:
    """A digit run with one character either side: the pattern's own boundary tests."""
    return max(pos, start - 1), min(len(s), end + 1)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_sub(m: re.Match[str]) -> str:
    s = m.string
    start = m.start()
    if start and s[start - 1].isdigit():
        return m.group(0)
    text = m.group(0)
    digits = text.replace(" ", "").replace("-", "")
    if 13 <= len(digits) <= 19 and _luhn_ok(digits):
        return MASK
    return text


def _builtin_sub(m: re.Match[str]) -> str:
    name = m.lastgroup
    key = m.group(f"{name}_k")
    rest = m.group(0)[len(key):]
    if rest[:2] == '\\"':
        return f'{key}\\"{MASK}\\"'
    if rest[:1] in ('"', "'"):
        return f"{key}{rest[0]}{MASK}{rest[0]}"
    return key + MASK


def secret_forms(value: str) -> set[str]:
    """The value and the encodings it commonly leaks in: base64 (std/url, padded or not), URL."""
    if len(value) < MIN_SECRET_LENGTH:
        return set()
    raw = value.encode("utf-8")
    forms = {value}
    for enc in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
        forms.add(enc)
        forms.add(enc.rstrip("="))
    forms.add(urllib.parse.quote(value, safe=""))
    forms.add(urllib.parse.quote_plus(value))
    forms.add(urllib.parse.quote(value))
    return {f for f in forms if len(f) >= MIN_SECRET_LENGTH}


def _compile_custom(patterns: Iterable[str | re.Pattern[str]]) -> list[re.Pattern[str]]:
    out = []
    for p in patterns:
        try:
            out.append(p if isinstance(p, re.Pattern) else re.compile(p))
        except re.error as err:
            raise ValueError(f"invalid mask pattern {p!r}: {err}") from err
    return out


def patterns_from_env(env: dict[str, str] | None = None) -> list[str]:
    """Custom patterns from `OPSC_MASK_PATTERNS` (JSON list of regex strings), through the
    settings; ValueError naming the variable when it is malformed."""
    from opsconductor.schema.config import load_settings

    return list(load_settings(env).mask_patterns)


def _custom_sub(m: re.Match[str]) -> str:
    if m.re.groups == 0:
        return MASK
    group: str | int = "secret" if "secret" in m.re.groupindex else 1
    start, end = m.span(group)
    if start < 0:
        return m.group(0)
    s0 = m.start()
    text = m.group(0)
    return text[: start - s0] + MASK + text[end - s0:]


class Masker:
    """Masks secrets in text and nested structures; immutable, cheap to derive with secrets."""

    __slots__ = ("_custom", "_key_cache", "_literals")

    def __init__(self, extra_patterns: Iterable[str | re.Pattern[str]] | None = None,
                 secrets: Iterable[str] = (), *, use_env: bool = True):
        patterns = list(extra_patterns or [])
        if use_env:
            patterns += patterns_from_env()  # only when no settings are at hand
        self._custom = _compile_custom(patterns)
        self._literals = self._literal_list(secrets)
        self._key_cache: dict[str, bool] = {}

    @classmethod
    def from_settings(cls, settings: Settings,
                      extra_patterns: Iterable[str | re.Pattern[str]] = ()) -> Masker:
        """The masker a worker builds once: built-in patterns plus the configured ones."""
        return cls([*extra_patterns, *settings.mask_patterns], use_env=False)

    @staticmethod
    def _literal_list(values: Iterable[str]) -> tuple[str, ...]:
        forms: set[str] = set()
        for v in values:
            if isinstance(v, str):
                forms |= secret_forms(v)
        return tuple(sorted(forms, key=len, reverse=True))  # longest first: no partial leaks

    def with_secrets(self, values: Iterable[str]) -> Masker:
        """A masker that also masks these exact values (and their encodings)."""
        new = Masker.__new__(Masker)
        new._custom = self._custom
        new._key_cache = self._key_cache
        extra = self._literal_list(values)
        new._literals = tuple(sorted(set(self._literals) | set(extra), key=len, reverse=True))
        return new

    def mask_text(self, s: str) -> str:
        if not s:
            return s
        if self._literals:
            for lit in self._literals:
                if lit in s:
                    s = s.replace(lit, MASK)
        view = _view(s)
        hits = _TRIGGER_SET.Match(view)
        if not hits:  # the common case: one linear pass found no trigger at all
            return self._finish(s)
        rules: set[int] = set()
        for t in hits:
            rules |= _RULES_OF[t]
        if not _KV_OF.isdisjoint(hits):  # a key word: `password=...` before the formats
            s = _key_values(s, view)
            view = _view(s)
        for n in sorted(rules):
            masked = _apply_rule(n, s, view)
            if masked is not s:
                s, view = masked, _view(masked)
        return self._finish(s)

    def _finish(self, s: str) -> str:
        if len(s) >= 13:
            s = _cards(s)
        if self._custom:
            for rx in self._custom:
                s = rx.sub(_custom_sub, s)
        return s

    def is_sensitive_key(self, key: str) -> bool:
        hit = self._key_cache.get(key)
        if hit is None:
            hit = SENSITIVE_KEY.match(key) is not None
            if len(self._key_cache) < 10_000:
                self._key_cache[key] = hit
        return hit

    def mask(self, obj: Any) -> Any:
        """Mask recursively: dict/list/tuple/set/str/bytes; keys are kept, scalars under a
        sensitive key are replaced whole."""
        if isinstance(obj, str):
            return self.mask_text(obj)
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                if (isinstance(k, str) and v is not None and not isinstance(v, (dict, list, tuple))
                        and self.is_sensitive_key(k) and not isinstance(v, bool)):
                    out[k] = MASK
                else:
                    out[k] = self.mask(v)
            return out
        if isinstance(obj, list):
            return [self.mask(v) for v in obj]
        if isinstance(obj, tuple):
            return tuple(self.mask(v) for v in obj)
        if isinstance(obj, (set, frozenset)):
            return type(obj)(self.mask(v) for v in obj)
        if isinstance(obj, (bytes, bytearray)):
            return self.mask_text(bytes(obj).decode("utf-8", "surrogateescape")).encode(
                "utf-8", "surrogateescape")
        return obj


# -- the live secret values: what every log record of a worker is masked with --


class LiveSecrets:
    """The secret values in use right now, reference counted (two steps using the same secret
    do not unmask each other); a log filter masks them while they are registered.

    One per log filter: the worker takes the one of the filter it installs on the root logger
    and hands it to the step activities.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[str, int] = {}
        self.generation = 0

    def register(self, values: Iterable[str]) -> None:
        with self._lock:
            for v in values:
                if isinstance(v, str) and len(v) >= MIN_SECRET_LENGTH:
                    self._live[v] = self._live.get(v, 0) + 1
            self.generation += 1

    def forget(self, values: Iterable[str]) -> None:
        with self._lock:
            for v in values:
                n = self._live.get(v)
                if n is None:
                    continue
                if n <= 1:
                    del self._live[v]
                else:
                    self._live[v] = n - 1
            self.generation += 1

    def snapshot(self) -> tuple[int, list[str]]:
        """(generation, values), consistent with each other."""
        with self._lock:
            return self.generation, list(self._live)

    def values(self) -> list[str]:
        return self.snapshot()[1]


class MaskingLogFilter(logging.Filter):
    """Masks a record's formatted message, exception and stack text; never drops a record.

    The message is formatted first (`msg % args`) and stored back with `args=None`, because a
    secret may sit in an argument. Exception text is rendered, masked and kept in `exc_text`
    while `exc_info` is cleared, so no handler can re-render the raw exception.
    """

    def __init__(self, masker: Masker | None = None, live: LiveSecrets | None = None):
        super().__init__()
        self._base = masker or Masker()
        self.live = live or LiveSecrets()
        self._masker = self._base
        self._generation = -1
        self._formatter = logging.Formatter()

    def _current(self) -> Masker:
        gen, values = self.live.snapshot()
        self._masker = self._base.with_secrets(values)
        self._generation = gen
        return self._masker

    def filter(self, record: logging.LogRecord) -> bool:
        masker = (self._masker if self._generation == self.live.generation
                  else self._current())
        msg = record.msg
        if not isinstance(msg, str):
            msg = str(msg)
        if record.args:
            try:
                msg = msg % record.args  # what LogRecord.getMessage does, minus a call
            except Exception:  # a bad format string must not lose the record (or leak args)
                msg = f"{msg} {record.args!r}"
        record.msg = masker.mask_text(msg)
        record.args = None
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self._formatter.formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = masker.mask_text(record.exc_text)
        if record.stack_info:
            record.stack_info = masker.mask_text(record.stack_info)
        return True


def install_log_masking(logger: logging.Logger | None = None,
                        masker: Masker | None = None) -> MaskingLogFilter:
    """Install one MaskingLogFilter on the logger (root by default) and all its handlers.

    Its `live` registry is what the step activities register their secret values with.

    Filters on a logger only see records logged to that logger itself, not those propagated
    from children, hence the handlers too. Idempotent; call again after adding handlers.
    """
    target = logger or logging.getLogger()
    existing = next((f for f in target.filters if isinstance(f, MaskingLogFilter)), None)
    filt = existing or MaskingLogFilter(masker)
    if existing is None:
        target.addFilter(filt)
    for handler in target.handlers:
        if not any(isinstance(f, MaskingLogFilter) for f in handler.filters):
            handler.addFilter(filt)
    return filt
