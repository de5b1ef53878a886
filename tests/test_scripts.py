"""The scripts whose rows are committed run at toy size (tiny models, the tiny data tree, short timings), in a
temporary folder, so a change in calib that breaks one fails here rather than on the next real run. Long shell
jobs (`scripts/*.sh`: a venv, minutes of CPU) are checked only for referring to things that exist."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPTS = REPO / "scripts"


def script(name: str):
    """A script of `scripts/` as a module (scripts/ on the path, as when it runs: one script imports another)."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tiny_repvgg(weights_dir: Path) -> Path:
    return next(weights_dir.glob("cifar10_tiny_repvgg-*.pt"))


def run_repvgg_levers(tmp_path: Path, weights_dir: Path) -> dict:
    script("repvgg_levers").main(["--model", "tiny_repvgg", "--weights", str(tiny_repvgg(weights_dir)),
                                  "--images", "30", "--levers", "default,keep_worst_fp32", "--worst", "1",
                                  "--fuse", "fused,unfused", "--speed-seconds", "0.05", "--speed-repeats", "2",
                                  "--out", str(tmp_path)])
    found = rows(tmp_path / "levers.jsonl")
    assert [(r["fuse"], r["lever"]) for r in found] == [(f, lv) for f in ("fused", "unfused")
                                                        for lv in ("fp32", "default", "keep_worst_fp32")]
    for r in found:
        assert {"accuracy", "fps_median", "fps_spread", "fq_nodes", "hardware_key", "git_sha"} <= set(r)
    kept = [r for r in found if r["lever"] == "keep_worst_fp32"]
    assert all(r["kept_fp32"] and "drop_points" in r and "agreement" in r for r in kept)
    assert {f"{kind}-{fuse}.json" for kind in ("weights", "diagnose") for fuse in ("fused", "unfused")} <= {
        p.name for p in tmp_path.iterdir()}
    return found


def run_repvgg_stress(tmp_path: Path, weights_dir: Path) -> list[dict]:
    script("repvgg_stress").main(["--model", "tiny_repvgg", "--weights", str(tiny_repvgg(weights_dir)),
                                  "--images", "30", "--ks", "1,8", "--levers", "default,smooth_quant",
                                  "--out", str(tmp_path)])
    found = rows(tmp_path / "stress.jsonl")
    assert [(r["k"], r["lever"]) for r in found] == [(k, lv) for k in (1.0, 8.0)
                                                     for lv in ("default", "smooth_quant")]
    for r in found:
        assert r["fp32_same_as_unstressed"] == 1.0  # the stress leaves the FP32 function unchanged
        assert {"accuracy", "drop_points", "activation_spread_median", "activation_spread_max", "fq_nodes"} <= set(r)
    assert found[-1]["activation_spread_median"] > found[0]["activation_spread_median"]
    return found


def run_inversion_levers(tmp_path: Path, weights_dir: Path) -> list[dict]:
    record = tmp_path / "levers.jsonl"
    script("inversion_levers").main(["--model", "tiny_cnn", "--batches", "4,100", "--steps", "1", "--rounds", "1",
                                     "--record", str(record)])
    found = rows(record)
    assert [r["variant"] for r in found][:2] == ["batch 4", "batch 100"] and len(found) == 6
    for r in found:
        assert r["kind"] == "inversion_lever" and r["ms_per_image_iteration"] > 0 and r["relative_to_batch_100"] > 0
    return found


def run_spread_figure(tmp_path: Path, weights_dir: Path) -> Path:
    out = script("spread_figure").main(["--out", str(tmp_path / "spread.png")])
    assert out == tmp_path / "spread.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return out


def run_profile_phases(tmp_path: Path, weights_dir: Path) -> int:
    """The committed profile through the script (its table is checked against the profile's phases below)."""
    return script("profile_phases").main([str(REPO / "results" / "timing" / "aa-resnet56-noise.prof")])


def run_timed(tmp_path: Path, weights_dir: Path) -> list[dict]:
    record = tmp_path / "commands.jsonl"
    done = subprocess.run([sys.executable, str(SCRIPTS / "timed.py"), str(record), "--", sys.executable, "-c",
                           "import sys; sys.exit(3)"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 3, done.stderr
    [row] = rows(record)
    assert row["kind"] == "command_time" and row["exit_code"] == 3 and row["wall_seconds"] >= 0
    assert {"timed_command", "cpu_percent", "cores", "hardware_key", "git_sha"} <= set(row)
    return [row]


RUNS: dict[str, Callable] = {
    "repvgg_levers": run_repvgg_levers,
    "repvgg_stress": run_repvgg_stress,
    "inversion_levers": run_inversion_levers,
    "spread_figure": run_spread_figure,
    "profile_phases": run_profile_phases,
    "timed": run_timed,
}
SLOW = {"repvgg_levers", "repvgg_stress", "inversion_levers"}
ELSEWHERE = {"eta_check"}  # tested with the study's time-left estimate, not here


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in RUNS])
def test_script_runs_at_toy_size(name, tmp_path, weights_dir, capsys):
    before = {p: p.stat().st_mtime_ns for p in (REPO / "results").rglob("*") if p.is_file()}
    RUNS[name](tmp_path, weights_dir)
    if name == "profile_phases":
        from calib.study.blocks import PHASES

        table = capsys.readouterr().out.splitlines()
        assert table[0].startswith("| phase |") and len(table) == 2 + len(PHASES)
        assert not any("| 0 | - | - |" in line for line in table), table  # every phase found in the profile
    after = {p: p.stat().st_mtime_ns for p in (REPO / "results").rglob("*") if p.is_file()}
    assert after == before  # nothing written into results/


def test_every_python_script_is_run_here():
    assert {p.stem for p in SCRIPTS.glob("*.py")} == set(RUNS) | ELSEWHERE


@pytest.mark.parametrize("path", sorted(SCRIPTS.glob("*.sh")), ids=lambda p: p.name)
def test_long_shell_jobs_refer_to_what_exists(path):
    """Shell scripts that need a venv or minutes of CPU are not run; the files, calib commands and functions
    they name must exist."""
    from typer.main import get_command

    from calib.cli import app

    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and re.search(r"^# .*", text, re.M)  # says what it is for
    for name in re.findall(r"(?:scripts|tests)/[\w.-]+\.(?:py|sh)", text):
        assert (REPO / name).is_file(), name
    root = get_command(app)
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for words in re.findall(r"^\s*calib ((?:[a-z][\w-]* ?){1,2})", code, re.M):
        group, *rest = words.split()
        command = root.commands.get(group)
        assert command is not None, f"{path.name}: calib {group}"
        if rest and hasattr(command, "commands"):
            assert rest[0] in command.commands, f"{path.name}: calib {words}"
    for module, names in re.findall(r"from (calib[\w.]+) import ([\w, ]+)", text):
        imported = importlib.import_module(module)
        for name in names.split(","):
            assert hasattr(imported, name.strip()), f"{path.name}: {module}.{name.strip()}"
