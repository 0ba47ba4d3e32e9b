"""The probe catalog: every read-only operation a principal without `shell` may run, one table.

Each row is a `ProbeSpec`: a name, its typed parameters (a pydantic model of
`safety.probe_params` types), and how they become a call — for a POSIX probe a fixed absolute
program and its arguments (fixed flags, values as `--opt=value`, `--` before operands), for a
PowerShell probe a fixed cmdlet and its named parameters. Nothing here is a shell line. How to
add a row: docs/probes.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from opsconductor.safety.probe_params import (
    AnyPath,
    FsType,
    Host,
    JournalTime,
    ListPath,
    Name,
    Params,
    Pattern,
    PsName,
    PsPattern,
    PsProperty,
    ReadPath,
    Unit,
    WindowsListPath,
    WindowsReadPath,
)


@dataclass(frozen=True)
class ProbeSpec:
    """One read-only operation. `program` (POSIX) or `cmdlet` (PowerShell) is fixed; `build`
    turns validated params into the argument list (POSIX) or named parameters (PowerShell)."""

    name: str
    summary: str
    params: type[Params]
    build: Callable[[Any], list[str]] | Callable[[Any], dict[str, Any]]
    program: str | None = None
    cmdlet: str | None = None
    reads_paths: bool = False  # its operands are files it reads: re-checked where it runs
    # A summary: several probes run one after the other (each its own argv), never a line.
    parts: Callable[[Any], list[tuple[str, dict[str, Any]]]] | None = None

    @property
    def platform(self) -> Literal["posix", "powershell"]:
        return "powershell" if self.cmdlet else "posix"


# ---------------------------------------------------------------- parameter shapes


class NoParams(Params):
    pass


class UnitParams(Params):
    unit: Unit


class UnitStatusParams(Params):
    unit: Unit
    lines: int = Field(10, ge=0, le=200)


UnitProperty = Literal["ActiveState", "SubState", "LoadState", "UnitFileState", "MainPID",
                       "ExecMainStatus", "ActiveEnterTimestamp", "NRestarts", "Result",
                       "MemoryCurrent", "Description"]
_DEFAULT_UNIT_PROPERTIES: tuple[UnitProperty, ...] = (
    "ActiveState", "SubState", "LoadState", "MainPID")


class UnitShowParams(Params):
    unit: Unit
    properties: list[UnitProperty] = Field(
        default_factory=lambda: list(_DEFAULT_UNIT_PROPERTIES),
        min_length=1)


class UnitListParams(Params):
    type: Literal["service", "socket", "timer", "mount", "target", "path"] = "service"
    state: Literal["running", "failed", "active", "inactive", "loaded", "all"] = "running"


class JournalParams(Params):
    unit: Unit | None = None
    lines: int = Field(100, ge=1, le=10_000)
    priority: Literal["emerg", "alert", "crit", "err", "warning", "notice", "info",
                      "debug"] | None = None
    since: JournalTime | None = None
    until: JournalTime | None = None
    kernel: bool = False


class DiskParams(Params):
    paths: list[AnyPath] = Field(default_factory=list, max_length=16)
    human: bool = True
    inodes: bool = False
    show_type: bool = False
    types: list[FsType] = Field(default_factory=list, max_length=16)
    exclude_types: list[FsType] = Field(default_factory=list, max_length=16)


class MemoryParams(Params):
    unit: Literal["bytes", "kibi", "mebi", "gibi", "human"] = "mebi"


PS_SORT = {"cpu": "-%cpu", "memory": "-%mem", "pid": "pid", "start_time": "start_time"}


class ProcessParams(Params):
    sort: Literal["cpu", "memory", "pid", "start_time"] | None = None
    pids: list[int] = Field(default_factory=list, max_length=64)


class ProcessFindParams(Params):
    name: Name
    exact: bool = True


class SocketParams(Params):
    protocols: Literal["tcp", "udp", "all"] = "all"
    processes: bool = False


class PathParams(Params):
    path: ReadPath


class ListParams(Params):
    path: ListPath
    sort: Literal["name", "time", "size"] = "name"
    human: bool = False


class FindParams(Params):
    path: ListPath
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.*?\[\]\-]{1,128}$")
    ignore_case: bool = False
    type: Literal["f", "d", "l"] | None = None
    size: str | None = Field(None, pattern=r"^[+-]?\d{1,9}[ckMG]?$")
    owner: Name | None = None
    group: Name | None = None
    max_depth: int = Field(5, ge=1, le=10)


def _find(p: FindParams) -> list[str]:
    # -P: symlinks are never followed; -xdev: one filesystem; only tests and -print, so no
    # action (-exec, -delete, -fprint) can be among them.
    tests = [*([("-iname" if p.ignore_case else "-name"), p.name] if p.name else []),
             *(["-type", p.type] if p.type else []), *(["-size", p.size] if p.size else []),
             *(["-user", p.owner] if p.owner else []), *(["-group", p.group] if p.group else [])]
    return ["-P", "--", p.path, "-xdev", "-maxdepth", str(p.max_depth), *tests, "-print"]


LS_SORT = {"name": [], "time": ["-t"], "size": ["-S"]}


class GrepParams(Params):
    pattern: Pattern
    path: ReadPath
    ignore_case: bool = False
    line_numbers: bool = False
    context: int = Field(0, ge=0, le=10)
    count_only: bool = False
    fixed_string: bool = False
    invert: bool = False
    word: bool = False
    max_matches: int = Field(1000, ge=1, le=10_000)


class LinesParams(Params):
    path: ReadPath
    lines: int = Field(20, ge=1, le=10_000)


class DnsParams(Params):
    name: Host
    family: Literal["any", "ipv4", "ipv6"] = "any"


class PingParams(Params):
    host: Host
    count: int = Field(4, ge=1, le=10)
    timeout_seconds: int = Field(2, ge=1, le=10)


class TcpParams(Params):
    host: Host
    port: int = Field(ge=1, le=65535)
    timeout_seconds: int = Field(3, ge=1, le=30)


class HttpParams(Params):
    url: str = Field(pattern=r"^https?://[A-Za-z0-9.\-\[\]:]+(?::\d{1,5})?(?:/[A-Za-z0-9._~!$&'()*+,;=:@%/\-]*)?(?:\?[A-Za-z0-9._~!$&'()*+,;=:@%/?\-]*)?$",
                     max_length=2048)
    method: Literal["GET", "HEAD"] = "GET"
    timeout_seconds: int = Field(5, ge=1, le=60)
    insecure: bool = False
    follow_redirects: bool = False  # at most 5, each again http(s) only


class ContainerListParams(Params):
    all: bool = False


class ContainerParams(Params):
    container: Name


class ContainerLogsParams(Params):
    container: Name
    lines: int = Field(100, ge=1, le=10_000)


class PackageParams(Params):
    package: Name


class VmstatParams(Params):
    delay: int = Field(1, ge=1, le=5)
    count: int = Field(2, ge=1, le=10)


class SummaryParams(Params):
    info_type: Literal["system_status", "system_metrics", "diagnostic_info"] = "system_status"
    format: Literal["detailed", "summary"] = "detailed"
    include_metrics: bool = False


_SUMMARIES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "system_status": [("uptime", {}), ("disk_usage", {}), ("memory", {})],
    "system_metrics": [("load_average", {}), ("memory", {}), ("disk_usage", {}),
                       ("vmstat", {})],
    "diagnostic_info": [("kernel", {}), ("uptime", {}), ("disk_usage", {}), ("memory", {}),
                        ("journal", {"kernel": True, "lines": 20})],
}


def _summary(p: SummaryParams) -> list[tuple[str, dict[str, Any]]]:
    parts = list(_SUMMARIES[p.info_type])
    if p.format == "summary":
        parts = parts[:1]
    if p.include_metrics:
        extra: list[tuple[str, dict[str, Any]]] = [("load_average", {}), ("memory", {})]
        parts += [x for x in extra if x not in parts]
    return parts


class PsServiceParams(Params):
    names: list[PsName] = Field(default_factory=list, max_length=32)


class PsComputerInfoParams(Params):
    properties: list[PsProperty] = Field(default_factory=list, max_length=32)


class PsChildItemParams(Params):
    path: WindowsListPath


class PsVolumeParams(Params):
    drive_letter: str | None = Field(None, pattern=r"^[A-Za-z]$")
    as_json: bool = False


class PsEventParams(Params):
    log: Literal["System", "Application", "Setup", "Security"] = "System"
    max_events: int = Field(50, ge=1, le=1000)


class PsEventLogParams(Params):
    log: Literal["System", "Application", "Setup", "Security"] = "System"
    newest: int = Field(50, ge=1, le=1000)


class PsAdParams(Params):
    limit: int = Field(200, ge=1, le=1000)


class PsContentParams(Params):
    path: WindowsReadPath
    head: int | None = Field(None, ge=1, le=10_000)
    tail: int | None = Field(None, ge=1, le=10_000)

    @model_validator(mode="after")
    def _one_bound(self) -> PsContentParams:
        if self.head is not None and self.tail is not None:
            raise ValueError("Get-Content takes head or tail, not both")
        return self


class PsItemParams(Params):
    path: WindowsListPath


class PsSelectStringParams(Params):
    pattern: PsPattern
    path: WindowsReadPath


class PsPingParams(Params):
    host: Host
    count: int = Field(4, ge=1, le=10)


class PsDnsParams(Params):
    name: Host


class PsTcpParams(Params):
    host: Host
    port: int = Field(ge=1, le=65535)


# ---------------------------------------------------------------- argument builders

# The TCP probe's whole program: a constant, the host/port/timeout arrive as argv.
TCP_CONNECT_CODE = (
    "import socket,sys\n"
    "a=sys.argv[1:]\n"
    "a=a[1:] if a[:1]==['--'] else a\n"
    "h,p,t=a[0],int(a[1]),float(a[2])\n"
    "s=socket.create_connection((h,p),timeout=t)\n"
    "print('connected to %s:%d from %s:%d'%(s.getpeername()[:2]+s.getsockname()[:2]))\n"
)


def _opt(name: str, value: object) -> list[str]:
    return [] if value is None else [f"--{name}={value}"]


def _journal(p: JournalParams) -> list[str]:
    return ["--no-pager", "--quiet", "--output=short-iso", f"--lines={p.lines}",
            *_opt("unit", p.unit), *_opt("priority", p.priority), *_opt("since", p.since),
            *_opt("until", p.until), *(["--dmesg"] if p.kernel else [])]


def _df(p: DiskParams) -> list[str]:
    return ["--portability", *(["--human-readable"] if p.human else []),
            *(["--inodes"] if p.inodes else []), *(["--print-type"] if p.show_type else []),
            *(f"--type={t}" for t in p.types), *(f"--exclude-type={t}" for t in p.exclude_types),
            "--", *p.paths]


def _grep(p: GrepParams) -> list[str]:
    flags = [("--ignore-case", p.ignore_case), ("--line-number", p.line_numbers),
             ("--count", p.count_only), ("--fixed-strings", p.fixed_string),
             ("--invert-match", p.invert), ("--word-regexp", p.word)]
    return ["--no-messages", "--binary-files=without-match", "--directories=skip",
            "--devices=skip", f"--max-count={p.max_matches}", *(f for f, on in flags if on),
            *([f"--context={p.context}"] if p.context else []), "--", p.pattern, p.path]


def _ps_content(p: PsContentParams) -> dict[str, Any]:
    bound = {"Tail": p.tail} if p.tail is not None else {"TotalCount": p.head or 10_000}
    return {"LiteralPath": p.path, **bound}


def _ps(p: ProcessParams) -> list[str]:
    select = ["-p", ",".join(str(i) for i in p.pids)] if p.pids else ["-e"]
    # the columns of `ps aux`, so readers of its output (checks, people) keep working
    return [*select, "-ww", "-o", "user,pid,%cpu,%mem,vsz,rss,tty=TTY,stat,bsdstart=START,"
            "time,args=COMMAND",
            *_opt("sort", PS_SORT.get(p.sort or ""))]


def _ss(p: SocketParams) -> list[str]:
    proto = {"tcp": ["--tcp"], "udp": ["--udp"], "all": ["--tcp", "--udp"]}[p.protocols]
    return ["--listening", "--numeric", *proto, *(["--processes"] if p.processes else [])]


def _curl(p: HttpParams) -> list[str]:
    # --disable first: no ~/.curlrc. Only http(s), also after a redirect, and none followed.
    # (curl takes no `--opt=value`: each value is its own word, and the URL follows `--`.)
    return ["--disable", "--silent", "--show-error", "--fail", "--output", "/dev/null",
            "--write-out", "%{http_code} %{time_total}s %{remote_ip}\\n",
            "--max-time", str(p.timeout_seconds), "--connect-timeout", str(p.timeout_seconds),
            "--proto", "=http,https", "--proto-redir", "=http,https",
            *(["--location"] if p.follow_redirects else []),
            "--max-redirs", "5" if p.follow_redirects else "0",
            *(["--head"] if p.method == "HEAD" else []), *(["--insecure"] if p.insecure else []),
            "--", p.url]


# In a PowerShell probe's parameters: pipe the objects to ConvertTo-Json (our fixed suffix).
JSON_OUTPUT = "__json__"


def _ps_names(p: PsServiceParams) -> dict[str, Any]:
    return {"Name": p.names} if p.names else {}


CATALOG: tuple[ProbeSpec, ...] = (
    # services and logs
    ProbeSpec("unit_status", "systemd unit status", UnitStatusParams,
              lambda p: ["status", "--no-pager", "--full", f"--lines={p.lines}", "--", p.unit],
              "/usr/bin/systemctl"),
    ProbeSpec("unit_is_active", "is a unit active", UnitParams,
              lambda p: ["is-active", "--", p.unit], "/usr/bin/systemctl"),
    ProbeSpec("unit_is_enabled", "is a unit enabled", UnitParams,
              lambda p: ["is-enabled", "--", p.unit], "/usr/bin/systemctl"),
    ProbeSpec("unit_show", "selected properties of a unit", UnitShowParams,
              lambda p: ["show", "--no-pager", f"--property={','.join(p.properties)}", "--",
                         p.unit], "/usr/bin/systemctl"),
    ProbeSpec("unit_list", "units of a type in a state", UnitListParams,
              lambda p: ["list-units", "--no-pager", "--plain", "--no-legend", f"--type={p.type}",
                         *([] if p.state == "all" else [f"--state={p.state}"]), "--all"],
              "/usr/bin/systemctl"),
    ProbeSpec("journal", "journal lines, bounded", JournalParams, _journal,
              "/usr/bin/journalctl"),
    # resources
    ProbeSpec("disk_usage", "filesystem usage", DiskParams, _df, "/usr/bin/df"),
    ProbeSpec("memory", "memory and swap", MemoryParams, lambda p: [f"--{p.unit}"],
              "/usr/bin/free"),
    ProbeSpec("processes", "process list", ProcessParams, _ps, "/usr/bin/ps"),
    ProbeSpec("process_find", "processes by name", ProcessFindParams,
              lambda p: ["--list-full", *(["--exact"] if p.exact else []), "--", p.name],
              "/usr/bin/pgrep"),
    ProbeSpec("uptime", "uptime and load", NoParams, lambda p: [], "/usr/bin/uptime"),
    ProbeSpec("load_average", "load average", NoParams, lambda p: ["--", "/proc/loadavg"],
              "/usr/bin/cat"),
    ProbeSpec("vmstat", "virtual memory statistics, bounded", VmstatParams,
              lambda p: ["--", str(p.delay), str(p.count)], "/usr/bin/vmstat"),
    ProbeSpec("cpu_info", "CPU architecture", NoParams, lambda p: [], "/usr/bin/lscpu"),
    ProbeSpec("cpu_count", "processing units", NoParams, lambda p: [], "/usr/bin/nproc"),
    ProbeSpec("block_devices", "block devices", NoParams,
              lambda p: ["--list", "--output=NAME,SIZE,TYPE,MOUNTPOINT"], "/usr/bin/lsblk"),
    ProbeSpec("mounts", "mounted filesystems", NoParams, lambda p: ["--list"],
              "/usr/bin/findmnt"),
    # system
    ProbeSpec("kernel", "kernel name, release, machine", NoParams, lambda p: ["--all"],
              "/usr/bin/uname"),
    ProbeSpec("kernel_name", "kernel name (what a bare `uname` prints)", NoParams,
              lambda p: ["--kernel-name"], "/usr/bin/uname"),
    ProbeSpec("user_name", "the account's name (what `whoami` prints)", NoParams,
              lambda p: ["--user", "--name"], "/usr/bin/id"),
    ProbeSpec("os_release", "OS release", NoParams, lambda p: ["--", "/etc/os-release"],
              "/usr/bin/cat"),
    ProbeSpec("hostname", "node name", NoParams, lambda p: ["--nodename"], "/usr/bin/uname"),
    ProbeSpec("identity", "the account probes run as", NoParams, lambda p: [], "/usr/bin/id"),
    ProbeSpec("logged_in_users", "who is logged in", NoParams, lambda p: [], "/usr/bin/who"),
    ProbeSpec("clock", "the host's clock (UTC)", NoParams,
              lambda p: ["--utc", "+%Y-%m-%dT%H:%M:%SZ"], "/usr/bin/date"),
    # network
    ProbeSpec("listening_sockets", "listening sockets", SocketParams, _ss, "/usr/bin/ss"),
    ProbeSpec("addresses", "interface addresses", NoParams,
              lambda p: ["-brief", "address", "show"], "/usr/sbin/ip"),
    ProbeSpec("routes", "routing table", NoParams, lambda p: ["route", "show"],
              "/usr/sbin/ip"),
    ProbeSpec("dns_lookup", "resolve a name", DnsParams,
              lambda p: [{"any": "ahosts", "ipv4": "ahostsv4", "ipv6": "ahostsv6"}[p.family],
                         "--", p.name], "/usr/bin/getent"),
    ProbeSpec("ping", "ICMP echo, count-bounded", PingParams,
              lambda p: ["-n", "-c", str(p.count), "-W", str(p.timeout_seconds), "-i", "1",
                         "-s", "56", "--", p.host], "/usr/bin/ping"),
    ProbeSpec("tcp_connect", "can a TCP port be reached", TcpParams,
              lambda p: ["-I", "-S", "-c", TCP_CONNECT_CODE, "--", p.host, str(p.port),
                         str(p.timeout_seconds)], "/usr/bin/python3"),
    ProbeSpec("http_health", "HTTP(S) status of a URL, no redirects", HttpParams, _curl,
              "/usr/bin/curl"),
    # files (allowed paths only)
    ProbeSpec("file_stat", "stat of an allowed path", PathParams,
              lambda p: ["--", p.path], "/usr/bin/stat", reads_paths=True),
    ProbeSpec("file_head", "first lines of an allowed file", LinesParams,
              lambda p: [f"--lines={p.lines}", "--", p.path], "/usr/bin/head", reads_paths=True),
    ProbeSpec("file_tail", "last lines of an allowed file", LinesParams,
              lambda p: [f"--lines={p.lines}", "--", p.path], "/usr/bin/tail", reads_paths=True),
    ProbeSpec("list_directory", "listing of an allowed directory", ListParams,
              lambda p: ["-l", "-a", "--time-style=long-iso", *LS_SORT[p.sort],
                         *(["--human-readable"] if p.human else []), "--", p.path],
              "/usr/bin/ls", reads_paths=True),
    ProbeSpec("file_find", "names below an allowed directory, depth-bounded", FindParams,
              _find, "/usr/bin/find", reads_paths=True),
    ProbeSpec("file_grep", "lines of an allowed file matching a pattern, bounded", GrepParams,
              _grep, "/usr/bin/grep", reads_paths=True),
    ProbeSpec("file_checksum", "SHA-256 of an allowed file", PathParams,
              lambda p: ["--", p.path], "/usr/bin/sha256sum", reads_paths=True),
    ProbeSpec("file_line_count", "line count of an allowed file", PathParams,
              lambda p: ["--lines", "--", p.path], "/usr/bin/wc", reads_paths=True),
    ProbeSpec("system_summary", "several system probes in a row (upstream's info_display)",
              SummaryParams, lambda p: [], parts=_summary),
    # containers and packages
    ProbeSpec("containers", "container list", ContainerListParams,
              lambda p: ["ps", "--no-trunc", "--format", "{{json .}}",
                         *(["--all"] if p.all else [])], "/usr/bin/docker"),
    ProbeSpec("container_inspect", "one container's configuration and state", ContainerParams,
              lambda p: ["container", "inspect", "--", p.container], "/usr/bin/docker"),
    ProbeSpec("container_logs", "a container's last log lines", ContainerLogsParams,
              lambda p: ["logs", f"--tail={p.lines}", "--", p.container], "/usr/bin/docker"),
    ProbeSpec("podman_containers", "Podman container list", NoParams,
              lambda p: ["ps", "--all", "--no-trunc", "--format=json"], "/usr/bin/podman"),
    ProbeSpec("pg_ready", "does the local PostgreSQL accept connections", NoParams,
              lambda p: ["--timeout=5"], "/usr/bin/pg_isready"),
    ProbeSpec("package_version", "installed version of a Debian package", PackageParams,
              lambda p: ["--show", "--showformat=${Package} ${Version}\\n", "--", p.package],
              "/usr/bin/dpkg-query"),
    ProbeSpec("package_version_rpm", "installed version of an RPM package", PackageParams,
              lambda p: ["--query", "--queryformat=%{NAME} %{VERSION}-%{RELEASE}\\n", "--",
                         p.package], "/usr/bin/rpm"),
    # PowerShell: a fixed cmdlet with typed parameters
    ProbeSpec("ps_get_service", "Windows services", PsServiceParams, _ps_names,
              cmdlet="Get-Service"),
    ProbeSpec("ps_get_process", "Windows processes", PsServiceParams, _ps_names,
              cmdlet="Get-Process"),
    ProbeSpec("ps_get_computer_info", "Windows computer information", PsComputerInfoParams,
              lambda p: {"Property": p.properties} if p.properties else {},
              cmdlet="Get-ComputerInfo"),
    ProbeSpec("ps_get_child_item", "listing of an allowed Windows directory", PsChildItemParams,
              lambda p: {"LiteralPath": p.path}, cmdlet="Get-ChildItem"),
    ProbeSpec("ps_get_volume", "Windows volumes", PsVolumeParams,
              lambda p: {**({"DriveLetter": p.drive_letter} if p.drive_letter else {}),
                         **({JSON_OUTPUT: True} if p.as_json else {})}, cmdlet="Get-Volume"),
    ProbeSpec("ps_get_hotfix", "installed Windows updates", NoParams, lambda p: {},
              cmdlet="Get-HotFix"),
    ProbeSpec("ps_get_winevent", "Windows event log entries, bounded", PsEventParams,
              lambda p: {"LogName": p.log, "MaxEvents": p.max_events}, cmdlet="Get-WinEvent"),
    ProbeSpec("ps_listening_ports", "listening TCP ports", NoParams,
              lambda p: {"State": "Listen"}, cmdlet="Get-NetTCPConnection"),
    ProbeSpec("ps_ping", "ICMP echo, count-bounded", PsPingParams,
              lambda p: {"ComputerName": p.host, "Count": p.count}, cmdlet="Test-Connection"),
    ProbeSpec("ps_dns_lookup", "resolve a name", PsDnsParams, lambda p: {"Name": p.name},
              cmdlet="Resolve-DnsName"),
    ProbeSpec("ps_get_eventlog", "classic Windows event log entries, bounded",
              PsEventLogParams, lambda p: {"LogName": p.log, "Newest": p.newest},
              cmdlet="Get-EventLog"),
    ProbeSpec("ps_get_content", "lines of an allowed Windows file, bounded", PsContentParams,
              _ps_content, cmdlet="Get-Content"),
    ProbeSpec("ps_get_item", "one allowed Windows path's metadata", PsItemParams,
              lambda p: {"LiteralPath": p.path}, cmdlet="Get-Item"),
    ProbeSpec("ps_select_string", "lines of an allowed Windows file matching a pattern",
              PsSelectStringParams, lambda p: {"Pattern": p.pattern, "LiteralPath": p.path},
              cmdlet="Select-String"),
    ProbeSpec("ps_get_counter", "one sample of the default performance counters", NoParams,
              lambda p: {"MaxSamples": 1}, cmdlet="Get-Counter"),
    *(ProbeSpec(f"ps_{name}", what, PsAdParams,
                lambda p: {"Filter": "*", "ResultSetSize": p.limit}, cmdlet=cmd)
      for name, what, cmd in (("ad_users", "Active Directory users, bounded", "Get-ADUser"),
                              ("ad_computers", "Active Directory computers, bounded",
                               "Get-ADComputer"),
                              ("ad_groups", "Active Directory groups, bounded",
                               "Get-ADGroup"))),
    *(ProbeSpec(f"ps_{name}", what, NoParams, lambda p: {}, cmdlet=cmd) for name, what, cmd in (
        ("get_disk", "Windows disks", "Get-Disk"),
        ("net_adapters", "network adapters", "Get-NetAdapter"),
        ("ip_addresses", "IP addresses", "Get-NetIPAddress"),
        ("ip_configuration", "IP configuration", "Get-NetIPConfiguration"),
        ("net_routes", "routing table", "Get-NetRoute"),
        ("local_users", "local user accounts", "Get-LocalUser"),
        ("local_groups", "local groups", "Get-LocalGroup"),
        ("scheduled_tasks", "scheduled tasks (their definitions, not run)",
         "Get-ScheduledTask"),
        ("systeminfo", "system information (systeminfo.exe)", "systeminfo.exe"),
        ("tasklist", "process list (tasklist.exe)", "tasklist.exe"),
        ("ipconfig", "IP configuration (ipconfig.exe)", "ipconfig.exe"),
    )),
    ProbeSpec("ps_tcp_connect", "can a TCP port be reached", PsTcpParams,
              lambda p: {"ComputerName": p.host, "Port": p.port}, cmdlet="Test-NetConnection"),
)

PROBES: dict[str, ProbeSpec] = {spec.name: spec for spec in CATALOG}
