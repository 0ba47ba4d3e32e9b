"""The environment every command starts with: reset, never the worker's own.

The sudoers `env_reset` / `secure_path` model. A command (probe or free text, local or over
SSH) gets a fixed minimal set — `PATH` (the secure path), `LANG`, `LC_ALL`, `HOME`, `USER`,
`LOGNAME`, `SHELL`, `TERM` — plus the step's own `env`, nothing else. The worker's variables
(database URL, Vault token, API keys, every `OPSC_*`, `LD_PRELOAD`, `BASH_FUNC_*`, `PS4`,
`KUBECONFIG`, ...) never reach a command.

A step's `env` is part of what is authorized: a probe takes only the names in `PROBE_ENV`
with plain values (`probe_env_problems`); any other `env` or a `working_directory` makes the
step free text, which needs `shell`.
"""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Mapping

SECURE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOCALE = "C.UTF-8"
# The directory a probe runs in and the HOME it sees: nothing of the worker's.
PROBE_CWD = "/"
PROBE_HOME = "/nonexistent"
# The only step `env` names a probe accepts, with values of this shape (a time zone or a
# locale): they change how output is formatted, never what runs.
PROBE_ENV = frozenset({"TZ", "LANG", "LC_ALL", "LC_TIME", "LC_NUMERIC", "LC_MESSAGES"})
_PROBE_VALUE = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(?:[/.][A-Za-z0-9_+\-]+)*(?:@[a-z]+)?$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def probe_env_problems(env: Mapping[str, object]) -> list[str]:
    """Why this `env` cannot go with a probe (empty: it can)."""
    problems = []
    for name, value in env.items():
        if name not in PROBE_ENV:
            problems.append(f"env {name}: not a name a probe accepts "
                            f"({', '.join(sorted(PROBE_ENV))})")
        elif not isinstance(value, str) or not _PROBE_VALUE.match(value) or ".." in value:
            problems.append(f"env {name}: {value!r} is not a plain zone or locale name")
    return problems


def _account() -> tuple[str, str]:
    try:
        entry = pwd.getpwuid(os.getuid())
        return entry.pw_name, entry.pw_dir
    except KeyError:
        return str(os.getuid()), "/"


def base_env(*, probe: bool) -> dict[str, str]:
    """The reset environment of a command on this machine."""
    user, home = _account()
    return {"PATH": SECURE_PATH, "LANG": LOCALE, "LC_ALL": LOCALE, "TERM": "dumb",
            "HOME": PROBE_HOME if probe else home, "USER": user, "LOGNAME": user,
            "SHELL": "/bin/sh"}


def command_env(step_env: Mapping[str, str] | None, *, probe: bool) -> dict[str, str]:
    """The whole environment a local command gets: the reset set, then the step's names
    (a probe's were checked by `probe_env_problems`; invalid names are dropped)."""
    env = base_env(probe=probe)
    for name, value in (step_env or {}).items():
        if _NAME.match(name) and "\x00" not in value:
            env[name] = value
    return env


def remote_reset_prefix() -> str:
    """The start of a remote command line that resets the login shell's environment the same
    way (HOME/USER/LOGNAME are the remote account's own)."""
    return (f'exec /usr/bin/env -i PATH={SECURE_PATH} LANG={LOCALE} LC_ALL={LOCALE} TERM=dumb '
            'HOME="$HOME" USER="$USER" LOGNAME="$LOGNAME" SHELL=/bin/sh /bin/sh -c')


_SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|API_?KEY|PRIVATE_?KEY|"
                          r"CREDENTIAL|DATABASE_URL|DSN|AUTH)", re.IGNORECASE)


def worker_held_secrets(settings: object, environ: Mapping[str, str] | None = None) -> list[str]:
    """What the worker itself holds that no output may show: its tokens and webhook secret,
    its database password (and URL), every `OPSC_SECRET_*` value and every variable of its
    environment whose name says it is a credential. Registered with the masker at start."""
    from urllib.parse import unquote, urlsplit

    env = os.environ if environ is None else environ
    values: list[str] = []
    for name in ("vault_token", "asset_service_token", "alert_webhook_secret"):
        v = getattr(settings, name, None)
        if v is not None:
            values.append(v.get_secret_value() if hasattr(v, "get_secret_value") else str(v))
    urls = [getattr(settings, "database_url", None), getattr(settings, "test_database_url", None)]
    for name, value in env.items():
        if _SECRET_NAME.search(name) or name.startswith("OPSC_SECRET_"):
            values.append(value)
            if "://" in value:
                urls.append(value)
    for url in urls:
        if not url or "://" not in str(url):
            continue
        try:
            password = urlsplit(str(url)).password
        except ValueError:
            continue
        if password:
            values += [password, unquote(password), str(url)]
    return sorted({v for v in values if isinstance(v, str) and v})
