"""Semantic validation of an execution request, reporting every problem with its field path."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from opsconductor.schema.request import ExecutionRequest
from opsconductor.schema.tools import TOOLS, lookup


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
        problems.append(Problem(path=path, message=e["msg"]))
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


def step_problems(raw: dict[str, Any]) -> list[Problem]:
    """Cross-field checks over the raw steps, so they run even when other fields are broken."""
    base, steps = _raw_steps(raw)
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    graph: dict[str, list[str]] = {}
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            continue
        path = f"{base}[{i}]"
        sid = step.get("id")
        if isinstance(sid, str):
            if sid in seen:
                problems.append(Problem(
                    path=f"{path}.id",
                    message=f"duplicate step id {sid!r} (also {base}[{seen[sid]}])"))
            else:
                seen[sid] = i
                deps = step.get("depends_on") or []
                graph[sid] = ([d for d in deps if isinstance(d, str)]
                              if isinstance(deps, list) else [])
        tool = step.get("tool")
        if isinstance(tool, str) and tool:
            spec = lookup(tool)
            if spec is None:
                problems.append(Problem(
                    path=f"{path}.tool",
                    message=f"unknown tool {tool!r}; known tools: {', '.join(sorted(TOOLS))}"))
            else:
                inputs = step.get("inputs") or {}
                if isinstance(inputs, dict):
                    try:
                        spec.inputs.model_validate(inputs)
                    except ValidationError as err:
                        problems += _pydantic_problems(err, f"{path}.inputs")
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            continue
        for j, dep in enumerate(step.get("depends_on") or []):
            if isinstance(dep, str) and dep not in seen:
                problems.append(Problem(path=f"{base}[{i}].depends_on[{j}]",
                                        message=f"depends on unknown step {dep!r}"))
            if isinstance(dep, str) and dep == step.get("id"):
                problems.append(Problem(path=f"{base}[{i}].depends_on[{j}]",
                                        message="a step cannot depend on itself"))
    cycle = find_cycle(graph)
    if cycle and len(cycle) > 2:
        problems.append(Problem(path=f"{base}",
                                message=f"depends_on cycle: {' -> '.join(cycle)}"))
    return problems


def reference_problems(req: ExecutionRequest) -> list[Problem]:
    ids = {s.id for s in req.steps}
    problems = []
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
