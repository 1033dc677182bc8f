"""Result files a killed run leaves whole.

The GPU benchmarks save after every row because a lease can end at any moment; a file half
written when that happens would lose every row before it. Each file is written beside its
place and renamed over it, which the OS does in one step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def save_results(folder: Path, results: dict[str, Any], markdown: str) -> None:
    """`results.json` and `results.md` in `folder`, each either the old file or the new one."""
    write_whole(folder / "results.json", json.dumps(results, indent=2) + "\n")
    write_whole(folder / "results.md", markdown)


def write_whole(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader (or a kill) never sees part of it."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)
