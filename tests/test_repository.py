"""What the repository tracks: a fresh clone must not carry a developer's local state.

A tracked `data` link to a developer's corpus once made `make demo` fail in every fresh clone (`mkdir data/demo`
on a dangling link), while the whole suite passed. These checks read `git ls-files`, so they skip outside a git
checkout (an unpacked release).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 5 * 1024 * 1024  # the project's limit for a committed file


def _git(*args: str) -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked-file checks need `git ls-files`")
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return [line for line in done.stdout.splitlines() if line]


def test_no_tracked_file_is_ignored() -> None:
    # a path .gitignore ignores but the index holds was added by mistake (runs/, data/, caches, weights)
    assert _git("ls-files", "--cached", "--ignored", "--exclude-standard") == []


def test_tracked_links_stay_inside_the_repository() -> None:
    for line in _git("ls-files", "--stage"):
        mode, _, _, path = line.split(maxsplit=3)
        if mode != "120000":  # git's mode for a symbolic link
            continue
        target = _git("cat-file", "-p", f":{path}")[0]
        resolved = (ROOT / path).parent.joinpath(target).resolve()
        assert resolved.is_relative_to(ROOT), f"{path} links outside the repository, to {target}"


def test_no_tracked_file_is_a_large_artefact() -> None:
    sizes = {path: (ROOT / path).stat().st_size for path in _git("ls-files") if (ROOT / path).is_file()}
    assert {path: size for path, size in sizes.items() if size > MAX_BYTES} == {}
