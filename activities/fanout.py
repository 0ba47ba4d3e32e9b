"""Run a templated step: render it from earlier results and, when it iterates over the assets
an asset-query returned, run one variant per asset and fold them into one step outcome.

The pure parts (which placeholders, which variants, their ids `<step>#<n>` and targets) are
`opsconductor.schema.templates`; this module only runs the variants, at most
`max_concurrency` at a time, each through the caller's `run_variant` (the step activity
passes a function that resolves the variant's asset and runs its executor, as for any step).

`results` maps earlier step ids to their results as the workflow keeps them
(`StepResult.model_dump(mode="json")`: `output`, `stdout`, `exit_code`, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel

from opsconductor.activities.executors.base import ProcessRef, StepContext, StepOutcome, cap_text
from opsconductor.schema.errors import ErrorType
from opsconductor.schema.spec import StepSpec
from opsconductor.schema.templates import TemplateError, expand, powershell_quote, shell_quote

RunVariant = Callable[[StepSpec], Awaitable[StepOutcome]]
DEFAULT_CONCURRENCY = 4
VARIANTS_BUDGET_BYTES = 256 * 1024  # all variants' kept stdout together


class VariantOutcome(BaseModel):
    id: str
    target: str | None
    ok: bool
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    output: Any = None
    error: str | None = None
    error_type: str | None = None


def variant_specs(step: StepSpec, results: Mapping[str, Any]) -> list[StepSpec]:
    """The concrete steps to run: one per returned asset (fan-out), or the step rendered."""
    quote = powershell_quote if step.dialect == "powershell" else shell_quote
    variants = expand(step.id, step.inputs, step.command, step.target, step.placeholders,
                      results, quote, step.kind.value)
    return [step.model_copy(update={
        "id": v.id, "inputs": v.inputs, "command": v.command, "target": v.target,
        "placeholders": [], "fan_out_from": None, "variant_of": step.id, "item": v.item})
        for v in variants]


def aggregate(step: StepSpec, outcomes: list[VariantOutcome], *,
              errors_allowed: int = 0, skipped: int = 0) -> StepOutcome:
    """One outcome for the step: ok while at most `errors_allowed` variants failed (a fan-out
    allows none; a fleet its `max_errors`); zero assets: ok, nothing ran."""
    failed = [o for o in outcomes if not o.ok]
    # One step result crosses Temporal: keep it far below the 2 MiB payload limit however
    # many assets the query returned (each variant's streams capped, the summary too).
    per_variant = max(1024, VARIANTS_BUDGET_BYTES // max(1, len(outcomes)))
    kept = [o.model_copy(update={"stdout": cap_text(o.stdout, per_variant),
                                 "stderr": cap_text(o.stderr, per_variant // 4)})
            for o in outcomes]
    output = {"fan_out": step.fan_out_from is not None, "count": len(outcomes),
              "succeeded": len(outcomes) - len(failed), "failed": len(failed),
              "variants": [o.model_dump() for o in kept]}
    if step.fleet is not None:  # each target's output is stored on its own: keep verdicts
        output.update(fan_out=False, fleet=True, skipped=skipped,
                      errors_allowed=errors_allowed, count=len(outcomes) + skipped,
                      variants=[{"id": o.id, "target": o.target, "ok": o.ok,
                                 "exit_code": o.exit_code, "error": (o.error or "")[:200]}
                                for o in outcomes])
    stdout = cap_text("\n".join(f"== {o.id} ({o.target or 'localhost'}) ==\n"
                                f"{o.stdout.rstrip()}" for o in kept))
    if len(failed) <= errors_allowed:
        return StepOutcome(ok=True, exit_code=0, stdout=stdout, output=output)
    first = failed[0]
    more = f", {skipped} not started (max_errors {errors_allowed} exceeded)" if skipped else ""
    return StepOutcome(ok=False, exit_code=first.exit_code, stdout=stdout, output=output,
                       error=f"{len(failed)} of {len(outcomes) + skipped} variants failed{more}; "
                             f"first: {first.id} on {first.target}: {first.error}",
                       error_type=first.error_type or ErrorType.STEP_FAILED,
                       retryable=False)


async def run_fanout(step: StepSpec, results: Mapping[str, Any], run_variant: RunVariant, *,
                     max_concurrency: int = DEFAULT_CONCURRENCY) -> StepOutcome:
    """Render, expand, run the variants (bounded) and aggregate them into one outcome."""
    try:
        variants = variant_specs(step, results)
    except TemplateError as err:
        return StepOutcome(ok=False, error=f"step {step.id}: {err}",
                           error_type=ErrorType.INVALID_STEP, retryable=False)
    outcomes, _ = await run_variants(variants, run_variant, max_concurrency=max_concurrency)
    return aggregate(step, outcomes)


OnVariant = Callable[[StepSpec, VariantOutcome | None], Awaitable[None]]


async def run_variants(variants: list[StepSpec], run_variant: RunVariant, *,
                       max_concurrency: int, errors_allowed: int | None = None,
                       on_start: Callable[[StepSpec], Awaitable[None]] | None = None,
                       on_end: OnVariant | None = None,
                       ) -> tuple[list[VariantOutcome], list[StepSpec]]:
    """Run variants, at most `max_concurrency` at once, in order. With `errors_allowed`, once
    more variants failed than that none starts any more (SSM's MaxErrors): the ones running
    finish. Returns the outcomes of those that ran and the variants never started.
    `on_start` / `on_end` see each variant begin and end (per-target rows, stored output);
    cancelling the caller cancels every running variant, which stops what it started."""
    gate = asyncio.Semaphore(max(1, max_concurrency))
    failed = 0
    not_started: list[StepSpec] = []

    async def one(variant: StepSpec) -> VariantOutcome | None:
        nonlocal failed
        async with gate:
            if errors_allowed is not None and failed > errors_allowed:
                not_started.append(variant)
                return None
            if on_start is not None:
                await on_start(variant)
            try:
                o = await run_variant(variant)
            except Exception as err:  # one variant's bug must not hide the others' results
                o = StepOutcome(ok=False, error=f"{type(err).__name__}: {err}",
                                error_type=ErrorType.EXECUTOR_ERROR)
            failed += not o.ok
            done = VariantOutcome(id=variant.id, target=variant.target, ok=o.ok,
                                  exit_code=o.exit_code, stdout=o.stdout, stderr=o.stderr,
                                  output=o.output, error=o.error, error_type=o.error_type)
            if on_end is not None:
                await on_end(variant, done)
        return done

    ran = await asyncio.gather(*(one(v) for v in variants))
    return [o for o in ran if o is not None], not_started


Authorize = Callable[[StepSpec, Any], Awaitable[str | None]]
Guard = Callable[[StepSpec, Any], contextlib.AbstractAsyncContextManager[None]]
Precheck = Callable[[StepSpec, Any], Awaitable[StepOutcome | None]]
Postcheck = Callable[[StepSpec, Any, StepOutcome], Awaitable[StepOutcome]]
ProcessHook = Callable[[StepSpec], Callable[[ProcessRef], Awaitable[None]]]


def executor_variant_runner(base: StepContext, *, authorize: Authorize,
                            guard: Guard | None = None,
                            precheck: Precheck | None = None,
                            postcheck: Postcheck | None = None,
                            process_hook: ProcessHook | None = None) -> RunVariant:
    """A `run_variant` that resolves the variant's asset and secrets and runs its executor,
    with the rest of the context (execution, timeout, heartbeat) from `base`.

    A variant's host is known only now, so RBAC must be decided per variant: `authorize`
    (variant, asset) returns None to allow or the denial's reason; a denied variant does not
    run and fails as RbacDenied. An unknown asset fails as UnknownAsset. `guard` (variant,
    asset) is held while the variant acts: the step activity holds the asset's lease there.
    `precheck` (variant, asset) returns an outcome when the variant must not act (a fleet
    step's preconditions, checked on each target). `postcheck` (variant, asset, outcome)
    judges what the variant did (the step's success criteria, on each host's own result)
    while its lease is still held. `process_hook` (variant) gives the variant's own
    `on_process`, so each variant's process group is recorded as its own (the step's attempt
    record knows every target's group, not only the last one to start)."""
    from opsconductor.activities.assets import UnknownAsset, resolve_asset
    from opsconductor.activities.executors.registry import executor_for
    from opsconductor.safety.secrets import resolver_from_env

    async def run(variant: StepSpec) -> StepOutcome:
        try:
            asset = await resolve_asset(variant.target, base.settings)
        except UnknownAsset as err:
            return StepOutcome(ok=False, error=str(err), error_type=ErrorType.UNKNOWN_ASSET,
                               retryable=False)
        denied = await authorize(variant, asset)
        if denied is not None:
            return StepOutcome(ok=False, error=denied, error_type=ErrorType.RBAC_DENIED,
                               retryable=False)
        if precheck is not None and (stopped := await precheck(variant, asset)) is not None:
            return stopped
        inputs, _values = await (base.secrets or resolver_from_env()).resolve(variant.inputs)
        ctx = dataclasses.replace(base, step=variant, inputs=inputs, asset=asset)
        if process_hook is not None:
            ctx = dataclasses.replace(ctx, on_process=process_hook(variant))
        async with (guard(variant, asset) if guard is not None
                    else contextlib.nullcontext()):
            outcome = await executor_for(variant.kind).run(ctx)
            return outcome if postcheck is None else await postcheck(variant, asset, outcome)

    return run
