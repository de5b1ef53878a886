"""Trained weights for zoo models: an explicit path, then `CALIB_WEIGHTS_DIR`, then the official release.

Every weight file is named `cifar10_<model>-<first 8 hex of its sha256>.pt`, so each file carries the
hash it is checked against.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import torch
from torch import nn

from calibration.errors import CalibError
from calibration.paths import calib_home, env_path
from calibration.runs import sha256_file
from calibration.zoo import create_model, model_info
from calibration.zoo.repvgg import reparameterize

_NAME = re.compile(r"cifar10_(?P<model>.+)-(?P<hash>[0-9a-f]{8})\.pt$")


@functools.lru_cache(maxsize=64)
def _cached_digest(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def check_hash(path: Path, prefix: str) -> None:
    """Compare a file's sha256 with a prefix; a file is hashed once per process unless it changes."""
    st = path.stat()
    digest = _cached_digest(str(path.resolve()), st.st_size, st.st_mtime_ns)
    if not digest.startswith(prefix):
        raise CalibError(f"{path}: sha256 {digest[:8]} does not match the expected prefix {prefix}")


def _in_weights_dir(name: str, weights_dir: Path) -> Path | None:
    found = sorted(p for p in weights_dir.glob(f"cifar10_{name}-*.pt") if _NAME.match(p.name))
    return found[-1] if found else None


def resolve_weights(name: str, path: Path | None = None, weights_dir: Path | None = None,
                    download: bool = True) -> Path:
    """Find the weight file of `name`, checking its hash; download the official one as the last resort."""
    info = model_info(name)
    if path is not None:
        if not path.is_file():
            raise CalibError(f"weight file {path} does not exist")
        m = _NAME.match(path.name)
        if m:
            check_hash(path, m["hash"])
        return path
    weights_dir = weights_dir or env_path("CALIB_WEIGHTS_DIR")
    if weights_dir is not None:
        found = _in_weights_dir(name, weights_dir)
        if found is not None:
            check_hash(found, _NAME.match(found.name)["hash"])
            return found
    if info.weights_url is None or not download:
        where = f" in {weights_dir}" if weights_dir else " (set CALIB_WEIGHTS_DIR or pass --weights)"
        raise CalibError(f"no weights for {name}{where}")
    target = calib_home() / "weights" / info.weights_file
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(info.weights_url, str(target), hash_prefix=info.hash_prefix)
        except Exception as e:  # network errors and hash mismatches alike
            raise CalibError(f"could not download weights for {name} from {info.weights_url}: {e}") from None
    check_hash(target, info.hash_prefix)
    return target


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


def load_model(name: str, path: Path | None = None, weights_dir: Path | None = None, pretrained: bool = True,
               fuse: bool = True) -> nn.Module:
    """A zoo model in eval mode, with trained weights unless `pretrained=False` (then a fixed random init);
    RepVGG fused if `fuse`."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model(name)
    if pretrained:
        file = resolve_weights(name, path, weights_dir)
        try:
            model.load_state_dict(load_state_dict(file))
        except RuntimeError as e:
            raise CalibError(f"{file} does not fit {name}: {str(e).splitlines()[0]}") from None
    model.eval()
    return reparameterize(model) if fuse else model


def weight_card(path: Path) -> dict:
    """The `.json` written beside a weight file (how it was trained, its test accuracy), if any."""
    card = path.with_suffix(".json")
    return json.loads(card.read_text()) if card.exists() else {}
