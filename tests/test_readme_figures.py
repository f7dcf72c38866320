"""Every number in the README's tables appears in the file(s) the table cites.

Each table must be introduced by a line ``Source: `path` ...`` (paths in backticks or
markdown links, relative to the repository root) just above it. A number in a table cell
(outside the descriptive columns, and outside "(target ...)" notes, which quote goals
rather than measurements) must equal, up to the README's rounding, a number in one of
the cited files.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# columns that name things (models, peers, versions, workloads), not figures
DESCRIPTIVE = {"what", "peer", "workload", "category", "metric", "claim", "verdict"}
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.]*\d)", re.I)
SOURCE = re.compile(r"^Sources?:")


def readme_tables(text: str) -> list[tuple[list[str], list[str], list[list[str]]]]:
    """(cited paths, header cells, body rows) for every table."""
    lines = text.splitlines()
    tables, i = [], 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and set(lines[i + 1]) <= set("|-: "):
            j = i - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            src = lines[j] if j >= 0 and SOURCE.match(lines[j]) else ""
            paths = re.findall(r"`([^`\s]+\.(?:md|json|py))`", src) + re.findall(
                r"\]\(([^)\s]+\.(?:md|json|py))\)", src)
            header = _cells(lines[i])
            body = []
            k = i + 2
            while k < len(lines) and lines[k].startswith("|"):
                body.append(_cells(lines[k]))
                k += 1
            tables.append((paths, header, body))
            i = k
        else:
            i += 1
    return tables


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def numbers(text: str) -> list[str]:
    text = re.sub(r"\(target[^)]*\)", "", text)
    return NUMBER.findall(text.replace("−", "-"))


def matches(token: str, values: list[float]) -> bool:
    """token's value equals one of values up to token's last shown digit."""
    v = float(token)
    mant = token.lower().split("e")[0].lstrip("-")
    decimals = len(mant.split(".")[1]) if "." in mant else 0
    exp = int(token.lower().split("e")[1]) if "e" in token.lower() else 0
    half = 0.5 * 10 ** (exp - decimals) * (1 + 1e-9)
    return any(abs(v - w) <= half for w in values)


def test_rule_itself():
    assert numbers("0.87x (target 10x: not met)") == ["0.87"]
    assert numbers("max\\|diff\\| 5.7e-16 to 1.7e-15, n = 500") == ["5.7e-16", "1.7e-15", "500"]
    assert numbers("p_Holm = 1.8e-04 (worse)") == ["1.8e-04"]
    assert matches("1.44", [1.438]) and not matches("1.44", [1.43])
    assert matches("1.7e-15", [1.73e-15]) and not matches("1.7e-15", [1.8e-15])
    assert matches("-0.0490", [-0.049043]) and matches("500", [500.0])
    src = ("Source: `benchmarks/results/a.md` and [b](tests/b.py)\n\n"
           "| x | what |\n|---|---|\n| 1 | y |\n")
    (paths, header, body), = readme_tables(src)
    assert paths == ["benchmarks/results/a.md", "tests/b.py"] and body == [["1", "y"]]


TABLES = readme_tables(README.read_text(encoding="utf-8"))


def test_readme_has_tables():
    assert len(TABLES) >= 3


@pytest.mark.parametrize("index", range(len(TABLES)))
def test_every_number_in_a_table_is_in_the_file_it_cites(index):
    paths, header, body = TABLES[index]
    assert paths, f"table {index} ({header}): no 'Source: `file`' line just above it"
    values = []
    for p in paths:
        f = ROOT / p
        assert f.is_file(), f"table {index} cites {p}, which does not exist"
        values += [float(t) for t in NUMBER.findall(f.read_text(encoding="utf-8"))]
    missing = []
    for row in body:
        for head, cell in zip(header, row, strict=True):
            if head.lower() in DESCRIPTIVE:
                continue
            missing += [f"{row[0]}: {t}" for t in numbers(cell) if not matches(t, values)]
    assert not missing, f"table {index} cites {paths}; not found there: {missing}"
