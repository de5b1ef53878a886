"""Weight lookup with the official release files: the download path (offline, file:// URLs), the cache, hash
checks, folder lists, provenance, and accuracy on the lossless test images against each file's card."""

import hashlib
import json
import os
import shutil

import pytest
import torch
from typer.testing import CliRunner

from calib.cli import app
from calib.core.errors import CalibError
from calib.core.paths import calib_home
from calib.core.weights import (
    load_model,
    load_state_dict,
    resolve_weights,
    weights_dirs,
    weights_provenance,
    zoo_test_accuracy,
)
from calib.core.zoo import model_info
from tests.conftest import REAL_DOWNLOAD, save_weights

runner = CliRunner()
OFFICIAL = {"resnet20": "cifar10_resnet20-4118986f.pt", "resnet32": "cifar10_resnet32-ef93fc4d.pt",
            "resnet44": "cifar10_resnet44-2a3cabcb.pt", "resnet56": "cifar10_resnet56-187c023a.pt",
            "shufflenetv2_x0_5": "cifar10_shufflenetv2_x0_5-1308b4e9.pt"}


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    """An empty CALIB_HOME and no weights folders: only the official (download) path is left."""
    monkeypatch.setenv("CALIB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CALIB_WEIGHTS_DIR", "")
    return tmp_path / "home"


def altered(src, dst, offset=None):
    """A copy with one byte changed (in the middle of the tensor data)."""
    data = bytearray(src.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(bytes(data))
    return dst


def one_line_error(result, needle):
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert needle in result.output


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_file_is_named_as_registered(name, official_dir):
    """The release files' own check: the first 8 hex of the sha256 is the registered prefix."""
    file = official_dir / OFFICIAL[name]
    assert model_info(name).weights_file == file.name
    assert hashlib.sha256(file.read_bytes()).hexdigest().startswith(model_info(name).hash_prefix)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_file_where_the_download_lands_is_accepted_and_loads_strictly(name, official_dir, fresh_home):
    target = calib_home() / "weights" / OFFICIAL[name]
    target.parent.mkdir(parents=True)
    shutil.copy(official_dir / OFFICIAL[name], target)
    assert resolve_weights(name) == target  # no download: torch.hub's is disabled in tests
    model = load_model(name, fuse=False)
    released = torch.load(official_dir / OFFICIAL[name], map_location="cpu", weights_only=True)
    loaded = model.state_dict()
    assert list(loaded) == list(released)
    assert all(torch.equal(loaded[k], released[k]) for k in released)


def test_altered_copy_in_the_cache_is_refused_with_one_line(official_dir, fresh_home):
    altered(official_dir / OFFICIAL["resnet20"], calib_home() / "weights" / OFFICIAL["resnet20"])
    with pytest.raises(CalibError, match="does not match the expected prefix 4118986f"):
        resolve_weights("resnet20")
    one_line_error(runner.invoke(app, ["zoo", "eval", "resnet20"]), "does not match the expected prefix 4118986f")


def test_altered_copy_given_by_name_is_refused(official_dir, tmp_path):
    bad = altered(official_dir / OFFICIAL["resnet20"], tmp_path / OFFICIAL["resnet20"])
    one_line_error(runner.invoke(app, ["zoo", "eval", "resnet20", "--weights", str(bad)]), "does not match")


@pytest.fixture
def release_mirror(tmp_path, monkeypatch):
    """The release layout `<family>/<file>` served by file:// URLs through torch.hub's real download code."""
    mirror = tmp_path / "mirror"
    monkeypatch.setattr("calib.core.zoo.RELEASES", mirror.as_uri())
    urls = []

    def download(url, dst, *args, **kwargs):
        assert url.startswith("file://")  # never the network
        urls.append(url)
        return REAL_DOWNLOAD(url, dst, *args, **kwargs)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    return mirror, urls


def test_download_path_accepts_the_official_file(official_dir, fresh_home, release_mirror):
    mirror, urls = release_mirror
    (mirror / "resnet").mkdir(parents=True)
    shutil.copy(official_dir / OFFICIAL["resnet20"], mirror / "resnet" / OFFICIAL["resnet20"])
    path = resolve_weights("resnet20")
    assert path == fresh_home / "weights" / OFFICIAL["resnet20"] and len(urls) == 1
    assert path.read_bytes() == (official_dir / OFFICIAL["resnet20"]).read_bytes()
    load_model("resnet20")
    resolve_weights("resnet20")
    assert len(urls) == 1  # cached: not fetched again


def test_download_path_refuses_an_altered_file_and_leaves_nothing(official_dir, fresh_home, release_mirror):
    mirror, _ = release_mirror
    altered(official_dir / OFFICIAL["resnet20"], mirror / "resnet" / OFFICIAL["resnet20"])
    with pytest.raises(CalibError, match="could not download weights for resnet20") as e:
        resolve_weights("resnet20")
    assert "\n" not in str(e.value) and "4118986f" in str(e.value)
    assert not (fresh_home / "weights" / OFFICIAL["resnet20"]).exists()


def test_state_dict_is_read_with_weights_only(tmp_path):
    """A pickle that is not plain tensors is refused, not executed."""
    evil = tmp_path / "cifar10_resnet20-00000000.pt"
    torch.save({"x": torch.zeros(1), "obj": object()}, evil)
    with pytest.raises(CalibError, match="not a readable weight file"):
        load_state_dict(evil)


def test_weights_dir_is_a_path_list_and_its_order_decides(official_dir, tmp_path, monkeypatch):
    official = tmp_path / "official"
    official.mkdir()
    shutil.copy(official_dir / OFFICIAL["resnet20"], official)
    trained = save_weights("resnet20", tmp_path / "trained", seed=3)  # a here-trained stand-in
    monkeypatch.setenv("CALIB_WEIGHTS_DIR", f"{official}{os.pathsep}{tmp_path / 'trained'}")
    assert resolve_weights("resnet20") == official / OFFICIAL["resnet20"]
    monkeypatch.setenv("CALIB_WEIGHTS_DIR", f"{tmp_path / 'trained'}{os.pathsep}{official}")
    assert resolve_weights("resnet20") == trained
    # a model found only in the later folder is still found there
    save_weights("tiny_cnn", official)
    assert resolve_weights("tiny_cnn").parent == official
    assert weights_dirs([official, str(tmp_path / "trained")]) == [official, tmp_path / "trained"]


def test_missing_folder_in_the_list_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CALIB_WEIGHTS_DIR", f"{tmp_path}{os.pathsep}{tmp_path / 'typo'}")
    one_line_error(runner.invoke(app, ["zoo", "eval", "tiny_cnn"]), "does not exist")


def test_two_local_files_for_one_model_are_ambiguous(tmp_path, monkeypatch):
    save_weights("tiny_cnn", tmp_path, seed=1)
    save_weights("tiny_cnn", tmp_path, seed=2)
    monkeypatch.setenv("CALIB_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(CalibError, match="several weight files"):
        resolve_weights("tiny_cnn")


def test_weights_provenance_names_the_file_and_its_full_hash(official_dir, weights_dir):
    file = official_dir / OFFICIAL["resnet56"]
    prov = weights_provenance(file)
    assert prov == {"weights_file": file.name, "weights_sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
                    "weights_official": True}
    local = next(weights_dir.glob("cifar10_tiny_cnn-*.pt"))
    assert weights_provenance(local)["weights_official"] is False
    assert weights_provenance(None)["weights_file"] == "random"


@pytest.mark.parametrize("name", ["resnet20", *(pytest.param(n, marks=pytest.mark.slow)
                                               for n in ("resnet32", "resnet44", "resnet56"))])
def test_official_weights_score_their_card_on_the_lossless_test_images(name, official_dir, lossless_dir):
    """Measured now, compared with the card (shufflenetv2_x0_5: through the CLI below)."""
    card = json.loads((official_dir / OFFICIAL[name]).with_suffix(".json").read_text())
    r = zoo_test_accuracy(name, official_dir / OFFICIAL[name], lossless_dir)
    assert r["images"] == 1000 and r["weights_official"]
    assert r["accuracy"] == pytest.approx(card["test_accuracy_lossless_1k"], abs=1e-9)  # k/1000, exact
    assert r["card_accuracy_same_data"][0] == card["test_accuracy_lossless_1k"]


def test_zoo_eval_prints_the_real_count_and_the_card(official_dir, lossless_dir):
    result = runner.invoke(app, ["zoo", "eval", "shufflenetv2_x0_5", "--weights",
                                 str(official_dir / OFFICIAL["shufflenetv2_x0_5"]), "--data-dir", str(lossless_dir)])
    assert result.exit_code == 0, result.output
    assert "test accuracy 0.9050 on 1,000 images" in result.output and "10,000" not in result.output
    assert "weight card: 0.9050 on data/cifar10-lossless/test" in result.output
