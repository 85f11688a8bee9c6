"""Reading YAML safely while remembering where each value was written, for error messages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import CampaignFileError

MAX_FILE_BYTES = 2_000_000


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
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
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
        if not isinstance(data, dict):
            kind = "empty" if data is None else f"a {type(data).__name__}"
            raise CampaignFileError(str(path), [f"the file is {kind}; a campaign file is a mapping (name:, parameters:, …)"])
        dupes = list(_duplicate_keys(root))
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


def _duplicate_keys(node: yaml.Node | None, path: str = ""):
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else "?"
            if name in seen:
                yield f"line {key.start_mark.line + 1}: {path + name}: key appears twice; keep one"
            seen.add(name)
            yield from _duplicate_keys(value, f"{path}{name}.")
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, f"{path.rstrip('.')}[{i}].")
