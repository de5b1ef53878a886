"""Trained weights for zoo models: an explicit path, then the folders of `CALIB_WEIGHTS_DIR`, then the official
release (downloaded into `CALIB_HOME/weights`).

Every weight file is named `cifar10_<model>-<first 8 hex of its sha256>.pt`, so each file carries the hash it
is checked against; an official file's prefix is also the one its registration names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from calib.core.cards import card_accuracies, weight_card
from calib.core.errors import CalibError
from calib.core.paths import calib_home
from calib.core.runs import file_sha256 as file_sha256  # re-exported: weights are checked by it
from calib.core.zoo import create_model, model_info
from calib.core.zoo.repvgg import reparameterize

_NAME = re.compile(r"cifar10_(?P<model>.+)-(?P<hash>[0-9a-f]{8})\.pt$")

WeightsDirs = Path | str | Sequence[Path | str] | None


def check_hash(path: Path, prefix: str) -> None:
    """Compare a file's sha256 with a prefix (the one in its name, or the official one)."""
    digest = file_sha256(path)
    if not digest.startswith(prefix):
        raise CalibError(f"{path}: sha256 {digest[:8]}... does not match the expected prefix {prefix}; the file is "
                         "damaged or not the one it is named for")


def weights_dirs(weights_dir: WeightsDirs = None) -> list[Path]:
    """The folders searched for weight files, in order: `weights_dir` (a folder, a list, or an os.pathsep-separated
    string), else `CALIB_WEIGHTS_DIR` split on os.pathsep (`official:trained` on Linux)."""
    if weights_dir is None:
        weights_dir = os.environ.get("CALIB_WEIGHTS_DIR", "")
    if isinstance(weights_dir, str):
        weights_dir = weights_dir.split(os.pathsep)
    elif isinstance(weights_dir, Path):
        weights_dir = [weights_dir]
    dirs = [Path(d).expanduser() for d in weights_dir if str(d)]
    for d in dirs:
        if not d.is_dir():
            raise CalibError(f"weights folder {d} does not exist (CALIB_WEIGHTS_DIR lists folders separated by "
                             f"{os.pathsep!r})")
    return dirs


def _in_weights_dir(name: str, weights_dir: Path) -> Path | None:
    """The weight file of `name` in one folder: the official one if present, else the only one."""
    found = sorted(p for p in weights_dir.glob(f"cifar10_{name}-*.pt") if (m := _NAME.match(p.name))
                   and m["model"] == name)
    official = [p for p in found if _NAME.match(p.name)["hash"] == model_info(name).hash_prefix]
    if official:
        return official[0]
    if len(found) > 1:
        raise CalibError(f"{weights_dir} holds several weight files for {name} ({', '.join(p.name for p in found)}); "
                         "pass one with --weights")
    return found[0] if found else None


def resolve_weights(name: str, path: Path | None = None, weights_dir: WeightsDirs = None,
                    download: bool = True) -> Path:
    """Find the weight file of `name`, checking its hash: `path`, else the first folder of `weights_dirs` that
    holds one, else the official release file (cached under `CALIB_HOME/weights`, downloaded if absent)."""
    info = model_info(name)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise CalibError(f"weight file {path} does not exist")
        m = _NAME.match(path.name)
        if m:
            if m["model"] != name:
                raise CalibError(f"{path} is named for {m['model']}, not {name}")
            check_hash(path, m["hash"])
        return path
    dirs = weights_dirs(weights_dir)
    for folder in dirs:
        found = _in_weights_dir(name, folder)
        if found is not None:
            check_hash(found, _NAME.match(found.name)["hash"])
            return found
    if info.weights_url is None or not download:
        where = f" in {os.pathsep.join(map(str, dirs))}" if dirs else " (set CALIB_WEIGHTS_DIR or pass --weights)"
        raise CalibError(f"no weights for {name}{where}")
    target = calib_home() / "weights" / info.weights_file
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:  # torch writes a temporary file and moves it into place only when the hash prefix matches
            torch.hub.download_url_to_file(info.weights_url, str(target), hash_prefix=info.hash_prefix,
                                           progress=False)
        except Exception as e:  # network errors and hash mismatches alike
            msg = " ".join(str(e).split())
            raise CalibError(f"could not download weights for {name} from {info.weights_url}: {msg}") from None
    check_hash(target, info.hash_prefix)
    return target


def weights_provenance(path: Path | None) -> dict:
    """What a result row records about its weights: file name, full sha256 and whether it is the official
    release file of its model; `path=None` means random weights."""
    if path is None:
        return {"weights_file": "random", "weights_sha256": None, "weights_official": False}
    path = Path(path)
    digest = file_sha256(path)
    m = _NAME.match(path.name)
    official = False
    if m:
        try:
            prefix = model_info(m["model"]).hash_prefix
        except CalibError:
            prefix = None
        official = bool(prefix) and digest.startswith(prefix)
    return {"weights_file": path.name, "weights_sha256": digest, "weights_official": official}


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CalibError(f"{path} is not a readable weight file ({type(e).__name__}: {str(e).splitlines()[0]})") \
            from None
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise CalibError(f"{path} holds {type(sd).__name__}, not a state dict")
    return sd


def load_model(name: str, path: Path | None = None, weights_dir: WeightsDirs = None, pretrained: bool = True,
               fuse: bool = True) -> nn.Module:
    """A zoo model in eval mode, with trained weights unless `pretrained=False` (then a fixed random init);
    RepVGG fused if `fuse`."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model(name)
    if pretrained:
        file = resolve_weights(name, path, weights_dir)
        try:
            model.load_state_dict(load_state_dict(file), strict=True)
        except RuntimeError as e:
            raise CalibError(f"{file} does not fit {name}: {str(e).splitlines()[0]}") from None
    model.eval()
    return reparameterize(model) if fuse else model


def zoo_test_accuracy(name: str, path: Path | None = None, data_dir: Path | None = None, fuse: bool = True) -> dict:
    """Top-1 of a zoo model in PyTorch FP32 on the whole test split of the configured tree, measured now, with
    the weight file's provenance and the card's accuracy for that same tree when the card states one."""
    from calib.core.data import load_split
    from calib.core.train import accuracy, pick_device

    file = resolve_weights(name, path)
    model = load_model(name, file, fuse=fuse)
    test = load_split("test", data_dir)
    with torch.no_grad():
        acc = accuracy(model, test, pick_device("cpu"))
    root = Path(test.provenance["data_root"])
    card = weight_card(file)
    stated = card_accuracies(card)
    same_tree = [(a, d) for a, d in stated if f"{root.name}/test" in d]
    return {"model": name, "accuracy": acc, "images": len(test), "test_data": str(root / "test")
            if test.provenance["data"] == "folder" else test.source, **weights_provenance(file),
            "card_accuracies": stated, "card_accuracy_same_data": same_tree[0] if same_tree else None,
            "published_top1": model_info(name).published_top1}
