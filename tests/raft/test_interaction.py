"""Runs every data-driven Raft scenario in ``tests/raft/interaction/testdata`` (the format,
the commands and how to regenerate expected output are in ``interaction/harness.py``).

Each file is one test: its commands run in order against a fresh environment and the
whole output must match the file. With ``SENTINEL_REWRITE=1`` the files are rewritten with
the actual output instead (then read the diff: the comments must still be true).
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest
from interaction.harness import ScriptFailed, parse_script, render_script, rewrite_requested, run_script

TESTDATA = Path(__file__).parent / "interaction" / "testdata"
SCRIPTS = sorted(TESTDATA.glob("*.txt"))


def test_scenarios_exist() -> None:
    assert SCRIPTS, f"no scenario files in {TESTDATA}"


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_script_round_trips(path: Path) -> None:
    """Parsing a script and rendering it with its own expected output gives it back: a
    rewrite changes outputs only, never the commands or the comments around them."""
    text = path.read_text()
    stanzas, trailer = parse_script(text)
    assert render_script(stanzas, [s.expected for s in stanzas], trailer) == text


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_scenario(path: Path) -> None:
    try:
        expected, actual = run_script(path)
    except ScriptFailed as e:
        pytest.fail(str(e), pytrace=False)
    if rewrite_requested():
        if actual != expected:
            path.write_text(actual)
        return
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                fromfile=f"{path.name} (expected)",
                tofile=f"{path.name} (actual)",
            )
        )
        pytest.fail(f"scenario {path.name} differs from its expected output:\n{diff}", pytrace=False)
