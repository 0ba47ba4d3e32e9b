"""The dry run's warning for `shell` holders: what a free-text line looks like it does.

A guess, never a decision (the gate authorizes free text as `shell`, always: see
tests/safety/test_probes.py and tests/attacks/); these keep the warning useful."""

from __future__ import annotations

import shlex

import pytest

from opsconductor.safety.command_policy import Capability, classify_argv, classify_command

RUNS_ANYTHING = [
    'env sh -c "touch /tmp/marker"',
    "env FOO=1 touch /tmp/marker",
    "env -S 'touch /tmp/marker'",
    "find /tmp -name x -exec touch /tmp/marker ;",
    "find /tmp -execdir touch marker +",
    "find /tmp -delete",
    "xargs touch",
    "sh -c 'touch /tmp/marker'",
    "bash -c id",
    "awk 'BEGIN { system(\"touch /tmp/marker\") }'",
    "sed -n 1e/bin/id /etc/hostname",
    "timeout 5 touch /tmp/marker",
    "nice -n 5 touch /tmp/marker",
    "nohup touch /tmp/marker",
    "sudo ls",
    "setsid touch /tmp/marker",
    "python3 -c 'open(\"/tmp/marker\", \"w\")'",
    "perl -e 'system q(touch /tmp/marker)'",
    "tar --to-command=sh -xf a.tar",
    "tar -I 'sh -c id' -xf a.tar",
    "docker run --rm alpine touch /x",
    "kubectl exec pod -- touch /x",
    "curl -o /tmp/x http://127.0.0.1/",
    "curl -K /tmp/config http://127.0.0.1/",
    "sort -o /etc/passwd /tmp/x",
    "unknown-program --flag",
    # shell syntax makes any line a shell program
    "ls; touch /tmp/marker",
    "ls && touch /tmp/marker",
    "echo $(touch /tmp/marker)",
    "echo `touch /tmp/marker`",
    "ls > /tmp/marker",
    'echo "$(touch /tmp/marker)"',
    "ls\ntouch /tmp/marker",
]


@pytest.mark.parametrize("command", RUNS_ANYTHING)
def test_programs_that_run_programs_need_shell(command: str) -> None:
    c = classify_command(command)
    assert c.capability is Capability.EXECUTE, c.reason


READ_ONLY = [
    "ps aux", "ps -eo pid,comm", "df -h", "uptime", "free -m", "uname -a", "ls -la /etc",
    "cat /etc/hostname", "grep -r needle /etc", "find /var/log -name '*.log' -mtime -1",
    "find /tmp -maxdepth 1 -type f -print0", "env", "printenv PATH", "date", "date +%s",
    "date -u", "ip addr show", "ip route", "mount", "dmesg -T", "hostname -f",
    "systemctl status nginx", "systemctl is-active nginx", "journalctl -u nginx -n 50 --no-pager",
    "curl -sS -f http://127.0.0.1/health", "curl -X GET http://127.0.0.1/", "docker ps",
    "kubectl get pods", "echo 'a;b|c'", 'echo "a & b"', "sort -n", "uniq -c",
]


@pytest.mark.parametrize("command", READ_ONLY)
def test_read_only_uses_stay_read(command: str) -> None:
    c = classify_command(command)
    assert c.capability is Capability.READ, c.reason


MODIFIES = ["date -s 2020-01-01", "hostname evil", "mount /dev/sda1 /mnt", "dmesg -c",
            "ip link set eth0 down", "systemctl restart nginx", "journalctl --vacuum-size=1M",
            "touch /tmp/x", "rm -f /tmp/x", "docker stop web", "kubectl delete pod x",
            "tar czf /tmp/a.tgz /etc"]


@pytest.mark.parametrize("command", MODIFIES)
def test_state_changes_are_modify_not_read(command: str) -> None:
    c = classify_command(command)
    assert c.capability is Capability.MODIFY, c.reason


def test_argv_built_by_the_tool_registry_is_classified_the_same_way() -> None:
    # a CLI tool's command line is shell-quoted: quoting must not hide -exec from the check
    argv = ["find", "/tmp", "-exec", "touch", "/tmp/marker", ";"]
    assert classify_argv(argv).capability is Capability.EXECUTE
    assert classify_command(shlex.join(argv)).capability is Capability.EXECUTE


def test_shell_syntax_looks_like_a_program() -> None:
    assert classify_command("touch /tmp/x && ls").runs_any_program


def test_unparsable_line_is_not_trusted() -> None:
    c = classify_command("echo 'unterminated")
    assert c.capability is Capability.EXECUTE and "unparsable" in c.reason
