"""Nothing in the repository names a path outside it (a user's clone has none of them)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# absolute paths of a particular machine: temp dirs, home dirs, mounts, CI workspaces
PATTERN = re.compile(
    r"(?<![\w.~-])/(tmp|work|root|home|Users|mnt|opt|srv|scratch|var/folders|private/var)/"
    r"|(?<![A-Za-z])[A-Z]:\\\\?(Users|Windows|Program Files|Temp|tmp)\b"
)
# justified exceptions: (path, substring on the line)
ALLOWED = {
    ("tests/test_no_outside_paths.py", ""),  # this file's own patterns and examples
}


def _tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
        files = [f for f in out.splitlines() if f]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk the tree
        files = []
        for d, dirs, names in os.walk(ROOT):
            dirs[:] = [x for x in dirs if not x.startswith(".") and x not in (
                "__pycache__", "build", "dist", "node_modules")]
            files += [os.path.relpath(os.path.join(d, n), ROOT) for n in names]
    return files


def offending_lines(files: list[str]) -> list[str]:
    bad = []
    for f in files:
        p = ROOT / f
        if not p.is_file() or p.stat().st_size > 5_000_000:
            continue
        data = p.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        for i, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if PATTERN.search(line) and not any(f == a and s in line for a, s in ALLOWED):
                bad.append(f"{f}:{i}: {line.strip()[:120]}")
    return bad


def test_pattern_catches_machine_paths():
    for text in ("/tmp/x.safetensors", "see /work/shared/jax-facts.md", "/root/.cache/a",
                 "/home/user/venv/bin/python", "C:\\Users\\me", "/Users/me/data",
                 '"/mnt/data/x"'):
        assert PATTERN.search(text), text
    for text in ("benchmarks/results/x.json", "#!/usr/bin/env python", "a/tmp/b",
                 "https://example.org/home/page", "QUICK:\\n", "~/tmp/x", "./work/x"):
        assert not PATTERN.search(text), text


def test_no_tracked_text_file_names_a_path_outside_the_repository():
    files = _tracked_files()
    assert "README.md" in files and "jaxlrp/cam.py" in files
    bad = offending_lines(files)
    assert not bad, "absolute paths outside the repository:\n" + "\n".join(bad)
