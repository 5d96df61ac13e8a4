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

from twin.spec import Deployment, Scenario

M = TypeVar("M", bound=BaseModel)
MAX_FILE_BYTES = 20 * 1024 * 1024


class SpecError(ValueError):
    """An input file that cannot be used; the message says where and why."""


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
    """Parse a YAML file; unreadable or malformed files raise SpecError."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_FILE_BYTES:
            raise SpecError(f"{p}: file is larger than {MAX_FILE_BYTES // 2**20} MB")
        text = p.read_text(encoding="utf-8")
    except SpecError:
        raise
    except FileNotFoundError:
        raise SpecError(f"{p}: file not found") from None
    except IsADirectoryError:
        raise SpecError(f"{p}: is a directory, expected a YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{p}: cannot read file ({exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{p}: not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise SpecError(f"{p}: YAML nesting is too deep") from None


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
    return resolve_paths(scenario, Path(path).resolve().parent)


def resolve_paths(scenario: Scenario, base: Path) -> Scenario:
    """The scenario with every trace ``path`` made absolute against ``base``."""

    def fix(item: Any) -> Any:
        path = getattr(item, "path", None)
        if isinstance(path, str) and not Path(path).is_absolute():
            resolved = (base / path).resolve()
            if not resolved.is_file():
                raise SpecError(f"trace file {path!r} not found (looked in {base})")
            return item.model_copy(update={"path": str(resolved)})
        return item

    workloads = [fix(w) for w in scenario.workloads]
    processes = [
        p.model_copy(update={"arrivals": fix(p.arrivals)}) if p.arrivals else p
        for p in scenario.processes
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
