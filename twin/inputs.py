"""Bounded, side-effect-free reading of the files a user hands us.

Every file MLOps Twin reads (scenario, deployment, calibration, trace CSV,
run.json, checkpoints) goes through :func:`read_bytes`: it opens the path
without blocking (a FIFO would otherwise hang the open), refuses anything that
is not a regular file (devices such as ``/dev/zero`` report ``st_size`` 0, so a
size check alone does not stop them), and reads at most ``max_bytes + 1``
bytes, so a file that grows while we read cannot exhaust memory either.

YAML goes through :func:`load_yaml_text`: libyaml composes the node graph (an
alias is a shared node, so composition is linear in the file's size), then the
graph is measured — total nodes with aliases expanded, and nesting depth —
before anything is constructed; a "billion laughs" document is refused from
its few hundred bytes. Mapping keys given twice are refused instead of the last
one silently winning.

Error messages name the file and what was wrong, never the file's contents:
a path may point at ``/proc/self/environ`` or a secret.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

# Hand-written scenarios are kilobytes; libyaml parses ~1 MB/s on a busy host.
MAX_YAML_BYTES = 2 * 1024 * 1024
# Trace CSVs and result tables: ~1.5 M rows of "second,rate" — over two weeks of
# per-second rates — parsed in well under a second.
MAX_TABLE_BYTES = 16 * 1024 * 1024
# Nodes of a YAML document with every alias expanded, and its deepest nesting.
MAX_YAML_NODES = 500_000
MAX_YAML_DEPTH = 64


class SpecError(ValueError):
    """A file that cannot be used; the message names the file and the reason."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_bytes(path: str | Path, max_bytes: int, what: str = "file") -> bytearray:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them.

    Raises :class:`SpecError` (naming ``path`` and ``what`` was expected) for a
    missing file, a directory, a device, a FIFO, a socket, or a file larger than
    ``max_bytes``.
    """
    p = Path(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(p, flags)
    except FileNotFoundError:
        raise SpecError(f"{p}: file not found (expected {what})") from None
    except PermissionError:
        raise SpecError(f"{p}: permission denied (expected a readable {what})") from None
    except OSError as exc:
        raise SpecError(f"{p}: cannot open ({exc.strerror}; expected {what})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise SpecError(f"{p}: is {_kind(mode)}, expected {what} (a regular file)")
        # one growing buffer, not a list of chunks joined at the end: half the peak
        data = bytearray()
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            data += chunk
            left -= len(chunk)
    except OSError as exc:
        raise SpecError(f"{p}: cannot read ({exc.strerror})") from None
    except MemoryError:
        raise SpecError(f"{p}: not enough memory to read it (limit {_size(max_bytes)})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise SpecError(f"{p}: larger than the {_size(max_bytes)} allowed for {what}")
    return data


def read_text(path: str | Path, max_bytes: int, what: str = "file") -> str:
    """:func:`read_bytes` decoded as UTF-8; undecodable bytes name the offset only."""
    data = read_bytes(path, max_bytes, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None


def _size(n: int) -> str:
    return f"{n / 2**20:g} MB" if n >= 2**20 else f"{n} bytes"


# --------------------------------------------------------------------------- YAML

_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_Base):  # type: ignore[misc, valid-type]
    """libyaml's safe loader that refuses duplicate keys (see :func:`load_yaml_text`)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:  # unhashable key: SafeConstructor reports it below
                continue
            if dup:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_short_key(key)}", mark
                )
        return super().construct_mapping(node, deep=deep)


def _short_key(key: Any) -> str:
    text = repr(key)
    return text if len(text) <= 40 else text[:37] + "..."


def measure(node: yaml.Node) -> tuple[int, int]:
    """(nodes with aliases expanded, deepest nesting) of a composed YAML graph.

    Linear in the graph: each distinct node is measured once, its expanded size
    reused wherever an alias points at it. Iterative, so deep nesting cannot
    overflow the stack. Expanded sizes are capped just past ``MAX_YAML_NODES``.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_: set[int] = set()  # nodes whose children are being measured
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    while stack:
        n, done = stack.pop()
        key = id(n)
        if key in size:
            continue
        children = _children(n)
        if done or not children:
            open_.discard(key)
            size[key] = min(1 + sum(size[id(c)] for c in children), MAX_YAML_NODES + 1)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            continue
        if key in open_:  # an anchor used inside itself: endless when expanded
            return MAX_YAML_NODES + 1, MAX_YAML_DEPTH + 1
        open_.add(key)
        stack.append((n, True))
        for c in children:
            if id(c) in open_:
                return MAX_YAML_NODES + 1, MAX_YAML_DEPTH + 1
            if id(c) not in size:
                stack.append((c, False))
    return size[id(node)], depth[id(node)]


def _children(n: yaml.Node) -> list[yaml.Node]:
    if isinstance(n, yaml.SequenceNode):
        return list(n.value)
    if isinstance(n, yaml.MappingNode):
        return [x for pair in n.value for x in pair]
    return []


def load_yaml_text(text: str, source: str) -> Any:
    """Parse one YAML document safely; problems raise :class:`SpecError` naming
    ``source`` with a line and column, never quoting the text."""
    try:
        loader = _StrictLoader(text)
    except yaml.YAMLError as exc:
        raise SpecError(_yaml_message(exc, source)) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        nodes, deep = measure(node)
        if nodes > MAX_YAML_NODES:
            raise SpecError(
                f"{source}: YAML expands to more than {MAX_YAML_NODES:,} values "
                "(aliases referring to aliases?); write the values out or use fewer aliases"
            )
        if deep > MAX_YAML_DEPTH:
            raise SpecError(f"{source}: YAML is nested more than {MAX_YAML_DEPTH} levels deep")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise SpecError(_yaml_message(exc, source)) from None
    except RecursionError:
        raise SpecError(f"{source}: YAML nesting is too deep") from None
    finally:
        loader.dispose()


def _yaml_message(exc: yaml.YAMLError, source: str) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or type(exc).__name__
    # libyaml's problems are fixed phrases ("found character that cannot start any
    # token"); the mark's snippet, which would quote the file, is left out.
    return f"{source}: not valid YAML{where}: {problem}"


def read_yaml_file(path: str | Path, what: str = "YAML file") -> Any:
    """Read and parse a YAML file with the limits above."""
    return load_yaml_text(read_text(path, MAX_YAML_BYTES, what), str(path))
