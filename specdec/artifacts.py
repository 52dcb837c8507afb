"""Where trained artifacts live: ``artifacts/`` at the repository root, or any path given."""
from __future__ import annotations

from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent


def resolve(path: str | Path) -> Path:
    """``path`` as given if it exists (absolute, or relative to the working directory), else
    relative to the repository root (so ``artifacts/<name>`` works from any directory)."""
    given = Path(path).expanduser()
    if given.exists():
        return given
    beside = REPOSITORY / given
    if not given.is_absolute() and beside.exists():
        return beside
    raise FileNotFoundError(f"artifact {path} not found (looked in {Path.cwd()} and {REPOSITORY}); "
                            "train it with the commands in README.md")
