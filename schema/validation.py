"""Semantic validation of an execution request, reporting every problem with its field path."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ValidationError

from opsconductor.schema.dialect import WILDCARD_CHARS, expand_dependencies, normalize_step
from opsconductor.schema.limits import limit_problems
from opsconductor.schema.request import ExecutionRequest
from opsconductor.schema.templates import PLACEHOLDER, context_problems, find_placeholders
from opsconductor.schema.tools import ToolSpec, known_tools, lookup

CONDITION = re.compile(r"^\s*" + PLACEHOLDER.pattern + r"\s*(==|!=|>=|<=|>|<)\s*(.+?)\s*$")


class Problem(BaseModel):
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class RequestValidationError(ValueError):
    """The request is malformed; `problems` names each one with its field path."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid execution request ({len(problems)} problem(s)):\n{lines}")


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(request)"


def _pydantic_problems(err: ValidationError, prefix: str = "") -> list[Problem]:
    problems = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if p not in ("function-after", "function-before"))
        path = _loc(loc)
        if prefix:
            path = f"{prefix}.{path}" if path != "(request)" else prefix
        msg = e["msg"].removeprefix("Value error, ")
        problems.append(Problem(path=path, message=msg))
    return problems


def _raw_steps(raw: dict[str, Any]) -> tuple[str, list[Any]]:
    plan = raw.get("plan")
    if isinstance(plan, dict) and isinstance(plan.get("plan"), dict):
        return "plan.plan.steps", plan["plan"].get("steps") or []
    if isinstance(plan, dict):
        return "plan.plan.steps", plan.get("steps") or []
    return "plan.plan.steps", []


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """Return one dependency cycle as a list of step ids, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in graph.get(node, []):
            if dep not in graph:
                continue
            if state.get(dep) == 1:
                return [*stack[stack.index(dep):], dep]
            if state.get(dep) is None:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if state.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None


SECRET_KEYS = frozenset({"password", "passwd", "passphrase", "token", "api_key", "apikey",
                         "secret", "private_key", "client_secret", "secret_key", "access_key",
                         "auth_token", "access_token", "bearer_token", "refresh_token",
                         "authorization", "proxy-authorization", "x-api-key", "api-key",
                         "x-auth-token", "cookie"})
REFERENCE_FORM = '{"type": "secret", "path": "..."}'


def secret_problems(value: Any, path: str) -> list[Problem]:
    """Plain-text secrets (by key name) and malformed secret references, anywhere inside."""
    problems: list[Problem] = []
    if isinstance(value, dict):
        if value.get("type") == "secret":
            if not isinstance(value.get("path"), str) or not value.get("path"):
                problems.append(Problem(path=path, message=(
                    f"malformed secret reference: `path` is required ({REFERENCE_FORM})")))
            extra = set(value) - {"type", "path", "key"}
            if extra:
                problems.append(Problem(path=path, message=(
                    f"secret reference has unknown keys {sorted(extra)}")))
            return problems
        for key, sub in value.items():
            sub_path = f"{path}.{key}"
            if (str(key).lower() in SECRET_KEYS and sub not in (None, "")
                    and not isinstance(sub, dict | bool)):
                problems.append(Problem(path=sub_path, message=(
                    f"plain-text secret refused: it would enter workflow history; use a "
                    f"reference {REFERENCE_FORM}")))
            else:
                problems += secret_problems(sub, sub_path)
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            problems += secret_problems(sub, f"{path}[{i}]")
    return problems


def normalized_steps(raw: dict[str, Any]) -> tuple[str, list[Any], list[Problem]]:
    """The raw steps in our shape (upstream dialects read), with contradiction problems."""
    base, steps = _raw_steps(raw)
    out: list[Any] = []
    problems: list[Problem] = []
    for i, step in enumerate(steps if isinstance(steps, list) else []):
        if isinstance(step, dict):
            norm, found = normalize_step(step, i)
            problems += [Problem(path=f"{base}[{i}].{f}", message=m) for f, m in found]
            out.append(norm)
        else:
            out.append(step)
    return base, out, problems


def _tool_problems(spec: ToolSpec, inputs: dict[str, Any], path: str) -> list[Problem]:
    """The inputs against the tool's model, and the command or executor shape they build."""
    try:
        model = spec.inputs.model_validate(inputs)
    except ValidationError as err:
        found = _pydantic_problems(err, f"{path}.inputs")
        extra = {e["loc"][0] for e in err.errors() if e["type"] == "extra_forbidden" and e["loc"]}
        if extra:  # the model's cross-field rules only run without unknown keys: run them too
            rest = {k: v for k, v in inputs.items() if k not in extra}
            found += [p for p in _tool_problems(spec, rest, path) if p not in found]
        return found
    try:
        if spec.build_command is not None:
            spec.build_command(model)
        if spec.normalize is not None:
            spec.normalize(model)
    except ValueError as err:
        return [Problem(path=f"{path}.inputs", message=str(err))]
    return []


def _context_problems(spec: ToolSpec, inputs: dict[str, Any], held: list[Any],
                      path: str) -> list[Problem]:
    """Where a value cannot be made safe (SQL identifiers, URL hosts from data, header
    names, CR/LF in headers): judged on the executor's input shape, as it will be rendered."""
    try:
        model = spec.inputs.model_validate(inputs)
        shaped = (spec.normalize(model) if spec.normalize else
                  model.model_dump(mode="json", by_alias=True, exclude_none=True))
    except (ValidationError, ValueError):
        return []  # reported by _tool_problems
    return [Problem(path=p.path, message=p.message)
            for p in context_problems(spec.kind.value, shaped, held, path)]


def step_problems(raw: dict[str, Any]) -> list[Problem]:
    """Cross-field checks over the raw steps, so they run even when other fields are broken."""
    base, steps, problems = normalized_steps(raw)
    seen: dict[str, int] = {}
    graph: dict[str, list[str]] = {}
    ids: list[str] = [s["id"] for s in steps
                      if isinstance(s, dict) and isinstance(s.get("id"), str)]
    expanded: dict[int, list[str]] = {}
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            continue
        path = f"{base}[{i}]"
        sid = step.get("id")
        deps = step.get("depends_on") or []
        if isinstance(deps, list):
            concrete, wild, _ = expand_dependencies(deps, ids, sid)
            expanded[i] = concrete
            problems += [Problem(path=f"{path}.depends_on[{j}]", message=m) for j, m in wild]
        if isinstance(sid, str):
            if sid in seen:
                problems.append(Problem(
                    path=f"{path}.id",
                    message=f"duplicate step id {sid!r} (also {base}[{seen[sid]}])"))
            else:
                seen[sid] = i
                graph[sid] = list(expanded.get(i, []))
        inputs = step.get("inputs") or {}
        problems += secret_problems(inputs, f"{path}.inputs")
        tool = step.get("tool")
        if isinstance(tool, str) and tool:
            spec = lookup(tool, inputs)
            if spec is None:
                problems.append(Problem(
                    path=f"{path}.tool",
                    message=f"unknown tool {tool!r}; known tools: {', '.join(known_tools())} "
                            "and PowerShell cmdlets (Verb-Noun)"))
            elif isinstance(inputs, dict):
                problems += _tool_problems(spec, inputs, path)
                earlier = [(str(s["id"]), str(s.get("tool") or "")) for s in steps[:i]
                           if isinstance(s, dict) and isinstance(s.get("id"), str)]
                held, found = find_placeholders({"inputs": inputs}, step_id=str(sid),
                                                earlier=earlier, known=set(ids), base=path)
                problems += [Problem(path=p.path, message=p.message) for p in found]
                problems += _context_problems(spec, inputs, held, path)
                if spec.name == "conditional-check" and not found:
                    problems += _condition_problems(inputs, path)
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            continue
        for j, dep in enumerate(step.get("depends_on") or []):
            if not isinstance(dep, str) or WILDCARD_CHARS & set(dep):
                continue
            if dep not in seen:
                problems.append(Problem(path=f"{base}[{i}].depends_on[{j}]",
                                        message=f"depends on unknown step {dep!r}"))
            if dep == step.get("id"):
                problems.append(Problem(path=f"{base}[{i}].depends_on[{j}]",
                                        message="a step cannot depend on itself"))
    cycle = find_cycle(graph)
    if cycle and len(cycle) > 2:
        problems.append(Problem(path=f"{base}",
                                message=f"depends_on cycle: {' -> '.join(cycle)}"))
    return problems


def _condition_problems(inputs: dict[str, Any], path: str) -> list[Problem]:
    condition = inputs.get("condition")
    if isinstance(condition, str) and not CONDITION.match(condition):
        return [Problem(path=f"{path}.inputs.condition", message=(
            "condition must read `{{variable}} <op> <value>` (op one of == != > >= < <=)"))]
    return []


def reference_problems(req: ExecutionRequest) -> list[Problem]:
    ids = {s.id for s in req.steps}
    problems = []
    meta = req.plan.execution_metadata
    for i, meta_point in enumerate(meta.approval_points):
        sid = meta_point if isinstance(meta_point, str) else meta_point.get("step_id")
        if sid not in ids:
            problems.append(Problem(path=f"plan.execution_metadata.approval_points[{i}]",
                                    message=f"no step {sid!r} in the plan"))
    for i, sid in enumerate(meta.checkpoint_steps):
        if sid not in ids:
            problems.append(Problem(path=f"plan.execution_metadata.checkpoint_steps[{i}]",
                                    message=f"no step {sid!r} in the plan"))
    for i, point in enumerate(req.approval_points):
        if point.step_id not in ids:
            problems.append(Problem(path=f"approval_points[{i}].step_id",
                                    message=f"no step {point.step_id!r} in the plan"))
    for i, entry in enumerate(req.plan.plan.rollback_plan):
        if entry.step_id not in ids:
            problems.append(Problem(path=f"plan.plan.rollback_plan[{i}].step_id",
                                    message=f"no step {entry.step_id!r} in the plan"))
    return problems


def validate_request(raw: Any) -> ExecutionRequest:
    """Parse and check a request; raise RequestValidationError listing every problem."""
    if isinstance(raw, ExecutionRequest):
        raw = raw.model_dump(mode="json", by_alias=True, exclude_none=True)
    if not isinstance(raw, dict):
        raise RequestValidationError([Problem(path="(request)",
                                              message="the request must be a JSON object")])
    # Sizes, depth and bytes first: what breaks them is never parsed further.
    if limits := limit_problems(raw):
        raise RequestValidationError([Problem(path=p.path, message=p.message) for p in limits])
    problems: list[Problem] = []
    req: ExecutionRequest | None = None
    try:
        req = ExecutionRequest.model_validate(raw)
    except ValidationError as err:
        problems += _pydantic_problems(err)
    problems += step_problems(raw)
    if req is not None:
        problems += reference_problems(req)
    if problems:
        unique = list({(p.path, p.message): p for p in problems}.values())
        raise RequestValidationError(unique)
    assert req is not None
    return req
