"""Reading YAML safely while remembering where each value was written, for error messages."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import CampaignFileError

MAX_FILE_BYTES = 2_000_000
# Values once every alias (*name) is replaced by what it names: more than a file of MAX_FILE_BYTES could write out,
# so only aliases reach it ("billion laughs": ten aliases of ten aliases of ... make 10**9 values from 1 kB).
MAX_EXPANDED_NODES = MAX_FILE_BYTES


@dataclass(frozen=True)
class YamlSource:
    """A parsed YAML document (``data``) and its node tree, to find the line of a field path."""

    path: Path
    data: Any
    root: yaml.Node | None

    @classmethod
    def read(cls, path: Path) -> "YamlSource":
        """Loads ``path`` with the safe loader only.

        Raises:
            CampaignFileError: the file is missing, too large, not YAML, uses unsafe tags, repeats a key,
                or is not a mapping at the top level.
        """
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise CampaignFileError(str(path), ["file not found; check the path"]) from None
        except (IsADirectoryError, PermissionError, OSError) as exc:
            raise CampaignFileError(str(path), [f"cannot read the file ({exc.strerror or exc})"]) from None
        if len(raw) > MAX_FILE_BYTES:
            raise CampaignFileError(str(path), [f"file is {len(raw)} bytes; a campaign file must be under {MAX_FILE_BYTES}"])
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CampaignFileError(str(path), [f"byte {exc.start}: not UTF-8 text; save the file as UTF-8"]) from None
        root = None
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
            size = _expanded_size(root, {}, set())
            dupes = list(_duplicate_keys(root))
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            problem = exc.problem or str(exc)
            if "could not determine a constructor" in problem:
                problem = f"{problem}; only plain YAML is accepted (no !! tags)"
            raise CampaignFileError(str(path), [f"{where}YAML syntax: {problem}"]) from None
        except yaml.YAMLError as exc:
            raise CampaignFileError(str(path), [f"YAML error: {exc}"]) from None
        except RecursionError:
            raise CampaignFileError(str(path), ["YAML nesting is too deep"]) from None
        except ValueError as exc:  # a scalar the safe loader cannot build: a date like 2024-13-45, a 5000-digit integer
            raise CampaignFileError(str(path), [_unreadable_value(root) or f"YAML value: {exc}"]) from None
        if size > MAX_EXPANDED_NODES:
            endless = "an alias (*name) inside the value it names makes an endless value" if size == math.inf else (
                f"aliases (*name) expand the file to {size:,} values, more than {MAX_EXPANDED_NODES:,}")
            raise CampaignFileError(str(path), [f"{endless}; write the values out instead"])
        if not isinstance(data, dict):
            kind = "empty" if data is None else f"a {type(data).__name__}"
            raise CampaignFileError(str(path), [f"the file is {kind}; a campaign file is a mapping (name:, parameters:, …)"])
        if dupes:
            raise CampaignFileError(str(path), dupes)
        return cls(path=path, data=data, root=root)

    def where(self, loc: tuple[str | int, ...]) -> str:
        """``'line N: '`` for the deepest node of ``loc`` that exists in the file, or ``''``."""
        node, line = self.root, None
        for part in loc:
            if node is None:
                break
            line = node.start_mark.line + 1
            node = _child(node, part)
        if node is not None:
            line = node.start_mark.line + 1
        return f"line {line}: " if line else ""


def _child(node: yaml.Node, part: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return node.value[part]
    return None


def _expanded_size(node: yaml.Node | None, sizes: dict[int, float], active: set[int]) -> float:
    """How many nodes the document has once every alias is replaced by what it names (inf if it never ends)."""
    if node is None:
        return 0
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in active:
        return math.inf
    active.add(key)
    children = node.value if isinstance(node, yaml.SequenceNode) else (
        [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
    sizes[key] = total = 1 + sum(_expanded_size(child, sizes, active) for child in children)
    active.discard(key)
    return total


def _unreadable_value(root: yaml.Node | None) -> str | None:
    """``'line N: cannot read …'`` for the first scalar the safe loader cannot build, or None."""
    constructor = yaml.constructor.SafeConstructor()
    stack, visited = [root], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            try:
                constructor.construct_object(node)
            except ValueError as exc:
                shown = node.value if len(node.value) <= 30 else node.value[:30] + "…"
                reason = str(exc).split(";")[0]
                line = node.start_mark.line + 1
                return f"line {line}: cannot read the value {shown!r} ({reason}); quote it or correct it"
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))
        elif isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in reversed(node.value) for n in reversed(pair))
    return None


def _duplicate_keys(node: yaml.Node | None, path: str = "", visited: set[int] | None = None):
    # Each node once: an alias repeats a node, and walking repeats of repeats ("billion laughs") never ends.
    visited = set() if visited is None else visited
    if node is None or id(node) in visited:
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else "?"
            if name in seen:
                yield f"line {key.start_mark.line + 1}: {path + name}: key appears twice; keep one"
            seen.add(name)
            yield from _duplicate_keys(value, f"{path}{name}.", visited)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, f"{path.rstrip('.')}[{i}].", visited)
