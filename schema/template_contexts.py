"""Where a template value lands decides how it is made safe: data never becomes code.

`schema/templates.py` finds placeholders and reads their values; this module substitutes them
according to the syntax around them. Pure and deterministic (no I/O), like the templates.

* **SQL** (`sql_query`, `psql`: the `query` input). A placeholder becomes a bound parameter
  `$N` (numbered after the step's own `params`), its value passed as a parameter and never
  spliced into the text. A placeholder that is a whole quoted literal, `'{{x}}'` (or
  `E'{{x}}'`), becomes `$N` too: the quotes go with it. A placeholder inside a longer string
  literal, a quoted identifier, a comment or a dollar-quoted body cannot be bound and is
  refused at submission (write `'%' || {{x}} || '%'` for a pattern), as is a query that is
  one placeholder. A placeholder where SQL takes no value (`FROM {{t}}`) binds too, and the
  database refuses the statement: it fails, never runs other SQL.
* **URL** (`http_request`, `api-request`: the `url`). Each placeholder is percent-encoded for
  the component it sits in: a path segment (everything but unreserved characters encoded,
  `/` included, so a value stays one segment; a value that would make the segment `.` or `..`
  is refused), a query key or value (`&`, `=`, `#`, `+` encoded), the fragment. A placeholder
  in the host is a fixed-structure position: its value must be a hostname label sequence or
  an IP address (the whole host), else the step fails; a port placeholder must be the whole
  port and its value a port number. The scheme, userinfo, a template without a literal
  `scheme://`, and a whole URL from data are refused at submission.
* **Headers**: names are never templated (refused at submission); a value whose substituted
  text holds CR, LF or NUL fails the step, and a header written with CR or LF is refused at
  submission.
* **File paths** (`file_transfer`: `source`, `destination`). A placeholder's value stays
  inside one path component: a value holding `/`, `\\`, NUL or another control character, or
  one that makes its component `.` or `..`, or an empty one, fails the step. A templated path
  must begin with literal text that fixes where it is (`/`, `~/`): a path that is one
  placeholder, or that begins with one, is refused at submission.
* **JSON bodies** (`json`, a dict/list `body`): substituted as structure: a string that is
  exactly one placeholder takes the value itself (number, list, object), a placeholder inside
  a longer string adds text to that JSON string, which the encoder escapes. A text `body`
  with placeholders must be JSON text (`{"n": {{x}}}` or `{"n": "{{x}}"}`); it is parsed and
  sent as JSON. A text body that is not JSON cannot be made safe and is refused.
"""

from __future__ import annotations

import ipaddress
import json
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


class ContextError(ValueError):
    """A value that its position cannot take safely (reported on the step at run time)."""


@dataclass(frozen=True)
class Problem:
    """A placeholder (by its text) that no context can make safe, for the submission error."""

    key: str  # the input key: "query", "url", "headers.X-Trace", "body"
    text: str  # the placeholder's "{{ ... }}", "" for a problem of the input itself
    message: str


# ---------------------------------------------------------------- SQL

SqlSlot = Literal["code", "literal"]
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def _sql_scan(query: str) -> tuple[list[str | tuple[str, SqlSlot]], list[tuple[str, str]]]:
    """The query as literal text pieces and bindable placeholders, plus (placeholder text,
    why) for those that cannot be bound. A one-pass lexer of PostgreSQL's quoting forms."""
    pieces: list[str | tuple[str, SqlSlot]] = []
    bad: list[tuple[str, str]] = []
    buf: list[str] = []
    i, n = 0, len(query)

    def flush() -> None:
        if buf:
            pieces.append("".join(buf))
            buf.clear()

    def refuse(body: str, where: str) -> None:
        for m in PLACEHOLDER.finditer(body):
            bad.append((m.group(0), where))

    while i < n:
        c = query[i]
        m = PLACEHOLDER.match(query, i)
        if m:
            flush()
            pieces.append((m.group(0), "code"))
            i = m.end()
            continue
        if c == "'" or (c in "eE" and query[i + 1:i + 2] == "'"
                        and not (i and (query[i - 1].isalnum() or query[i - 1] == "_"))):
            escapes = c != "'"
            start = i
            j = i + (2 if escapes else 1)
            while j < n:
                if escapes and query[j] == "\\":
                    j += 2
                    continue
                if query[j] == "'":
                    if query[j + 1:j + 2] == "'":
                        j += 2
                        continue
                    break
                j += 1
            end = min(j + 1, n)
            body = query[start + (2 if escapes else 1):j]
            whole = PLACEHOLDER.fullmatch(body)
            if whole:
                flush()
                pieces.append((whole.group(0), "literal"))
            else:
                refuse(body, "inside a longer SQL string literal; bind it whole: "
                       "'%' || {{x}} || '%'")
                buf.append(query[start:end])
            i = end
            continue
        if c == '"':
            j = query.find('"', i + 1)
            while j != -1 and query[j + 1:j + 2] == '"':
                j = query.find('"', j + 2)
            end = n if j == -1 else j + 1
            refuse(query[i:end], "inside a quoted SQL identifier (identifiers cannot be bound)")
            buf.append(query[i:end])
            i = end
            continue
        if query.startswith("--", i):
            j = query.find("\n", i)
            end = n if j == -1 else j
            refuse(query[i:end], "inside an SQL comment")
            buf.append(query[i:end])
            i = end
            continue
        if query.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if query.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif query.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            refuse(query[i:j], "inside an SQL comment")
            buf.append(query[i:j])
            i = j
            continue
        if c == "$":
            tag = _DOLLAR_TAG.match(query, i)
            if tag and not (i and (query[i - 1].isalnum() or query[i - 1] == "_")):
                close = query.find(tag.group(0), tag.end())
                end = n if close == -1 else close + len(tag.group(0))
                refuse(query[i:end], "inside a dollar-quoted SQL body")
                buf.append(query[i:end])
                i = end
                continue
        buf.append(c)
        i += 1
    flush()
    return pieces, bad


def sql_problems(query: str) -> list[Problem]:
    """Placeholders of an SQL query that cannot become bound parameters (or that would be
    the whole statement)."""
    whole = PLACEHOLDER.fullmatch(query.strip().rstrip(";").strip())
    if whole:
        return [Problem("query", whole.group(0), f"{whole.group(0)} is the whole SQL statement: "
                        "a query cannot come from data; write it and bind the values")]
    _, bad = _sql_scan(query)
    return [Problem("query", text, f"{text} sits {why}") for text, why in bad]


def render_sql(query: str, params: list[Any], value: Callable[[str], Any]) -> tuple[str, list]:
    """`query` with every placeholder as `$N` and `params` extended by their values.

    `value(text)` gives a placeholder's value (it raises when absent). Raises ContextError
    for a placeholder that cannot be bound (refused at submission already)."""
    pieces, bad = _sql_scan(query)
    if bad:
        text, why = bad[0]
        raise ContextError(f"{text} sits {why}")
    out: list[str] = []
    bound = list(params)
    for piece in pieces:
        if isinstance(piece, str):
            out.append(piece)
            continue
        text, slot = piece
        got = value(text)
        bound.append(got)
        out.append(f"${len(bound)}")
        # A quoted literal was text: keep it text whatever the value (`'{{x}}'` of a number).
        if slot == "literal" and not isinstance(got, str):
            bound[-1] = "" if got is None else (json.dumps(got) if isinstance(got, dict | list)
                                                else str(got))
    return "".join(out), bound


# ---------------------------------------------------------------- URL

UrlSlot = Literal["host", "host_part", "port", "path", "query", "fragment"]
_SENTINEL = "zqopscph{}zq"
_SENTINEL_RX = re.compile(r"zqopscph(\d+)zq")
_LABELS = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
                     r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*\.?$")


def _mark(url: str, matches: list[re.Match[str]]) -> str:
    """The URL with its n-th placeholder replaced by a sentinel holding no URL delimiter."""
    out, pos = [], 0
    for n, m in enumerate(matches):
        out += [url[pos:m.start()], _SENTINEL.format(n)]
        pos = m.end()
    return "".join([*out, url[pos:]])


def _url_slots(url: str) -> tuple[list[UrlSlot | None], list[Problem]]:
    """The component of each placeholder occurrence (in order), and what cannot be made safe.
    None marks an occurrence that was refused."""
    matches = list(PLACEHOLDER.finditer(url))
    if not matches:
        return [], []
    texts = [m.group(0) for m in matches]
    marked = _mark(url, matches)
    slots: list[UrlSlot | None] = [None] * len(matches)
    problems: list[Problem] = []

    def refuse(part: str, why: str) -> None:
        for m in _SENTINEL_RX.finditer(part):
            problems.append(Problem("url", texts[int(m.group(1))], why))

    head = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*):(//)?", marked)
    if head is None or not head.group(2):
        refuse(marked, "makes the URL (or its scheme and host) come from data; write the "
               "scheme and host literally, e.g. https://host/path/{{x}}")
        return slots, problems
    if _SENTINEL_RX.search(head.group(1)):
        refuse(head.group(1), "sits in the URL scheme, which cannot come from data")
    rest = marked[head.end():]
    cut = min([p for p in (rest.find(ch) for ch in "/?#") if p != -1], default=len(rest))
    netloc, rest = rest[:cut], rest[cut:]
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        refuse(userinfo, "sits in the URL's userinfo; credentials are secret references")
    if hostport.startswith("["):
        close = hostport.find("]")
        host, port = hostport[:close + 1], hostport[close + 1:].removeprefix(":")
    else:
        host, _, port = hostport.partition(":")
    for m in _SENTINEL_RX.finditer(host):
        slots[int(m.group(1))] = "host" if m.group(0) == host else "host_part"
    whole_port = _SENTINEL_RX.fullmatch(port)
    if whole_port:
        slots[int(whole_port.group(1))] = "port"
    elif _SENTINEL_RX.search(port):
        refuse(port, "is part of the URL's port; a port placeholder must be the whole port")
    before_fragment, _, frag = rest.partition("#")
    path, _, query = before_fragment.partition("?")
    parts: tuple[tuple[str, UrlSlot], ...] = ((path, "path"), (query, "query"),
                                              (frag, "fragment"))
    for part, slot in parts:
        for m in _SENTINEL_RX.finditer(part):
            slots[int(m.group(1))] = slot
    return slots, problems


def url_problems(url: str) -> list[Problem]:
    """Placeholders of a URL template that no encoding can make safe."""
    return _url_slots(url)[1]


def _host_value(text: str, whole: bool) -> str:
    if whole:
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            return f"[{addr}]" if addr.version == 6 else str(addr)
    if len(text) <= 253 and _LABELS.match(text):
        return text
    raise ContextError(f"{text[:80]!r} is not a hostname{' or IP address' if whole else ''} "
                       "and cannot stand in the URL's host")


def encode_url_value(value: Any, slot: UrlSlot) -> str:
    """One value encoded for its URL component (ContextError when it cannot stand there)."""
    text = _text(value)
    if slot in ("host", "host_part"):
        return _host_value(text, slot == "host")
    if slot == "port":
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise ContextError(f"{text[:40]!r} is not a port number")
        return str(int(text))
    return urllib.parse.quote(text, safe="")


def render_url(url: str, value: Callable[[str], Any]) -> str:
    """The URL with each placeholder encoded for its component (ContextError if unsafe)."""
    slots, problems = _url_slots(url)
    if problems:
        raise ContextError(f"{problems[0].text} {problems[0].message}")
    count = iter(range(len(slots)))

    def sub(m: re.Match[str]) -> str:
        slot = slots[next(count)]
        assert slot is not None
        return encode_url_value(value(m.group(0)), slot)

    out = PLACEHOLDER.sub(sub, url)
    if slots and "path" in slots:
        path = urllib.parse.urlsplit(out).path
        if any(seg in (".", "..") for seg in path.split("/")):
            raise ContextError(f"a template value makes a '.' or '..' segment in the path "
                               f"{path[:120]!r}; a value must stay inside its segment")
    return out


# ---------------------------------------------------------------- headers

_CONTROL = re.compile(r"[\r\n\x00]")


def header_problems(headers: Mapping[str, Any]) -> list[Problem]:
    """Header names from data, and CR/LF written into a header (request splitting)."""
    out = []
    for name, value in headers.items():
        for m in PLACEHOLDER.finditer(str(name)):
            out.append(Problem(f"headers.{name}", m.group(0),
                               "sits in a header name; names are never templated"))
        if _CONTROL.search(str(name)):
            out.append(Problem(f"headers.{name}", "", "a header name holds CR, LF or NUL"))
        if isinstance(value, str) and _CONTROL.search(value):
            out.append(Problem(f"headers.{name}", "", "a header value holds CR, LF or NUL "
                               "(it would split the request)"))
    return out


def header_value(name: str, text: str) -> str:
    """A rendered header value, refused when a substituted value brought CR, LF or NUL."""
    if _CONTROL.search(text):
        raise ContextError(f"header {name!r}: a template value holds CR, LF or NUL; refused "
                           "(it would split the request)")
    return text


# ---------------------------------------------------------------- JSON text bodies

def json_template(body: str) -> Any:
    """A JSON text body with placeholders as a JSON structure whose strings hold them: a bare
    placeholder (`{"n": {{x}}}`) becomes the string `"{{x}}"`, to be substituted as a value.
    ValueError when the text is not JSON."""
    out: list[str] = []
    i, n, in_string = 0, len(body), False
    while i < n:
        c = body[i]
        if in_string:
            if c == "\\":
                out.append(body[i:i + 2])
                i += 2
                continue
            if c == '"':
                in_string = False
            out.append(c)
            i += 1
            continue
        m = PLACEHOLDER.match(body, i)
        if m:
            out.append(json.dumps(m.group(0)))
            i = m.end()
            continue
        if c == '"':
            in_string = True
        out.append(c)
        i += 1
    return json.loads("".join(out))


def body_problems(body: str) -> list[Problem]:
    """A text body with placeholders that is not JSON: nothing can make the value safe."""
    if not PLACEHOLDER.search(body):
        return []
    try:
        json_template(body)
    except ValueError:
        return [Problem("body", m.group(0), "sits in a text body that is not JSON: no "
                        "encoding makes it safe; send `json` (values are substituted as JSON) "
                        "or pass it in `query`") for m in PLACEHOLDER.finditer(body)]
    return []


# ---------------------------------------------------------------- file paths

PATH_KEYS = ("source", "destination")
_PATH_BAD = re.compile(r"[/\\\x00-\x1f\x7f]")


def path_problems(key: str, path: str) -> list[Problem]:
    """Placeholders of a file path whose directory would come from data."""
    matches = list(PLACEHOLDER.finditer(path))
    if not matches or path.startswith(("/", "~/")):
        return []
    return [Problem(key, m.group(0), "makes the path (or where it starts) come from data; "
                    "write its directory literally, e.g. /var/tmp/{{x}}.log") for m in matches]


def render_path(key: str, path: str, value: Callable[[str], Any]) -> str:
    """The path with each placeholder's value kept inside one component (ContextError when
    a value would leave it or the path starts with data)."""
    problems = path_problems(key, path)
    if problems:
        raise ContextError(f"{problems[0].text} {problems[0].message}")

    def sub(m: re.Match[str]) -> str:
        text = _text(value(m.group(0)))
        if not text or _PATH_BAD.search(text):
            raise ContextError(f"{m.group(0)} in {key}: the value {text[:80]!r} is empty or "
                               "holds '/', '\\' or a control character; a value must stay "
                               "one path component")
        return text

    matches = list(PLACEHOLDER.finditer(path))
    parts = []
    for component in _mark(path, matches).split("/"):
        held = _SENTINEL_RX.sub(lambda m: sub(matches[int(m.group(1))]), component)
        if held in (".", "..") and held != component:
            raise ContextError(f"a template value makes a {held!r} component in {key}; a "
                               "value must stay inside its component")
        parts.append(held)
    return "/".join(parts)


# ---------------------------------------------------------------- per step kind

def input_problems(kind: str, inputs: Mapping[str, Any]) -> list[Problem]:
    """Every placeholder of a step's (normalized) inputs that its context cannot make safe,
    and header text that would split a request. Empty for kinds without such contexts."""
    problems: list[Problem] = []
    if kind == "sql" and isinstance(inputs.get("query"), str):
        problems += sql_problems(inputs["query"])
    if kind == "http":
        if isinstance(inputs.get("url"), str):
            problems += url_problems(inputs["url"])
        if isinstance(inputs.get("headers"), Mapping):
            problems += header_problems(inputs["headers"])
        if isinstance(inputs.get("body"), str):
            problems += body_problems(inputs["body"])
    if kind == "file_transfer":
        problems += [p for key in PATH_KEYS if isinstance(inputs.get(key), str)
                     for p in path_problems(key, inputs[key])]
    return problems


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(_text(v) for v in value)
    return "" if value is None else str(value)
