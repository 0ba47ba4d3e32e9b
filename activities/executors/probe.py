"""Run a typed probe where its step runs: exec'd locally, quoted once over SSH, a fixed cmdlet
through the Automation Service. Never a shell line built from the planner's text.

Locally the probe's argv is exec'd (no shell) in the reset environment with `HOME` and the
working directory fixed; a probe that reads files resolves each operand's real path first and
refuses one that leads outside the allowed roots (a symlink under /var/log to
/proc/self/environ, say). Over SSH the same check runs on the host, in front of the argv,
as code of ours with the validated path as its only operand.
"""

from __future__ import annotations

import os
import shlex

from opsconductor.activities.executors.base import StepContext, StepOutcome
from opsconductor.activities.executors.local_command import LocalCommandRunner
from opsconductor.safety.command_env import PROBE_CWD, command_env
from opsconductor.safety.probe_params import LIST_ROOTS, READ_ROOTS, allowed
from opsconductor.safety.probes import Probe
from opsconductor.schema.errors import ErrorType


def _refused(message: str) -> StepOutcome:
    return StepOutcome(ok=False, error=message, error_type=ErrorType.INVALID_STEP,
                       retryable=False)


def _roots(probe: Probe) -> tuple[str, ...]:
    return LIST_ROOTS if probe.name in ("list_directory", "file_find") else READ_ROOTS


def local_path_problem(probe: Probe) -> str | None:
    """Why a path probe may not run here: its path resolves outside the allowed roots."""
    path = probe.params.get("path")
    if not probe.spec.reads_paths or not isinstance(path, str):
        return None
    real = os.path.realpath(path)
    if not allowed(real, _roots(probe)):
        return f"probe {probe.name}: {path!r} resolves to {real!r}, outside the allowed paths"
    return None


def remote_guarded(probe: Probe) -> str:
    """The remote line: for a path probe, resolve the path on the host and refuse one outside
    the roots before exec'ing the argv; otherwise the argv quoted once."""
    argv = probe.remote_command()
    path = probe.params.get("path")
    if not probe.spec.reads_paths or not isinstance(path, str):
        return f"exec {argv}"
    patterns = []
    for root in _roots(probe):
        if root.endswith("/"):
            patterns += [shlex.quote(root.rstrip("/")), shlex.quote(root) + "*"]
        else:
            patterns.append(shlex.quote(root))
    deny = ("*/.ssh|*/.ssh/*|*shadow*|*sudoers*|*secret*|*Secret*|*SECRET*|*token*|*Token*|"
            "*password*|*Password*|*environ*|*.key|*.pem|*.p12|*.pfx|*/id_*")
    return (f"p=$(/usr/bin/realpath -e -- {shlex.quote(path)}) || exit 126; "
            f'case "$p" in {deny}) echo "probe {probe.name}: $p is outside the allowed '
            f'paths" >&2; exit 126;; esac; case "$p" in {"|".join(patterns)}) exec {argv};; '
            f'esac; echo "probe {probe.name}: $p is outside the allowed paths" >&2; exit 126')


async def run_summary(ctx: StepContext, probe: Probe, connector: str,
                      local: LocalCommandRunner | None) -> StepOutcome:
    """Each part in turn, its output under a `== <argv>` header; the step fails when any part
    does (the others still run and show)."""
    outs, errs, failed = [], [], []
    for part in probe.parts():
        outcome = await run_probe(ctx, part, connector, local)
        outs.append(f"== {part.display()}\n{outcome.stdout}")
        if outcome.stderr:
            errs.append(outcome.stderr)
        if not outcome.ok:
            failed.append(f"{part.name}: {outcome.error}")
    if failed:
        return StepOutcome(ok=False, exit_code=1, stdout="".join(outs), stderr="".join(errs),
                           error="; ".join(failed), error_type=ErrorType.COMMAND_FAILED)
    return StepOutcome(ok=True, exit_code=0, stdout="".join(outs), stderr="".join(errs))


async def run_probe(ctx: StepContext, probe: Probe, connector: str,
                    local: LocalCommandRunner | None = None) -> StepOutcome:
    if probe.spec.parts is not None:
        return await run_summary(ctx, probe, connector, local)
    if probe.platform == "powershell":
        if connector != "automation-service":
            return _refused(f"probe {probe.name} is a PowerShell cmdlet; the step runs via "
                            f"{connector}")
        from opsconductor.activities.executors.powershell import PowerShellRunner

        return await PowerShellRunner().run(ctx, probe.powershell_command(), env={}, cwd=None,
                                            timeout=ctx.timeout)
    if connector == "local":
        problem = local_path_problem(probe)
        if problem:
            return _refused(problem)
        return await (local or LocalCommandRunner()).run_argv(
            ctx, probe.argv(), env=command_env(probe.env, probe=True), cwd=PROBE_CWD,
            timeout=ctx.timeout)
    if connector == "ssh":
        from opsconductor.activities.executors.registry import command_runner_for

        return await command_runner_for("ssh").run(ctx, remote_guarded(probe),
                                                   env=dict(probe.env), cwd=PROBE_CWD,
                                                   timeout=ctx.timeout)
    return _refused(f"probe {probe.name} runs locally or over SSH, not via {connector}")
