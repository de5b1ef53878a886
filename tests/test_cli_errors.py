"""Bad input: one clear line, a non-zero exit, no traceback."""

import shutil

from typer.testing import CliRunner

from calibration.cli import app

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
    args = ["zoo", "train", "tiny_cnn", "--epochs", "1", "--batch-size", "64", "--out", str(tmp_path / "run")]
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
