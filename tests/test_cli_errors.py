"""Bad input: one clear line, a non-zero exit, no traceback."""

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from calib.cli import app

runner = CliRunner()


def one_line_error(result, needle: str) -> None:
    assert result.exit_code != 0
    text = result.output.strip()
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    assert needle in text


def test_unknown_model():
    one_line_error(runner.invoke(app, ["zoo", "eval", "resnet9000"]), "unknown model")


def test_missing_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("CALIB_WEIGHTS_DIR", str(tmp_path))
    one_line_error(runner.invoke(app, ["zoo", "eval", "tiny_cnn"]), "no weights")


def test_wrong_hash(tmp_path, weights_dir, monkeypatch):
    src = next(weights_dir.glob("cifar10_tiny_cnn-*.pt"))
    shutil.copy(src, tmp_path / "cifar10_tiny_cnn-00000000.pt")
    monkeypatch.setenv("CALIB_WEIGHTS_DIR", str(tmp_path))
    one_line_error(runner.invoke(app, ["zoo", "eval", "tiny_cnn"]), "does not match")


def test_truncated_weight_file(tmp_path, weights_dir):
    src = next(weights_dir.glob("cifar10_tiny_cnn-*.pt"))
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(src.read_bytes()[:200])
    one_line_error(runner.invoke(app, ["zoo", "eval", "tiny_cnn", "--weights", str(bad)]), "not a readable weight file")


def test_official_download_failure_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("CALIB_WEIGHTS_DIR", str(tmp_path))
    one_line_error(runner.invoke(app, ["zoo", "eval", "resnet20"]), "could not download")


def test_zoo_eval_prints_accuracy(weights_dir):
    result = runner.invoke(app, ["zoo", "eval", "tiny_cnn"])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output


def test_zoo_train_cli_runs_and_resumes(tmp_path):
    args = ["zoo", "train", "--model", "tiny_cnn", "--epochs", "1", "--batch", "64", "--out", str(tmp_path / "run")]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert list((tmp_path / "run").glob("cifar10_tiny_cnn-*.pt"))
    again = runner.invoke(app, args)  # resumes from last.pt: nothing left to do, same result
    assert again.exit_code == 0 and '"epochs": 1' in again.output


def test_generate_cli_default_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["generate", "--source", "noise", "--per-class", "2", "--seed", "0"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "sets" / "noise-2pc-s0" / "manifest.json").exists()
    clash = runner.invoke(app, ["generate", "--source", "noise", "--per-class", "2", "--seed", "0"])
    one_line_error(clash, "already exists")
    one_line_error(runner.invoke(app, ["generate", "--source", "noise", "--per-class", "2", "--iterations", "3",
                                       "--out", str(tmp_path / "x")]), "does not take")


# ---------------------------------------------------------------- every option validated at the edge
def _commands(group, path=()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def _number_type(param):
    """int or float for a numeric option (typer's own click copy, or click itself), else None."""
    desc = getattr(param, "type_descriptor", None)
    if desc is not None:
        kind = desc.annotation
    else:
        kind = {"integer": int, "float": float}.get(getattr(param.type, "name", "").replace(" range", ""))
    return kind if kind in (int, float) else None


def _cases():
    import typer

    for path, cmd in _commands(typer.main.get_command(app)):
        name = " ".join(path)
        yield pytest.param(path, "--no-such-option", None, id=f"{name} unknown option")
        for param in cmd.params:
            if param.param_type_name == "option" and not param.is_flag and _number_type(param):
                opt = param.opts[0]
                wrong = "1.5x" if _number_type(param) is float else "2.5"
                yield pytest.param(path, opt, wrong, id=f"{name} {opt} {wrong}")
                yield pytest.param(path, opt, "-1", id=f"{name} {opt} -1")


CASES = list(_cases())


def test_every_command_is_covered():
    import typer

    every = {path for path, _ in _commands(typer.main.get_command(app))}
    assert {c.values[0] for c in CASES} == every and len(every) > 25 and len(CASES) > 100


@pytest.mark.parametrize("path,option,value", CASES)
def test_every_option_is_validated_before_any_work(path, option, value, tmp_path, monkeypatch):
    """A wrong type, a negative number or an unknown name: exit code 2, one line on stderr naming the option, no
    traceback, nothing written."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [*path, option, *([value] if value is not None else [])])
    assert result.exit_code == 2, (result.output, result.exception)
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert option in err and "Traceback" not in result.output
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


def _noise_set(path):
    from calib.core.sources import generate_set

    return generate_set("noise", 1, 0, path)


@pytest.mark.parametrize("args, needle", [
    (["quantize", "--model", "tiny_cnn", "--calib", "SET", "--max-drop", "0.02"], "--algo accuracy-aware"),
    (["quantize", "--model", "tiny_cnn", "--calib", "SET", "--ranking-subset-size", "10"], "accuracy-aware"),
    (["quantize", "--model", "tiny_cnn", "--calib", "SET", "--calibrate-method", "entropy"], "--calibrate-method"),
    (["quantize", "--model", "tiny_cnn", "--calib", "SET", "--engine", "pytorch"], "'pytorch'"),
    (["quantize", "--model", "m.onnx", "--calib", "SET", "--engine", "openvino"], "leave --engine out"),
    (["quantize", "--model", "missing.xml", "--calib", "SET"], "no such file"),
    (["quantize", "--model", "int8.xml", "--calib", "SET"], "already INT8"),
    (["quantize", "--model", "tiny_cnn", "--calib", "SET", "--seed", "-3"], "--seed"),
    (["diagnose", "--model", "tiny_cnn", "--calib", "SET", "--engine", "onnxruntime"], "--engine"),
    (["diagnose", "--model", "int8.xml", "--calib", "SET"], "already INT8"),
    (["evaluate", "--model", "m.onnx", "--engine", "pytorch"], "m.onnx is not a readable ONNX file (no graph)"),
    (["evaluate", "a.xml", "--model", "b.xml"], "two models"),
    (["zoo", "eval"], "--model"),
    (["show", "SET", "--out", "grid.xyz"], ".xyz"),
    (["sets", "import", "EMPTY", "--out", "imported"], "empty"),
    (["study", "run", "GRID", "--out", "FILE"], "is a file"),
    (["study", "report", "NOWHERE"], "does not exist"),
    (["generate", "--source", "noise", "--iterations", "3"], "does not take --iterations"),
])
def test_refused_options_exit_2_in_one_line(args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("work").mkdir()
    cset = _noise_set(tmp_path / "work" / "set")
    (tmp_path / "work" / "m.onnx").write_bytes(b"")
    (tmp_path / "work" / "int8.xml").write_text('<net><layers><layer id="3" type="FakeQuantize"/></layers></net>')
    (tmp_path / "work" / "EMPTY").mkdir()
    (tmp_path / "work" / "FILE").write_text("not a folder")
    (tmp_path / "work" / "GRID").write_text('name = "g"\nmodels = ["tiny_cnn"]\nsources = ["noise"]\n')
    subs = {"SET": str(cset), "m.onnx": "work/m.onnx", "int8.xml": "work/int8.xml", "EMPTY": "work/EMPTY",
            "FILE": "work/FILE", "GRID": "work/GRID"}
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = runner.invoke(app, [subs.get(a, a) for a in args])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in result.output, err
    assert "<" not in err.replace("<=", ""), err  # option values, never a Python repr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing made


def test_a_failing_run_is_exit_1_and_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cset = _noise_set(tmp_path / "set")
    result = runner.invoke(app, ["quantize", "--model", "tiny_cnn", "--calib", str(cset), "--subset-size", "999",
                                 "--out", str(tmp_path / "q"), "--record", str(tmp_path / "r.jsonl")])
    assert result.exit_code == 1 and "999" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "q").exists() and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- one prefix, one line, exit code 2
@pytest.mark.parametrize("args, needle", [
    (["quantize", "--model", "tiny_cnn", "--no-such-option"], "No such option: --no-such-option"),  # click's parser
    (["quantize", "--model", "tiny_cnn", "--seed", "abc"], "'--seed'"),  # typer's validation of a value
    (["evaluate", "--model", "tiny_cnn", "--format", "xml"], "'--format'"),  # typer's validation of a choice
    (["quantize", "--model", "tiny_cnn", "--weights", "card.json"], "weight card"),  # a parameter callback
    (["quantize", "--model", "tiny_cnn"], "give --calib SET"),  # calib's own OptionError
    (["inspect", "SET", "--model", "net.onnx"], "is a model file"),  # calib's own OptionError
])
def test_every_refusal_is_one_error_line_on_stderr_with_exit_code_2(args, needle, tmp_path, monkeypatch):
    """Whoever refuses the input (click, typer or calib), the user reads one line on stderr that starts with
    `error: `, never click's `Error:` box or line, and gets exit code 2; stdout stays empty."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.onnx").write_bytes(b"")
    result = runner.invoke(app, args)
    err = result.stderr.strip()
    assert result.exit_code == 2, result.output
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, err
    assert "Error:" not in result.output and "Traceback" not in result.output and result.stdout == ""


@pytest.mark.parametrize("args", [[], ["zoo"], ["benchmark"]])
def test_a_group_without_a_command_prints_its_help_not_an_error_line(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("Usage: ") and "error" not in result.stderr.lower().split("\n")[0]
    assert len(result.stderr.splitlines()) > 3  # the help as it is, not folded into one line
