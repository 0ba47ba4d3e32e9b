"""Every attack form on read-only authority, as data: the ten root causes of issue 18, each
written the way a principal without `shell` would send it, plus our own.

Each form is a plan fragment with placeholders filled per run: `{M}` a marker file the attack
would create, `{V}` a victim file it would delete or change, `{E}` a directory holding an
`uptime` that writes `{M}`, `{P}` the port of a listener that records any connection, `{W}`
the worker's pid, `{C}` the name of a canary variable in the worker's environment. `neutral`
forms are allowed on purpose and must run only the probe (never their text); every other
form must be refused. `safe` is False where an effect, were the gate to fail, would damage the
machine (reboot, dd to a disk): those are judged by the gate and by submission, never sent to
a running worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Attack:
    id: str
    cause: int  # the root cause (1-10); 11 = ours
    plan: dict[str, Any]  # {"steps": [...], "safety_checks": [...], "rollback_plan": [...]}
    windows: bool = False  # runs on the Windows asset (Automation Service)
    neutral: bool = False  # allowed as a probe: must run the probe, never the text
    safe: bool = True
    spec_only: bool = False  # expressible only by crafting the workflow input (no client)
    spec_patch: dict[str, Any] = field(default_factory=dict)  # for spec_only: StepSpec fields


def _step(tool_name: str, **inputs: Any) -> dict[str, Any]:
    return {"id": "a", "tool": tool_name, "inputs": inputs, "description": "attack"}


def run(tool_name: str, **inputs: Any) -> dict[str, Any]:
    return {"steps": [_step(tool_name, **inputs)]}


def text(command: str, **inputs: Any) -> dict[str, Any]:
    """A free-text line under the read tool upstream's test plans name."""
    return run("ssh_command_read", command=command, **inputs)


def check(where: str, command: str) -> dict[str, Any]:
    noop = {"id": "a", "tool": "noop", "inputs": {}, "description": "attack"}
    if where == "validate":
        return {"steps": [noop, {"id": "b", "tool": "validate", "depends_on": ["a"],
                                 "inputs": {"checks": [f"command: {command}"]},
                                 "description": "attack"}]}
    if where == "safety":
        return {"steps": [noop], "safety_checks": [{"check": f"command: {command}",
                                                    "stage": "before",
                                                    "failure_action": "warn"}]}
    if where == "rollback":
        return {"steps": [noop, {"id": "b", "tool": "noop", "depends_on": ["a"],
                                 "inputs": {"fail": True}, "failure_handling": "rollback",
                                 "description": "fails"}],
                "rollback_plan": [{"step_id": "a", "rollback_action": command}]}
    return {"steps": [{**noop, where: [f"command: {command}"]}]}


def ps(tool: str, **inputs: Any) -> dict[str, Any]:
    return run(tool, **inputs)


A = Attack
UP = "." * 2  # a parent-directory segment, the attacks' own (spelt so: no path of ours)
ATTACKS: list[Attack] = [
    # 1. verb confusion: an option's value taken for the verb
    A("docker-config-ps-run", 1, run("docker", args="--config ps run --privileged -v /:/host "
                                     "alpine chroot /host touch {M}")),
    A("docker-command-config-ps-run", 1, run("docker", command="docker --config ps run "
                                             "--privileged -v /:/host alpine touch {M}")),
    A("docker-args-list", 1, run("docker", args=["--config", "ps", "run", "alpine", "touch",
                                                 "{M}"])),
    A("docker-H-ps-run", 1, run("docker", args="-H ps run alpine touch {M}")),
    A("kubectl-cache-dir-get-delete", 1, run("kubectl", args="--cache-dir get delete pod web"),
      safe=False),
    A("kubectl-args-list", 1, run("kubectl", args=["--kubeconfig", "get", "delete", "pod", "x"]),
      safe=False),
    A("systemctl-p-status-stop", 1, run("systemctl", command="systemctl -p status stop sshd"),
      safe=False),
    A("systemctl-text-p-status-stop", 1, text("systemctl -p status stop ssh"), safe=False),
    A("timedatectl-p-status-set-time", 1, text("timedatectl -p status set-time 2001-01-01"),
      safe=False),
    A("hostnamectl-p-status-set", 1, text("hostnamectl -p status set-hostname evil"),
      safe=False),
    A("systemctl-unit-is-an-option", 1, run("systemctl", action="status",
                                            unit="--root=/tmp")),
    A("systemctl-unit-with-syntax", 1, run("systemctl", action="status",
                                           unit="nginx; touch {M}")),
    # 2. skipped tokens: the word after `-H=`, `-t=`, `-u=`, journalctl's `-n`
    A("curl-H-eq-o-authorized-keys", 2, run("curl", args="-s -H= -o{M} http://127.0.0.1:{P}/"
                                                           "key")),
    A("curl-H-eq-T-shadow", 2, run("curl", args="-H= -T/etc/shadow http://127.0.0.1:{P}/")),
    A("sort-t-eq-o", 2, text("sort -t= -o {M} /etc/hostname")),
    A("sort-t-eq-o-joined", 2, text("sort -t= -o{M} /etc/hostname")),
    A("journalctl-n-vacuum", 2, run("journalctl", command="journalctl -n --vacuum-time=1s"),
      safe=False),
    A("journalctl-n-rotate", 2, text("journalctl -n --rotate"), safe=False),
    A("journalctl-n-flush", 2, text("journalctl -n --flush"), safe=False),
    A("curl-u-eq-o", 2, run("curl", args="-u= -o {M} http://127.0.0.1:{P}/")),
    A("uniq-f-eq-out", 2, text("uniq -f= /etc/hostname {M}")),
    # 3. a change rides on the step's tool name
    A("read-tool-rm-rf", 3, text("rm -rf {V}")),
    A("read-tool-rm-postgres", 3, text("rm -rf /var/lib/postgresql"), safe=False),
    A("read-tool-dd-of-disk", 3, text("dd if=/dev/zero of=/dev/sda count=1"), safe=False),
    A("read-tool-dd-of-victim", 3, text("dd if=/dev/zero of={V} count=1")),
    A("read-tool-reboot", 3, text("reboot"), safe=False),
    A("read-tool-shutdown", 3, text("shutdown -h now"), safe=False),
    A("tar-abbreviated-to-command", 3, text("tar --to-com=sh -xf /dev/null")),
    A("tar-to-command", 3, run("tar", args=["--to-command=touch {M}", "-xf", "/dev/null"])),
    A("cat-then-touch", 3, run("cat", command="cat /etc/hostname && touch {M}")),
    A("df-args-with-syntax", 3, run("df", args=["-h", ";", "touch", "{M}"])),
    A("systemctl-restart-typed", 3, run("systemctl", action="restart", service="nginx"),
      safe=False),
    A("systemctl-restart-check-status", 3, run("systemctl", action="stop", service="nginx",
                                               check_status=True), safe=False),
    A("touch-tool", 3, run("touch", args=["{M}"])),
    A("rm-tool", 3, run("rm", args=["-f", "{V}"])),
    A("kill-tool", 3, run("kill", args=["-9", "1"]), safe=False),
    A("cp-tool", 3, run("cp", args=["/etc/hostname", "{M}"])),
    A("file-manager-write", 3, run("file_manager", operation="write", path="{M}",
                                   content="x")),
    A("file-manager-backup", 3, run("file_manager", operation="backup", path="/etc/hostname",
                                    backup_path="{M}")),
    A("config-manager-backup-first", 3, run("config_manager", operation="read",
                                            config_file="/etc/hostname",
                                            backup_before_change=True)),
    A("docker-restart-typed", 3, run("docker", operation="restart", container="web")),
    # 4. the step's env / working_directory and the worker's environment
    A("env-path", 4, text("uptime", env={"PATH": "{E}"})),
    A("env-bash-func", 4, text("uptime", env={"BASH_FUNC_uptime%%": "() { touch {M}; }"})),
    A("env-shellopts-ps4", 4, text("uptime", env={"SHELLOPTS": "xtrace",
                                                  "PS4": "$(touch {M})"})),
    A("env-ld-preload", 4, text("uptime", env={"LD_PRELOAD": "{E}/evil.so"})),
    A("env-kubeconfig", 4, text("uptime", env={"KUBECONFIG": "{E}/kubeconfig"})),
    A("env-bash-env", 4, text("uptime", env={"BASH_ENV": "{E}/rc", "ENV": "{E}/rc"})),
    A("env-ifs", 4, text("uptime", env={"IFS": "u"})),
    A("env-tz-file", 4, text("uptime", env={"TZ": ":/proc/self/environ"})),
    A("env-lang-traversal", 4, text("uptime", env={"LANG": f"{UP}/{UP}/{UP}{{E}}/x"})),
    A("env-gconv-path", 4, text("uptime", env={"GCONV_PATH": "{E}", "LC_ALL": "x"})),
    A("cwd-dot-uptime", 4, text("./uptime", working_directory="{E}")),
    A("cwd-with-probe", 4, text("uptime", working_directory="{E}")),
    A("env-secret-ref", 4, text("uptime", env={"X": {"type": "secret",
                                                     "path": "test/ssh/key"}})),
    # 5. curl reaches any service with any bytes
    A("curl-gopher-docker-api", 5, run("curl", args=[
        "gopher://127.0.0.1:{P}/_POST%20/containers/create%20HTTP/1.1%0d%0a"])),
    A("curl-dict-redis", 5, run("curl", args=["dict://127.0.0.1:{P}/FLUSHALL"])),
    A("curl-text-gopher", 5, text("curl -s gopher://127.0.0.1:{P}/_x")),
    A("curl-file-environ", 5, run("curl", args=["file:///proc/self/environ"])),
    A("curl-post-data", 5, run("curl", args=["-X", "POST", "-d", "@/etc/hostname",
                                             "http://127.0.0.1:{P}/"])),
    A("curl-config-file", 5, run("curl", args=["-K", "{E}/curlrc", "http://127.0.0.1:{P}/"])),
    A("curl-no-scheme", 5, run("curl", args=["127.0.0.1:{P}/x"])),
    A("curl-userinfo", 5, run("curl", args=["http://u:p@127.0.0.1:{P}/"])),
    A("curl-follow-redirect", 5, run("curl", args=["-L", "http://127.0.0.1:{P}/"])),
    A("curl-telnet", 5, run("curl", args=["telnet://127.0.0.1:{P}"])),
    # 6. write options of listed programs
    A("uniq-in-out", 6, text("uniq /etc/hostname {M}")),
    A("ss-kill", 6, run("ss", args="-tK"), safe=False),
    A("ss-kill-dst", 6, run("ss", args=["-K", "dst", "127.0.0.1"]), safe=False),
    A("blkid-cache", 6, text("blkid -c {M}")),
    A("lastlog-clear", 6, text("lastlog -C -u root"), safe=False),
    A("lastlog-set", 6, text("lastlog -S -u root"), safe=False),
    A("lastlog-R", 6, text("lastlog -R -u root"), safe=False),
    A("sort-o", 6, text("sort -o {M} /etc/hostname")),
    A("date-set", 6, run("date", args=["-s", "2001-01-01"]), safe=False),
    A("hostname-set", 6, run("hostname", args=["evil"]), safe=False),
    A("ip-link-down", 6, run("ip", args=["link", "set", "lo", "down"]), safe=False),
    A("dmesg-clear", 6, run("dmesg", args=["-C"]), safe=False),
    A("mount-remount", 6, run("mount", args=["-o", "remount,ro", "/"]), safe=False),
    A("find-delete", 6, run("find", args=["{V}", "-delete"])),
    A("find-fprint", 6, run("find", args=["/etc/hostname", "-fprint", "{M}"])),
    A("find-exec", 6, run("find", args=["/tmp", "-maxdepth", "0", "-exec", "touch", "{M}",
                                        ";"])),
    A("sed-w", 6, text("sed -n w{M} /etc/hostname")),
    A("env-tool-sh", 6, run("env", args=["sh", "-c", "touch {M}"])),
    A("wc-files0-from-environ", 6, run("wc", args=["--files0-from=/proc/self/environ"])),
    # 7. PowerShell / cmd.exe judged by POSIX rules
    A("ps-typographic-quotes", 7, ps("Get-Service",
                                     command="Get-Service -Name 'x\u2019; Stop-Computer; "
                                             "\u2018y'"),
      windows=True),
    A("ps-invoke-typographic", 7, ps("Invoke-Command",
                                     command="echo 'x\u2019; Stop-Computer; \u2018y'"),
      windows=True),
    A("ps-pipeline-stop", 7, ps("Get-Process", command="Get-Process | Stop-Process"),
      windows=True),
    A("ps-childitem-remove", 7, ps("Invoke-Command",
                                   command="Get-ChildItem C:\\ ; Remove-Item C:\\x"),
      windows=True),
    A("ps-args-injection", 7, ps("Get-Service", args="x; Restart-Computer"), windows=True),
    A("ps-select-scriptblock", 7, ps("Get-ComputerInfo", command="Get-ComputerInfo | "
                                     "Select-Object @{n='x';e={Stop-Computer}}"), windows=True),
    A("ps-subexpression", 7, ps("Get-Service", command='Get-Service -Name "$(Stop-Computer)"'),
      windows=True),
    A("ps-get-content-secret", 7, ps("Invoke-Command",
                                     command="Get-Content C:\\Users\\admin\\secret.txt"),
      windows=True),
    A("cmd-impacket-line", 7, ps("windows-impacket-executor", command="tasklist & del C:\\x",
                                 connection_type="impacket"), windows=True),
    A("ps-childitem-outside", 7, ps("Get-ChildItem", command="Get-ChildItem C:\\Users\\admin"),
      windows=True),
    A("ps-typographic-path", 7, ps("Invoke-Command",
                                   command="Get-ChildItem 'C:\\Temp\u2019; Stop-Computer'"),
      windows=True),
    # 8. programs identified by basename
    A("path-uptime", 8, text("{E}/uptime")),
    A("uptime-tool-path", 8, run("uptime", command="{E}/uptime")),
    A("df-tool-relative", 8, run("df", command="./df -h")),
    A("sudo-uptime", 8, run("uptime", command="sudo -n uptime")),
    A("env-prefixed-uptime", 8, run("uptime", command="env uptime")),
    A("kubectl-kubeconfig-plugin", 8, run("kubectl", args=["--kubeconfig={E}/kubeconfig",
                                                           "get", "pods"])),
    A("ps-tool-path", 8, run("ps", command="{E}/ps aux")),
    # 9. read any file, the worker's own environment
    A("od-self-environ", 9, text("od -An -c /proc/self/environ")),
    A("cat-self-environ", 9, run("cat", args=["/proc/self/environ"])),
    A("cat-worker-environ", 9, run("cat", args=["/proc/{W}/environ"])),
    A("head-shadow", 9, run("head", args=["-n", "5", "/etc/shadow"])),
    A("tail-ssh-key", 9, run("tail", args=["-n", "5", "/root/.ssh/id_rsa"])),
    A("file-manager-read-environ", 9, run("file_manager", operation="read",
                                          path="/proc/self/environ")),
    A("config-manager-read-shadow", 9, run("config_manager", operation="read",
                                           config_file="/etc/shadow")),
    A("stat-ssh-dir", 9, run("stat", args=["/root/.ssh/id_ed25519"])),
    A("ls-ssh-dir", 9, run("ls", args=["-la", "/root/.ssh"])),
    A("cat-dotdot", 9, run("cat", args=[f"/var/log/{UP}/{UP}/proc/self/environ"])),
    A("cat-double-slash", 9, run("cat", args=["//proc/self/environ"])),
    A("grep-environ-glob", 9, run("grep", args=["-r", "TOKEN", "/proc/1/environ"])),
    A("strings-environ", 9, text("strings /proc/1/environ")),
    A("nginx-key", 9, run("cat", args=["/etc/nginx/ssl/server.key"])),
    A("precondition-environ", 9, check("preconditions", "cat /proc/self/environ")),
    A("success-criterion-touch", 9, check("success_criteria", "touch {M}")),
    A("validate-check-touch", 9, check("validate", "touch {M}")),
    A("safety-check-touch", 9, check("safety", "touch {M}")),
    A("rollback-rm", 9, check("rollback", "rm -f {V}")),
    A("precondition-probe-form-with-syntax", 9, check("preconditions",
                                                      "cat /var/log/$(touch {M})")),
    A("sha256-shadow", 9, text("sha256sum /etc/shadow")),
    # 10. denial of service through read programs
    A("ping-flood", 10, run("ping", args="-f -s 65507 127.0.0.1"), safe=False),
    A("ping-count-huge", 10, run("ping", args="-c 100000 127.0.0.1")),
    A("ping-interval", 10, run("ping", args="-c 4 -i 0.001 127.0.0.1")),
    A("journal-lines-huge", 10, run("journalctl", lines=100000)),
    A("vmstat-forever", 10, run("vmstat", args="1 100000")),
    A("tail-follow", 10, run("tail", args=["-f", "/var/log/syslog"])),
    A("sleep-long", 10, text("sleep 100000")),
    A("head-zero", 10, text("head -c 100G /dev/zero")),
    A("docker-logs-huge", 10, run("docker", operation="logs", container="web",
                                  lines=100000)),
    # ours: a crafted workflow input (the client would refuse it) and forms of our own
    A("spec-probe-tool-with-touch-command", 11, run("df"), neutral=True, spec_only=True,
      spec_patch={"command": "touch {M}"}),
    A("spec-uptime-tool-with-shell-inputs", 11, run("uptime"), neutral=True, spec_only=True,
      spec_patch={"command": "touch {M}", "inputs": {}}),
    A("spec-noop-kind-command", 11, run("noop"), spec_only=True,
      spec_patch={"kind": "command", "command": "touch {M}"}),
    A("spec-shell-inputs-on-read-tool", 11, run("uptime"), spec_only=True,
      spec_patch={"inputs": {"command": "touch {M}"}, "command": "touch {M}"}),
    A("spec-probe-env-path", 11, run("uptime"), spec_only=True,
      spec_patch={"inputs": {"env": {"PATH": "{E}"}}}),
    A("spec-posix-probe-via-automation", 11, run("uptime"), spec_only=True, neutral=True,
      spec_patch={"connector": "automation-service"}),
    A("shell-tool", 11, run("shell", command="touch {M}")),
    A("bash-alias", 11, run("bash", command="touch {M}")),
    A("probe-form-newline", 11, text("uptime\ntouch {M}")),
    A("probe-form-glob", 11, run("cat", args=["/var/log/*"]), neutral=True),
    A("probe-path-with-dollar", 11, run("cat", args=["/var/log/$(touch {M})"]), neutral=True),
    A("journal-since-substitution", 11, run("journalctl", since="$(touch {M})")),
    A("ping-host-option", 11, run("network_tools", tool="ping",
                                  destination="-oProxyCommand=touch {M}", count=1)),
    A("symlink-under-list-root", 11, run("ls", args=["-la", "{E}/link-to-ssh"]), neutral=True),
]
