"""Generated blocks: filled and refilled from a block's output, one-line errors for a broken page, `--check` for
stale pages, and every block committed in the repository up to date with the committed rows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from calib.cli import app
from calib.core.errors import CalibError
from calib.study import blocks
from calib.study.blocks import BlockInfo, build, markers, render
from tests.conftest import REPO, SHARED

runner = CliRunner()


@pytest.fixture
def counter(monkeypatch) -> dict:
    """A block `test-count` whose output is whatever `value` holds (with extra trailing newlines)."""
    state = {"value": "one"}
    monkeypatch.setitem(blocks._BLOCKS, "test-count",
                        BlockInfo("test-count", lambda repo: f"count: {state['value']}\n\n\n", "test block"))
    return state


def page(tmp_path: Path, body: str = "stale\nlines\n") -> Path:
    path = tmp_path / "page.md"
    path.write_text("# Title\n\n" + markers("test-count", body) + "\nafter\n"
                    "```\n" + markers("test-count", "an example, left as it is") + "```\n")
    return path


def test_a_block_is_filled_and_refilled(tmp_path, counter):
    path = page(tmp_path)
    begin = blocks.BEGIN.format(name="test-count")
    assert build(tmp_path, [path], check=True) == [path] and "stale" in path.read_text()  # check writes nothing
    assert build(tmp_path, [path]) == [path]
    assert path.read_text() == (f"# Title\n\n{begin}\ncount: one\n<!-- end test-count -->\n\nafter\n```\n{begin}\n"
                                "an example, left as it is\n<!-- end test-count -->\n```\n")
    assert build(tmp_path, [path]) == []
    counter["value"] = "two"
    assert build(tmp_path, [path]) == [path]
    assert "count: two\n<!-- end test-count -->" in path.read_text() and "count: one" not in path.read_text()


def test_a_per_page_block_sees_its_page(tmp_path, monkeypatch):
    """A command's output pages (`calib diagnose`'s ranked-<set>.md beside its rows) hold one block each, filled
    from where the page is."""
    monkeypatch.setitem(blocks._BLOCKS, "test-where", BlockInfo("test-where", lambda repo, page: f"{page.name}\n",
                                                                "test block", per_page=True))
    pages = [tmp_path / name for name in ("a.md", "b.md")]
    for path in pages:
        path.write_text(markers("test-where"))
    assert build(tmp_path, pages) == pages
    assert ["a.md\n" in pages[0].read_text(), "b.md\n" in pages[1].read_text()] == [True, True]


@pytest.mark.parametrize("text,message", [
    ("a\n<!-- begin no-such-block -->\n<!-- end no-such-block -->\n", "page.md:2: unknown block 'no-such-block'"),
    ("a\nb\n<!-- begin test-count -->\nx\n", "page.md:3: block test-count has no end marker"),
    ("<!-- end test-count -->\n", "page.md:1: end marker of block test-count without a begin marker"),
    ("<!-- begin test-count -->\n<!-- end other -->\n", "page.md:2: end marker of block other inside block "
                                                        "test-count (line 1)"),
])
def test_a_broken_page_is_a_one_line_error(tmp_path, counter, text, message):
    path = tmp_path / "page.md"
    path.write_text(text)
    with pytest.raises(CalibError, match=re.escape(message)):
        render(text, tmp_path, path)
    result = runner.invoke(app, ["study", "blocks", "--repo", str(tmp_path), str(path)])
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and path.read_text() == text


def test_check_exits_1_on_a_stale_page_and_0_after_a_build(tmp_path, counter):
    path = page(tmp_path)
    check = ["study", "blocks", "--check", "--repo", str(tmp_path), str(path)]
    result = runner.invoke(app, check)
    assert result.exit_code == 1 and f"{path}: blocks differ from the rows" in result.output, result.output
    assert "stale" in path.read_text()
    result = runner.invoke(app, ["study", "blocks", "--repo", str(tmp_path), str(path)])
    assert result.exit_code == 0 and f"rewrote {path}" in result.output, result.output
    result = runner.invoke(app, check)
    assert result.exit_code == 0 and "up to date" in result.output, result.output


def test_every_committed_block_is_up_to_date_with_the_rows():
    if not (SHARED / "weights").is_dir():
        pytest.skip(f"{SHARED / 'weights'} is missing (the weight cards the tables quote); set CALIB_SHARED")
    assert build(REPO, check=True) == []


def test_families_tables_never_pool_machines(tmp_path):
    """The committed families rows again as if a second CPU had run them: one table per machine, each of them
    the single machine's table."""
    import json
    import shutil

    run = REPO / blocks.FAMILIES
    copy = tmp_path / blocks.FAMILIES
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("report", "plots", "*.md", "*.png", "*.html"))
    rows = [json.loads(line) for line in (run / "rows.jsonl").read_text().splitlines() if line.strip()]
    other = [{k: v for k, v in r.items() if k != "hardware_key"} | {"cpu": "Other CPU"} for r in rows]
    (copy / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + other))
    one = blocks.families_default(REPO).split("\n\n")
    two = blocks.families_default(tmp_path).split("\n\n")

    def strip_cards(table: str) -> list[list[str]]:  # the copy has no results/training: no card for some models
        return [(parts := line.split(" | ", 3))[:2] + parts[3:] for line in table.splitlines()]

    def by_machine(parts: list[str]) -> dict[str, list]:  # machine (CPU | ISA) -> its table
        return {parts[i].split(" (CPU")[0].removeprefix("Machine: "): strip_cards(parts[i + 1])
                for i in range(1, len(parts), 2)}

    mine, theirs = by_machine(one), by_machine(two)
    assert two[0] == one[0] and len(two) == 1 + 2 * 2 * len(mine)  # every machine of the rows, and its twin
    for machine, table in mine.items():
        assert theirs[machine] == table
        assert theirs["Other CPU" + machine[machine.index(" |"):]] == table
