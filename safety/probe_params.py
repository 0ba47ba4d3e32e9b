"""The typed values a probe accepts: each one validated before it can become an argument.

A probe's operands are never free text: a unit name, a host, a path under an allowed root, a
bounded count. Each type here refuses anything outside its shape with a message naming it, so
`probe_for` can tell "not a probe" from "a probe with a bad value" and never pass a value that
a program could read as an option (nothing may start with `-`, and operands follow `--`).
"""

from __future__ import annotations

import ntpath
import posixpath
import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

# Files and directories a read probe (stat/head/tail/list/checksum) may read. A root ending in
# `/` admits everything below it; one without admits exactly that file. Nothing of /proc but
# the listed files: /proc/self/environ or /proc/PID/environ would hand out a process's secrets.
READ_ROOTS: tuple[str, ...] = (
    "/var/log/", "/etc/os-release", "/etc/hostname", "/etc/hosts", "/etc/resolv.conf",
    "/etc/timezone", "/etc/fstab", "/etc/nginx/", "/etc/systemd/", "/etc/apt/sources.list",
    "/etc/apt/sources.list.d/", "/etc/yum.repos.d/", "/proc/loadavg", "/proc/meminfo",
    "/proc/cpuinfo", "/proc/uptime", "/proc/version", "/proc/mounts", "/proc/swaps",
    "/proc/partitions", "/run/systemd/", "/usr/lib/os-release",
)
# Directories whose entries (names, sizes, owners: not contents) a listing probe may show.
LIST_ROOTS: tuple[str, ...] = (*READ_ROOTS, "/tmp/", "/var/tmp/", "/opt/", "/srv/",
                               "/var/www/", "/var/lib/", "/etc/")
# Never, even below an allowed root (a key under /etc/nginx, say).
DENIED_NAMES = re.compile(r"(^|/)(\.ssh|\.gnupg|id_[a-z0-9]+|.*\.key|.*\.pem|.*\.p12|.*\.pfx|"
                          r"shadow|gshadow|sudoers(\.d)?|.*secret.*|.*token.*|.*password.*|"
                          r"environ)(/|$)", re.IGNORECASE)
# Windows directories Get-ChildItem may list (a drive root itself, or below these).
WINDOWS_LIST_ROOTS: tuple[str, ...] = (
    "C:\\Windows\\", "C:\\Windows\\Temp\\", "C:\\ProgramData\\", "C:\\inetpub\\logs\\",
    "C:\\Temp\\", "C:\\Program Files\\", "C:\\Program Files (x86)\\",
)
# Windows files Get-Content / Select-String may read: logs and scratch space, never a profile,
# ProgramData (services keep keys there) or a system hive; secret-named files never.
WINDOWS_READ_ROOTS: tuple[str, ...] = (
    "C:\\Windows\\Logs\\", "C:\\Windows\\Temp\\", "C:\\inetpub\\logs\\", "C:\\Temp\\",
)

_UNIT = re.compile(r"^[A-Za-z0-9@:_.\\][A-Za-z0-9@:_.\\\-]{0,254}$")
_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,62})"
                   r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,62}))*\.?$")
_IPV6 = re.compile(r"^[0-9A-Fa-f:.]{2,45}$")
_NAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.:@+\-]{0,127}$")
_PS_NAME = re.compile(r"^[A-Za-z0-9_.*][A-Za-z0-9_.* \-]{0,127}$")
_FS_TYPE = re.compile(r"^[a-z0-9][a-z0-9_.]{0,31}$")
# A search pattern is data (grep's `--regexp=`, after which nothing is an option), one line.
_PATTERN = re.compile(r"^[^\x00\n\r]{1,256}$")
_PS_PATTERN = re.compile(r"^[A-Za-z0-9_.: \-]{1,128}$")
_PS_PROPERTY = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_SINCE = re.compile(
    r"^(?:\d{4}-\d{2}-\d{2}(?: \d{2}:\d{2}(?::\d{2})?)?|today|yesterday|now|"
    r"-\d{1,6}(?:s|m|h|d|min|sec|hour|hours|day|days)|"
    r"\d{1,6} ?(?:s|sec|secs|second|seconds|m|min|mins|minute|minutes|h|hour|hours|"
    r"d|day|days|week|weeks) ago)$")


def _no_option(v: str) -> str:
    if not v or v.startswith("-") or "\x00" in v:
        raise ValueError(f"{v!r} could be read as an option")
    return v


def unit_name(v: str) -> str:
    if not _UNIT.match(v):
        raise ValueError(f"{v!r} is not a unit name (letters, digits, @ : _ . - \\)")
    return v


def host_name(v: str) -> str:
    _no_option(v)
    if not (_HOST.match(v) or (":" in v and _IPV6.match(v))):
        raise ValueError(f"{v!r} is not a host name or IP address")
    return v


def plain_name(v: str) -> str:
    if not _NAME.match(v):
        raise ValueError(f"{v!r} is not a plain name (letters, digits, _ . : @ + -)")
    return v


def journal_time(v: str) -> str:
    if not _SINCE.match(v):
        raise ValueError(f"{v!r} is not a journal time (YYYY-MM-DD [HH:MM[:SS]], today, "
                         "yesterday, now, -1h, '2 hours ago')")
    return v


def _normal_absolute(v: str) -> str:
    _no_option(v)
    if not v.startswith("/") or (posixpath.normpath(v) != v.rstrip("/") and v != "/"):
        raise ValueError(f"{v!r} is not a normalized absolute path")
    return v


def any_path(v: str) -> str:
    """An absolute path whose contents are not read (df of its filesystem)."""
    return _normal_absolute(v)


def allowed(path: str, roots: tuple[str, ...] = READ_ROOTS) -> bool:
    if DENIED_NAMES.search(path):
        return False
    for root in roots:
        if root.endswith("/") and (path == root.rstrip("/") or path.startswith(root)):
            return True
        if path == root:
            return True
    return False


def read_path(v: str) -> str:
    """A path a probe may read: normalized, absolute, under `READ_ROOTS`, no secret name."""
    _normal_absolute(v)
    if not allowed(v):
        raise ValueError(f"{v!r} is outside the paths probes may read")
    return v


def list_path(v: str) -> str:
    """A directory a listing probe may show: under `LIST_ROOTS`, no secret name."""
    _normal_absolute(v)
    if not allowed(v, LIST_ROOTS):
        raise ValueError(f"{v!r} is outside the paths probes may list")
    return v


def windows_list_path(v: str) -> str:
    if not re.fullmatch(r"[A-Za-z]:\\[A-Za-z0-9_. ()\\\-]*", v):
        raise ValueError(f"{v!r} is not a plain absolute Windows path")
    if re.fullmatch(r"[A-Za-z]:\\*", v):  # a drive root, however many backslashes
        return v[:2] + "\\"
    norm = ntpath.normpath(v)
    if norm.rstrip("\\") != v.rstrip("\\") or ".." in v.split("\\"):
        raise ValueError(f"{v!r} is not a normalized Windows path")
    low = v.lower().rstrip("\\") + "\\"
    if not any(low.startswith(r.lower()) for r in WINDOWS_LIST_ROOTS):
        raise ValueError(f"{v!r} is outside the Windows paths probes may list")
    return v


def windows_read_path(v: str) -> str:
    """A Windows file a probe may read: a normalized path below `WINDOWS_READ_ROOTS`."""
    v = windows_list_path(v)
    low = v.lower()
    if DENIED_NAMES.search(low.replace("\\", "/")) or not any(
            low.startswith(r.lower()) and low != r.lower() for r in WINDOWS_READ_ROOTS):
        raise ValueError(f"{v!r} is outside the Windows paths probes may read")
    return v


def fs_type(v: str) -> str:
    if not _FS_TYPE.match(v):
        raise ValueError(f"{v!r} is not a filesystem type (lower-case letters, digits, _ .)")
    return v


def search_pattern(v: str) -> str:
    if not _PATTERN.match(v):
        raise ValueError("a search pattern is one line of 1-256 characters")
    return v


def ps_pattern(v: str) -> str:
    if not _PS_PATTERN.match(v):
        raise ValueError(f"{v!r} is not a plain search pattern (letters, digits, _ . : - space)")
    return v


def ps_name(v: str) -> str:
    if not _PS_NAME.match(v):
        raise ValueError(f"{v!r} is not a plain name (letters, digits, _ . * - space)")
    return v


def ps_property(v: str) -> str:
    if not _PS_PROPERTY.match(v):
        raise ValueError(f"{v!r} is not a property name")
    return v


Unit = Annotated[str, AfterValidator(unit_name)]
Host = Annotated[str, AfterValidator(host_name)]
Name = Annotated[str, AfterValidator(plain_name)]
JournalTime = Annotated[str, AfterValidator(journal_time)]
AnyPath = Annotated[str, AfterValidator(any_path)]
ReadPath = Annotated[str, AfterValidator(read_path)]
ListPath = Annotated[str, AfterValidator(list_path)]
WindowsListPath = Annotated[str, AfterValidator(windows_list_path)]
WindowsReadPath = Annotated[str, AfterValidator(windows_read_path)]
FsType = Annotated[str, AfterValidator(fs_type)]
Pattern = Annotated[str, AfterValidator(search_pattern)]
PsPattern = Annotated[str, AfterValidator(ps_pattern)]
PsName = Annotated[str, AfterValidator(ps_name)]
PsProperty = Annotated[str, AfterValidator(ps_property)]


class Params(BaseModel):
    """Base of every probe's parameters: unknown keys are refused, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)
