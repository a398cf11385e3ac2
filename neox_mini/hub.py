"""Where a model comes from: a local folder, or (issue #4) a Hub id + revision in the HF cache.

`resolve_model(name_or_path, revision)` returns the local folder to load from.
"""

from __future__ import annotations

from pathlib import Path


class ResolveError(ValueError):
    """A model name, revision or folder that cannot be found."""


def resolve_model(name_or_path: str | Path, revision: str | None = None) -> Path:
    path = Path(name_or_path)
    if path.is_dir():
        return path
    raise ResolveError(f"model folder {path} does not exist (Hub names are not resolved yet)")
