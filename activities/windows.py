"""The change-window policy file, read by the worker (re-read at each call, so a policy
change reaches waiting runs), and the asset tags that decide which policies govern a run."""

from __future__ import annotations

from pathlib import Path

import yaml
from temporalio import activity
from temporalio.exceptions import ApplicationError

from opsconductor.activities.assets import UnknownAsset, resolve_asset
from opsconductor.schema.config import Settings
from opsconductor.schema.windows import (
    RunScope,
    WindowPoliciesInput,
    WindowPoliciesResult,
    WindowPolicyError,
    WindowPolicySet,
    parse_policies,
)


def load_window_policies(path: Path) -> WindowPolicySet:
    """Read and validate a policy file; a clear error naming the file and each problem."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise WindowPolicyError(f"{path}: cannot read the window policy: {err}") from None
    return parse_policies(data, str(path))


class WindowActivities:
    def __init__(self, *, settings: Settings) -> None:
        self.settings = settings

    @activity.defn(name="window_policies")
    async def window_policies(self, inp: WindowPoliciesInput) -> WindowPoliciesResult:
        tags = set(inp.tags)
        for target in inp.assets:
            try:
                asset = await resolve_asset(target, self.settings)
            except UnknownAsset:
                continue  # the locks and the step refuse an unknown asset, with its name
            if asset is not None:
                tags.update(asset.tags)
        scope = RunScope(environment=inp.environment, tenant=inp.tenant,
                         asset_tags=sorted(tags))
        path = self.settings.window_policy
        if path is None:
            return WindowPoliciesResult(scope=scope)
        try:
            policies = load_window_policies(path)
        except WindowPolicyError as err:  # fail closed: a broken policy never opens a window
            raise ApplicationError(str(err), type="WindowPolicyInvalid",
                                   non_retryable=True) from None
        return WindowPoliciesResult(policies=policies, scope=scope, source=str(path))
