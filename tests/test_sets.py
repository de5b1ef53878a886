import hashlib
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from calib.core.errors import CalibError
from calib.core.sets import datumaro_dataset, export_set, import_set, read_set, write_set


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


def test_overwrite_swaps_whole_sets_with_plain_permissions(tmp_path, monkeypatch):
    """`overwrite=True` keeps the old set whole until the new one is complete, and a failed write leaves it."""
    import os
    import stat

    old = read_set(make_set(tmp_path / "s", seed=0))
    new = read_set(make_set(tmp_path / "s", seed=1, overwrite=True))
    assert new.content_hash != old.content_hash and read_set(tmp_path / "s").content_hash == new.content_hash
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700
    monkeypatch.setattr("calib.core.sets.atomic_write_json", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        make_set(tmp_path / "s", seed=2, overwrite=True)
    assert read_set(tmp_path / "s").content_hash == new.content_hash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no staging folder left behind


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

    from calib.cli import app

    path = make_set(tmp_path / "s")
    runner = CliRunner()
    assert runner.invoke(app, ["sets", "validate", str(path)]).exit_code == 0
    result = runner.invoke(app, ["show", str(path), "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 0 and Image.open(tmp_path / "g.png").size[0] > 100
    (path / "cat" / "x.txt").write_text("x")
    bad = runner.invoke(app, ["sets", "validate", str(path)])
    assert bad.exit_code == 1 and "unexpected files" in bad.output


# ---------------------------------------------------------------- the held-out guard, by content
def _check(path, data_dir=None):
    from calib.core.sets import check_calibration_set

    cset = read_set(path, allow_unbalanced=True)
    check_calibration_set(cset, data_dir) if data_dir else check_calibration_set(cset)


def test_a_copied_test_tree_imports_as_imported_and_is_refused_by_content(tmp_path, cifar_dir):
    copy = shutil.copytree(cifar_dir / "test", tmp_path / "elsewhere" / "my-images")
    imported = import_set(copy, tmp_path / "imported", fmt="imagenet")
    assert read_set(imported).role == "imported"  # the path says nothing: the pixels do
    with pytest.raises(CalibError, match="80 of its 80 images are test-split images"):
        _check(imported)


def test_one_test_image_among_many_is_refused(tmp_path, cifar_dir):
    from calib.core.data import load_split

    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    images[13] = load_split("test", cifar_dir).images[41]
    labels = np.repeat(np.arange(10), 2)
    path = write_set(tmp_path / "s", images, labels, [f"{i:04d}" for i in range(20)], "noise", {}, role="synthetic")
    with pytest.raises(CalibError, match=r"1 of its 20 images are test-split images .*first: frog/0013\.png"):
        _check(path)


def test_validation_images_under_a_false_manifest_are_refused(tmp_path, cifar_dir):
    from calib.core.data import train_splits

    val = train_splits(cifar_dir)["validation"]
    path = write_set(tmp_path / "s", val.images[:30], val.labels[:30], [f"{i:04d}" for i in range(30)], "fractal", {},
                     role="synthetic")
    with pytest.raises(CalibError, match="validation-split images"):
        _check(path)


def test_pool_and_synthetic_sets_pass(tmp_path):
    from calib.core.sources import generate_set

    _check(generate_set("cifar10", 3, 0, tmp_path / "real"))
    _check(make_set(tmp_path / "noise"))


def test_the_guard_follows_data_dir_not_only_the_environment(tmp_path, uneven_dir, monkeypatch):
    """`--data-dir` names the tree: its test images are refused though CALIB_CIFAR10_DIR names another tree."""
    copy = shutil.copytree(uneven_dir / "test", tmp_path / "copy")
    imported = import_set(copy, tmp_path / "imported", fmt="imagenet")
    _check(imported)  # the environment's tree (cifar_dir) does not hold these images
    with pytest.raises(CalibError, match="test-split images of .*uneven"):
        _check(imported, uneven_dir)
    monkeypatch.delenv("CALIB_CIFAR10_DIR")
    with pytest.raises(CalibError, match="test-split images"):
        _check(imported, uneven_dir)


def test_the_guard_holds_on_the_torchvision_path(tmp_path, cifar_dir, fake_torchvision):
    copy = shutil.copytree(cifar_dir / "test", tmp_path / "copy")
    imported = import_set(copy, tmp_path / "imported", fmt="imagenet")
    with pytest.raises(CalibError, match="test-split images of .*cifar10"):
        _check(imported)


def test_the_guard_is_cached_per_tree(tmp_path, uneven_dir, monkeypatch):
    import calib.core.data as data
    from calib.core.data import heldout_hashes

    tree = shutil.copytree(uneven_dir, tmp_path / "tree")
    first = heldout_hashes(tree)
    assert len(first.test) == len(data.load_split("test", tree)) and len(first.validation) == 1000
    monkeypatch.setattr(data, "load_split", lambda *a, **k: pytest.fail("cache not used"))
    assert np.array_equal(heldout_hashes(tree).test, first.test)
    monkeypatch.undo()
    Image.new("RGB", (32, 32), "red").save(tree / "test" / "cat" / "new.png")  # the tree changed: hashed again
    assert len(heldout_hashes(tree).test) == len(first.test) + 1


def test_quantize_refuses_a_copied_test_tree(tmp_path, cifar_dir):
    from typer.testing import CliRunner

    from calib.cli import app

    imported = import_set(shutil.copytree(cifar_dir / "test", tmp_path / "copy"), tmp_path / "imp", fmt="imagenet")
    result = CliRunner().invoke(app, ["quantize", "--model", "tiny_cnn", "--calib", str(imported),
                                      "--out", str(tmp_path / "q"), "--record", str(tmp_path / "r.jsonl")])
    assert result.exit_code == 1 and "test-split images" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "r.jsonl").exists()
    assert not (tmp_path / "q").exists()  # refused before the run folder is made: no half-written run


@pytest.mark.parametrize("model", ["net.onnx", "net.xml", "net.pt2", "net.pt", "folder"])
def test_inspect_is_for_zoo_classifiers_only(tmp_path, model, monkeypatch):
    """A model file (any kind, with or without a card beside it) is refused in one line before the set is read:
    the metrics need a zoo classifier's features, BatchNorm statistics and CIFAR-10's validation split."""
    from typer.testing import CliRunner

    from calib.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    if model != "folder":
        (tmp_path / model).write_bytes(b"")
        (tmp_path / f"{model}.calib.toml").write_text('mean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]\n'
                                                      'input_size = [64, 64]\n')
    result = CliRunner().invoke(app, ["inspect", "no-such-set", "--model", model])
    err = result.stderr.strip()
    assert result.exit_code == 2 and len(err.splitlines()) == 1, result.output
    assert err.startswith(f"error: --model {model} is a model file") and "zoo" in err and result.stdout == ""
    help_text = " ".join(CliRunner().invoke(app, ["inspect", "--help"]).stdout.split())
    assert "Zoo models only" in help_text and "a model file is refused" in help_text
