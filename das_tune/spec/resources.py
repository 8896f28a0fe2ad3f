"""Where the declarative files that ship with das-tune live.

In a wheel, ``search_spaces/`` and ``studies/`` are installed inside the package; in a source
checkout (editable install) they sit at the repository's top level. Both are looked at, the package
first, so an installed ``das-tune`` finds them from any directory.
"""

from __future__ import annotations

from pathlib import Path

MAX_PATH_CHARS = 4096  # PATH_MAX: a longer "name" is not a file, and the OS would refuse to look
_PACKAGE = Path(__file__).resolve().parent.parent  # das_tune/


def builtin_dir(kind: str) -> Path:
    """The folder of built-in ``kind`` files ("search_spaces" or "studies")."""
    for candidate in (_PACKAGE / kind, _PACKAGE.parent / kind):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"das-tune is installed without its {kind}/ folder")


def builtin_names(kind: str) -> list[str]:
    return sorted(p.stem for p in builtin_dir(kind).glob("*.yaml"))


def resolve(kind: str, name_or_path: str | Path) -> Path | None:
    """A path for a built-in name or an explicit file path; None when neither exists (or it is no path at all)."""
    if len(str(name_or_path)) > MAX_PATH_CHARS:
        return None
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.parent != Path("."):
        return path if path.is_file() else None
    builtin = builtin_dir(kind) / f"{name_or_path}.yaml"
    return builtin if builtin.is_file() else None
