"""A guess at what a free-text command line does: read, modify, or run any program.

NOT a security boundary. Deciding what a command line does from its words fails (option
values taken for verbs, skipped tokens, PowerShell quoting, programs known by basename, ...),
so nothing is authorized by this module: free text always needs `shell`, and principals
without it run typed probes (`safety.probes`). What remains here is a warning the dry run
shows to `shell` holders ("this line looks like it changes state"), which may be wrong in
either direction.

The guess: a program looks *read-only* when it is listed below and every argument it gets is
one the list allows for it; an unlisted program, an unknown flag or shell syntax looks able to
run anything.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum


class Capability(StrEnum):
    READ = "read"  # only reads state
    MODIFY = "modify"  # changes state through its own, bounded behaviour
    EXECUTE = "execute"  # can run an arbitrary program: authorized as `shell`



@dataclass(frozen=True)
class Classification:
    capability: Capability
    program: str | None
    reason: str

    @property
    def runs_any_program(self) -> bool:
        return self.capability is Capability.EXECUTE


# Characters that make a command line a shell program rather than one argv.
_SHELL_SYNTAX = re.compile(r"[;&|<>`$(){}\n\r\\*?\[\]~!#]")

# Programs whose purpose is to run another program (or that embed a language that can).
RUNS_PROGRAMS = frozenset({
    "sh", "bash", "dash", "zsh", "ksh", "csh", "tcsh", "fish", "busybox", "env", "xargs",
    "timeout", "nice", "nohup", "ionice", "chrt", "taskset", "setsid", "stdbuf", "unbuffer",
    "sudo", "su", "doas", "runuser", "chroot", "nsenter", "unshare", "strace", "ltrace", "gdb",
    "watch", "time", "flock", "parallel", "script", "expect", "ssh", "awk", "gawk", "mawk",
    "nawk", "sed", "perl", "python", "python3", "ruby", "node", "lua", "php", "tclsh", "osascript",
    "eval", "exec", "command", "builtin", "source", ".", "systemd-run", "at", "batch", "crontab",
    "less", "more", "vi", "vim", "nano", "emacs", "man", "git", "make", "podman", "ansible",
    "salt", "pwsh", "powershell",
})

# Programs that change state through their own bounded behaviour (RBAC on their own name).
MODIFIES = frozenset({
    "kill", "pkill", "killall", "rm", "rmdir", "cp", "mv", "mkdir", "touch", "chmod", "chown",
    "chgrp", "ln", "tar", "service", "systemctl", "reboot", "shutdown", "useradd", "userdel",
    "usermod", "passwd", "truncate", "dd", "tee",
})


def _flags(argv: Sequence[str], allowed: frozenset[str], *,
           with_value: frozenset[str] = frozenset(), positional: bool = True) -> str | None:
    """None when every argument is an allowed flag (or a positional, where allowed); else the
    first argument that is not."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return None if positional else arg
        if arg.startswith("-") and arg != "-":
            name, _, inline = arg.partition("=")
            if name in with_value:
                i += 1 if inline else 2
                continue
            if name in allowed:
                i += 1
                continue
            # bundled short flags (`-aux`): each letter must be allowed
            bundle = not arg.startswith("--") and len(arg) > 2
            if bundle and all(f"-{c}" in allowed for c in arg[1:]):
                i += 1
                continue
            return arg
        if not positional:
            return arg
        i += 1
    return None


def _any(_argv: Sequence[str]) -> str | None:
    return None


ArgCheck = Callable[[Sequence[str]], str | None]


def _allow(flags: str, *, values: str = "", positional: bool = True) -> ArgCheck:
    allowed = frozenset(flags.split())
    with_value = frozenset(values.split())
    return lambda argv: _flags(argv, allowed, with_value=with_value, positional=positional)


def _date(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-") and not arg.startswith("+"):
            return arg  # a positional date sets the clock
    return _flags([a for a in argv if not a.startswith("+")],
                  frozenset("-u --utc --universal -R --rfc-email -I --iso-8601".split()),
                  with_value=frozenset("-d --date -r --reference".split()), positional=False)


_IP_OBJECTS = frozenset("address addr a link l route r neighbour neigh n rule ru maddress maddr "
                        "tunnel netconf".split())
_IP_READ_VERBS = frozenset({"show", "list", "ls", "lst", "get"})


def _ip(argv: Sequence[str]) -> str | None:
    rest = [a for a in argv if not a.startswith("-")]
    bad = _flags([a for a in argv if a.startswith("-")],
                 frozenset("-s -stats -d -details -4 -6 -o -oneline -j -json -p -pretty -br "
                           "-brief -c -color".split()))
    if bad:
        return bad
    if not rest:
        return None
    if rest[0] not in _IP_OBJECTS:
        return rest[0]
    if len(rest) > 1 and rest[1] not in _IP_READ_VERBS:
        return rest[1]
    return None


def _env(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if arg in ("-0", "--null"):
            continue
        if "=" in arg and not arg.startswith("-"):
            continue  # VAR=value with no command only prints the environment
        return arg
    return None


def _mount(argv: Sequence[str]) -> str | None:
    return _flags(argv, frozenset("-l --show-labels".split()),
                  with_value=frozenset("-t --types".split()), positional=False)


_FIND_PREDICATES = frozenset(
    "-name -iname -path -ipath -wholename -iwholename -regex -iregex -type -xtype -maxdepth "
    "-mindepth -mtime -mmin -atime -amin -ctime -cmin -size -user -group -uid -gid -perm "
    "-newer -links -inum -samefile -print -print0 -printf -ls -empty -readable -writable "
    "-executable -xdev -mount -nouser -nogroup -daystart -depth -prune -true -false -not "
    "-a -o -and -or -follow -L -H -P -regextype -fstype -lname -ilname ! ( ) ,".split())
_FIND_WITH_VALUE = frozenset(
    "-name -iname -path -ipath -wholename -iwholename -regex -iregex -type -xtype -maxdepth "
    "-mindepth -mtime -mmin -atime -amin -ctime -cmin -size -user -group -uid -gid -perm "
    "-newer -links -inum -samefile -printf -regextype -fstype -lname -ilname".split())


def _find(argv: Sequence[str]) -> str | None:
    i = 0
    while i < len(argv) and not argv[i].startswith("-") and argv[i] not in ("!", "(", ")"):
        i += 1  # starting points
    while i < len(argv):
        arg = argv[i]
        if arg not in _FIND_PREDICATES:
            return arg  # -exec, -execdir, -ok, -delete, -fprint, ...
        i += 2 if arg in _FIND_WITH_VALUE else 1
    return None


def _curl(argv: Sequence[str]) -> str | None:
    for j, arg in enumerate(argv):
        if arg in ("-X", "--request") and j + 1 < len(argv) and argv[j + 1].upper() not in (
                "GET", "HEAD"):
            return f"{arg} {argv[j + 1]}"
    return _flags(argv, frozenset(
        "-s --silent -S --show-error -f --fail -L --location -I --head -v --verbose -k "
        "--insecure -4 -6 --compressed -i --include -g --globoff".split()),
        with_value=frozenset("-m --max-time --connect-timeout -H --header -w --write-out -X "
                             "--request -A --user-agent --retry --resolve".split()))


def _dmesg(argv: Sequence[str]) -> str | None:
    return _flags(argv, frozenset("-T --ctime -H --human -k --kernel -x --decode -L --color "
                                  "-t --notime -r --raw -u --userspace -w --follow -P "
                                  "--nopager".split()),
                  with_value=frozenset("-l --level -f --facility --since --until".split()),
                  positional=False)


def _hostname(argv: Sequence[str]) -> str | None:
    return _flags(argv, frozenset("-f --fqdn --long -s --short -i --ip-address -I "
                                  "--all-ip-addresses -d --domain -A --all-fqdns -a --alias "
                                  "-y --yp --nis".split()), positional=False)


SYSTEMCTL_READ_VERBS = frozenset({"status", "is-active", "is-enabled", "is-failed", "show", "cat",
                                  "list-units", "list-timers", "list-unit-files",
                                  "list-sockets", "list-dependencies"})


def _first_verb(argv: Sequence[str], verbs: frozenset[str]) -> str | None:
    """Allowed when the first non-flag argument is one of the read verbs (or there is none)."""
    positional = [a for a in argv if not a.startswith("-")]
    if positional and positional[0] not in verbs:
        return positional[0]
    return None


@dataclass(frozen=True)
class _VerbCli:
    """docker / kubectl: listed read verbs read; verbs that start a process run anything; any
    other verb changes state through the tool's own behaviour."""

    reads: frozenset[str]
    executes: frozenset[str]

    def __call__(self, argv: Sequence[str]) -> str | None:
        verbs = [a for a in argv if not a.startswith("-")]
        return None if not verbs or verbs[0] in self.reads else verbs[0]


DOCKER_READS = frozenset({"ps", "images", "inspect", "logs", "version", "info", "stats", "top",
                          "port", "diff", "events", "history"})
DOCKER_EXECUTES = frozenset({"run", "exec", "create", "start", "restart", "compose", "build",
                             "buildx", "cp", "commit", "load", "import", "plugin", "swarm",
                             "service", "stack", "container", "image", "volume", "context"})
KUBECTL_READS = frozenset({"get", "describe", "logs", "top", "version", "explain",
                           "api-resources", "api-versions", "cluster-info", "events"})
KUBECTL_EXECUTES = frozenset({"exec", "run", "debug", "cp", "attach", "apply", "create",
                              "replace", "patch", "edit", "port-forward", "proxy", "plugin",
                              "set", "kustomize"})


def _ss(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if arg in ("-K", "--kill"):
            return arg
    return None


# Read-only programs and the argument check each must pass (None from the check = allowed).
READ_ONLY: dict[str, ArgCheck] = {
    **{name: _any for name in (
        "ps", "df", "du", "uptime", "free", "uname", "whoami", "id", "ls", "cat", "head",
        "tail", "grep", "egrep", "fgrep", "zgrep", "stat", "netstat", "lsblk", "vmstat",
        "iostat", "mpstat", "top", "who", "w", "printenv", "ping", "dig", "nslookup", "host",
        "wc", "nproc", "lscpu", "echo", "true", "false", "test", "[", "pgrep", "pidof",
        "getent", "lsof", "sha256sum", "md5sum", "readlink", "realpath", "basename", "dirname",
        "cut", "tr", "diff", "cmp", "last", "lastlog", "arch", "groups", "locale", "which",
        "lsmod", "blkid", "findmnt", "traceroute", "tracepath", "sar", "pwd", "sleep", "nl",
        "od", "hexdump", "strings", "zcat", "iptables-save")},
    "sort": _allow("-n -r -k -u -h -V -b -f -t -s -g -M --numeric-sort --reverse --unique "
                   "--human-numeric-sort --version-sort", values="-k --key -t "
                   "--field-separator"),
    "uniq": _allow("-c -d -u -i --count --repeated --unique --ignore-case",
                   values="-f -s -w --skip-fields --skip-chars --check-chars"),
    "journalctl": _allow("--no-pager -f --follow -r --reverse -x --catalog -k --dmesg -b --boot "
                         "-q --quiet --utc -a --all --no-hostname -e --pager-end --list-boots "
                         "--disk-usage --system --user -m --merge",
                         values="-n --lines -u --unit -p --priority --since --until -o --output "
                                "-t --identifier -g --grep -S -U _PID _SYSTEMD_UNIT -D "
                                "--directory --facility"),
    "systemctl": lambda argv: _first_verb(argv, SYSTEMCTL_READ_VERBS),
    "timedatectl": lambda argv: _first_verb(argv, frozenset({"status", "show",
                                                             "list-timezones"})),
    "hostnamectl": lambda argv: _first_verb(argv, frozenset({"status", "show"})),
    "date": _date, "ip": _ip, "env": _env, "mount": _mount, "find": _find, "curl": _curl,
    "dmesg": _dmesg, "hostname": _hostname, "ss": _ss,
    "docker": _VerbCli(DOCKER_READS, DOCKER_EXECUTES),
    "kubectl": _VerbCli(KUBECTL_READS, KUBECTL_EXECUTES),
}


# Read-only with the allowed arguments; with others they change state through their own,
# bounded behaviour (set the clock, mount a disk, clear the kernel ring buffer...).
STATEFUL_READERS = frozenset({"date", "hostname", "mount", "ip", "dmesg", "journalctl",
                              "timedatectl", "hostnamectl", "systemctl", "ss"})


def classify_argv(argv: Sequence[str]) -> Classification:
    """Classify one program invocation (no shell involved)."""
    if not argv:
        return Classification(Capability.READ, None, "empty command")
    program = argv[0].rsplit("/", 1)[-1]
    args = list(argv[1:])
    check = READ_ONLY.get(program)
    if check is not None:
        bad = check(args)
        if bad is None:
            return Classification(Capability.READ, program, f"{program}: read-only use")
        if isinstance(check, _VerbCli) and bad not in check.executes:
            return Classification(Capability.MODIFY, program, f"{program} {bad}: changes state")
        if program in STATEFUL_READERS:
            return Classification(Capability.MODIFY, program, f"{program} {bad}: changes state")
        return Classification(Capability.EXECUTE, program,
                              f"{program} {bad}: not an allowed read-only use")
    if program in RUNS_PROGRAMS:
        return Classification(Capability.EXECUTE, program, f"{program}: runs other programs")
    if program in MODIFIES:
        exec_opt = _tar_exec(args) if program == "tar" else None
        if exec_opt:
            return Classification(Capability.EXECUTE, program,
                                  f"tar {exec_opt}: runs another program")
        return Classification(Capability.MODIFY, program, f"{program}: changes state")
    return Classification(Capability.EXECUTE, program,
                          f"{program}: not a known read-only program")


def _tar_exec(args: Sequence[str]) -> str | None:
    for arg in args:
        if arg.startswith(("--to-command", "--use-compress-program", "--checkpoint-action",
                           "--info-script", "--new-volume-script", "--rsh-command", "-I",
                           "-F")):
            return arg
    return None


def classify_command(command: str) -> Classification:
    """Classify a command line as a shell would run it.

    Anything with shell syntax (pipes, lists, substitutions, redirections, globs) is a shell
    program and can run anything; a plain argv is classified by its program.
    """
    try:
        argv = shlex.split(command, posix=True)
    except ValueError as err:
        return Classification(Capability.EXECUTE, None, f"unparsable command line: {err}")
    if _SHELL_SYNTAX.search(_unquoted(command)):
        return Classification(Capability.EXECUTE, argv[0] if argv else None,
                              "shell syntax: the line is a shell program")
    return classify_argv(argv)


def _unquoted(command: str) -> str:
    """The command with the contents of single- and double-quoted strings removed (a `$` or
    backtick inside double quotes still counts: the shell expands it)."""
    out: list[str] = []
    quote: str | None = None
    for ch in command:
        if quote == "'":
            if ch == "'":
                quote = None
            continue
        if quote == '"':
            if ch == '"':
                quote = None
            elif ch in "$`\\":
                out.append(ch)
            continue
        if ch in ("'", '"'):
            quote = ch
            continue
        out.append(ch)
    return "".join(out)
