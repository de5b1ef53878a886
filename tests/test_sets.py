import hashlib
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from calibration.errors import CalibError
from calibration.sets import datumaro_dataset, export_set, import_set, read_set, write_set


def make_set(path, per_class=3, seed=0, **kw):
    rng = np.random.default_rng(seed)
    n = per_class * 10
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(10), per_class)
    return write_set(path, images, labels, [f"{i:06d}" for i in range(n)], "test-source", {"k": 1}, {"set": seed}, **kw)


def test_roundtrip_and_standard_readers(tmp_path):
    from torchvision.datasets import ImageFolder

    path = make_set(tmp_path / "s")
    cset = read_set(path)
    assert len(cset) == 30 and np.bincount(cset.labels).tolist() == [3] * 10
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["per_class"]["cat"] == 3 and len(manifest["files"]) == 30
    assert len(ImageFolder(str(path))) == 30
    ds = datumaro_dataset(path)
    assert len(ds) == 30


def test_datumaro_export_import_roundtrip(tmp_path):
    cset = read_set(make_set(tmp_path / "s"))
    for fmt in ("cifar", "imagenet"):
        export_set(cset.path, fmt, tmp_path / fmt)
        back = read_set(import_set(tmp_path / fmt, tmp_path / f"{fmt}-back", fmt=fmt))
        assert sorted(i.tobytes() for i in back.images) == sorted(i.tobytes() for i in cset.images)
        assert sorted(back.labels.tolist()) == sorted(cset.labels.tolist())


def test_existing_output_is_never_overwritten_by_accident(tmp_path):
    make_set(tmp_path / "s")
    with pytest.raises(CalibError, match="already exists"):
        make_set(tmp_path / "s")


def rehash(path, file):
    """Keep the manifest's hash in step, so that the check under test is the one that fires."""
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"][f"{file.parent.name}/{file.name}"] = hashlib.sha256(file.read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage, message", [
    ("empty", "empty"),
    ("unbalanced", "unbalanced"),
    ("stray", "unexpected files"),
    ("size", "expected 32x32"),
    ("unlisted", "disagrees"),
    ("hash", "does not match"),
    ("manifest", "no manifest.json"),
    ("not_png", "not a readable PNG"),
])
def test_damaged_sets_are_clear_errors(tmp_path, damage, message):
    path = make_set(tmp_path / "s")
    first = next(path.glob("cat/*.png"))
    if damage == "empty":
        for p in path.rglob("*.png"):
            p.unlink()
    elif damage == "unbalanced":
        shutil.rmtree(path / "dog")
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("dog/")}
        (path / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "stray":
        (path / "cat" / "notes.txt").write_text("hello")
    elif damage == "size":
        Image.new("RGB", (16, 16)).save(first)
        rehash(path, first)
    elif damage == "unlisted":
        shutil.copy(first, path / "cat" / "extra.png")
    elif damage == "hash":
        Image.new("RGB", (32, 32), "red").save(first)
    elif damage == "manifest":
        (path / "manifest.json").unlink()
    elif damage == "not_png":
        first.write_bytes(b"not an image")
        rehash(path, first)
    with pytest.raises(CalibError, match=message):
        read_set(path)


def test_cli_validate_and_show(tmp_path):
    from typer.testing import CliRunner

    from calibration.cli import app

    path = make_set(tmp_path / "s")
    runner = CliRunner()
    assert runner.invoke(app, ["sets", "validate", str(path)]).exit_code == 0
    result = runner.invoke(app, ["show", str(path), "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 0 and Image.open(tmp_path / "g.png").size[0] > 100
    (path / "cat" / "x.txt").write_text("x")
    bad = runner.invoke(app, ["sets", "validate", str(path)])
    assert bad.exit_code == 1 and "unexpected files" in bad.output
