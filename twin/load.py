"""Reading scenario and deployment files, with errors a person can act on.

Every failure becomes a :class:`SpecError` whose message names the file, the
path to the field (``servers[2].ram_gb``) and what was expected — never a
traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from twin.inputs import SpecError, read_yaml_file
from twin.spec import Deployment, Scenario

__all__ = ["SpecError", "dump_yaml", "load_deployment", "load_scenario", "parse", "read_yaml"]

M = TypeVar("M", bound=BaseModel)


def format_loc(loc: tuple[Any, ...]) -> str:
    """``('servers', 2, 'ram_gb')`` → ``servers[2].ram_gb``; union tags are dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and (part.startswith("function-") or part in _UNION_TAGS):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


_UNION_TAGS = {
    "constant",
    "exponential",
    "lognormal",
    "gamma",
    "table",
    "poisson",
    "periodic",
    "trace",
    "steady",
    "fluctuating",
    "step",
}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_validation_error(err: ValidationError, source: str) -> str:
    """One readable paragraph: a line per problem, each with its field path."""
    lines = [f"{source}: {err.error_count()} problem(s) in {err.title}:"]
    for e in err.errors()[:20]:
        msg = e["msg"].removeprefix("Value error, ")
        got = "" if e["type"] in {"missing", "value_error"} else f" (got {_short(e.get('input'))})"
        lines.append(f"  {format_loc(tuple(e['loc']))}: {msg}{got}")
    if err.error_count() > 20:
        lines.append(f"  … and {err.error_count() - 20} more")
    return "\n".join(lines)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file within the input limits of :mod:`twin.inputs`; unreadable,
    oversized, malformed or alias-bomb files raise SpecError."""
    return read_yaml_file(path)


def parse(model: type[M], data: Any, source: str) -> M:
    """Validate ``data`` as ``model``; problems raise SpecError naming ``source``."""
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise SpecError(
            f"{source}: expected a mapping of {model.__name__} fields at the top level, got {kind}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, source)) from None
    except (RecursionError, TypeError, OverflowError) as exc:
        raise SpecError(f"{source}: cannot interpret the document ({exc})") from None


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario YAML file.

    Relative trace paths are resolved against the file's folder, so the
    scenario can be handed to a worker process in another directory.
    """
    scenario = parse(Scenario, read_yaml(path), str(path))
    return resolve_paths(scenario, Path(path).resolve().parent, source=str(path))


def resolve_paths(scenario: Scenario, base: Path, source: str | None = None) -> Scenario:
    """The scenario with every trace ``path`` made absolute under ``base``.

    A relative path must stay inside the scenario's folder (``base``), so
    ``../../secrets`` is refused; an absolute path (our own tools write them
    when they save a loaded scenario elsewhere) must name a ``.csv`` file, which
    keeps ``/proc/self/environ`` and key files out. Either way the file is read
    through the bounded reader and no message quotes its contents. Every trace
    is read and checked now, so ``validate`` fails exactly when a run would.
    """
    from twin.workload import read_trace

    where = source or f"scenario {scenario.name!r}"
    root = base.resolve()

    def fix(item: Any, field: str) -> Any:
        path = getattr(item, "path", None)
        if not isinstance(path, str):
            return item
        resolved = (root / path).resolve()  # an absolute path replaces root here
        if not Path(path).is_absolute() and not resolved.is_relative_to(root):
            raise SpecError(
                f"{where}: {field}.path: {path!r} leaves the scenario's folder {root}; "
                "put the trace file beside the scenario (or in a sub-folder)"
            )
        if resolved.suffix.lower() != ".csv":
            raise SpecError(
                f"{where}: {field}.path: {path!r} is not a .csv file (trace files are CSV)"
            )
        try:
            read_trace(str(resolved), item.column)
        except ValueError as exc:
            raise SpecError(f"{where}: {field}.path: {exc}") from None
        return item.model_copy(update={"path": str(resolved)})

    workloads = [fix(w, f"workloads[{i}]") for i, w in enumerate(scenario.workloads)]
    processes = [
        p.model_copy(update={"arrivals": fix(p.arrivals, f"processes[{i}].arrivals")})
        if p.arrivals
        else p
        for i, p in enumerate(scenario.processes)
    ]
    return scenario.model_copy(update={"workloads": workloads, "processes": processes})


def load_deployment(path: str | Path) -> Deployment:
    """Read and validate a deployment YAML file (not yet checked against a scenario)."""
    return parse(Deployment, read_yaml(path), str(path))


def dump_yaml(model: BaseModel) -> str:
    """A model as YAML, omitting defaults, readable by the matching loader.

    Python mode, not JSON mode: a table service time's batch sizes are int
    keys, and JSON mode would turn them into strings the spec refuses.
    """
    return yaml.safe_dump(
        model.model_dump(mode="python", exclude_defaults=True), sort_keys=False, allow_unicode=True
    )
