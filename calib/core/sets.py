"""Calibration sets on disk: `<set>/<class>/<id>.png` (lossless, uint8 RGB 32x32) plus `manifest.json`.

The tree is a plain image folder that torchvision's `ImageFolder` and Datumaro's imagenet reader take as
it is. The manifest records where the images came from (source, options, seeds, role), per-class counts
and the sha256 of every file; reading a set checks all of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

import calib
from calib.core.data import CLASSES, IMAGE_SIZE, LabeledImages
from calib.core.errors import CalibError, OptionError
from calib.core.runs import atomic_write_json, staging_dir, to_jsonable

MANIFEST = "manifest.json"


@dataclass
class CalibrationSet:
    path: Path
    images: np.ndarray  # (N, 32, 32, 3) uint8
    labels: np.ndarray
    ids: list[str]
    manifest: dict

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def role(self) -> str:
        return self.manifest.get("role", "synthetic")

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    def as_labeled(self) -> LabeledImages:
        return LabeledImages(self.images, self.labels, self.role, str(self.path))


def _content_hash(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def write_set(out: Path, images: np.ndarray, labels: np.ndarray, ids: list[str], source: str, options: dict,
              seeds: dict | None = None, role: str = "synthetic", extra: dict | None = None,
              overwrite: bool = False) -> Path:
    """Write a set into a temporary sibling folder and rename it into place: never half a set at `out`."""
    if images.dtype != np.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise CalibError(f"set images must be uint8 (N, 32, 32, 3), got {images.dtype} {images.shape}")
    if not (len(images) == len(labels) == len(ids)) or len(images) == 0:
        raise CalibError("a set needs at least one image, and one label and id per image")
    if len(set(zip(labels.tolist(), ids))) != len(ids):
        raise CalibError("image ids must be unique within a class")
    check_set_target(out, overwrite)
    tmp = staging_dir(out.parent, out.name)
    try:
        _write_files(tmp, images, labels, ids, source, options, seeds, role, extra)
        if out.exists():  # the old set moves aside first: at every moment `out` holds a whole set, or none
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def check_set_target(out: Path, overwrite: bool = False) -> None:
    """Refuse `out` before any image is made (`calib.core.folders.claim`), and, with `overwrite`, a folder that
    is not a calib set or holds files its manifest does not list (they would be lost)."""
    from calib.core.folders import claim

    claim(out, overwrite)
    if not out.exists():
        return
    try:
        listed = set(json.loads((out / MANIFEST).read_text())["files"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise OptionError(f"{out} is not a set calib wrote (no valid {MANIFEST}); --overwrite replaces only "
                          "calib's sets") from None
    foreign = sorted(str(p.relative_to(out)) for p in out.rglob("*")
                     if not p.is_dir() and str(p.relative_to(out)) not in listed | {MANIFEST})
    if foreign:
        raise OptionError(f"{out} holds files calib did not write ({', '.join(foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}); move them away before --overwrite")


def _write_files(tmp: Path, images: np.ndarray, labels: np.ndarray, ids: list[str], source: str, options: dict,
                 seeds: dict | None, role: str, extra: dict | None) -> None:
    files: dict[str, str] = {}
    for img, label, id_ in zip(images, labels, ids):
        rel = f"{CLASSES[int(label)]}/{id_}.png"
        (tmp / CLASSES[int(label)]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp / rel, optimize=False)
        files[rel] = hashlib.sha256((tmp / rel).read_bytes()).hexdigest()
    counts = {c: int((labels == i).sum()) for i, c in enumerate(CLASSES)}
    manifest = {
        "source": source, "options": to_jsonable(options), "seeds": to_jsonable(seeds or {}), "role": role,
        "per_class": counts, "count": int(len(labels)), "content_hash": _content_hash(files),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "calib_version": calib.__version__,
        **to_jsonable(extra or {}), "files": files,
    }
    atomic_write_json(tmp / MANIFEST, manifest)


def read_set(path: Path, allow_unbalanced: bool = False, check_hashes: bool = True) -> CalibrationSet:
    """Load and validate a set; every problem is a `CalibError` that names the set and the fault."""
    if not path.is_dir():
        raise CalibError(f"calibration set {path} is not a folder")
    mf = path / MANIFEST
    if not mf.is_file():
        raise CalibError(f"{path} has no {MANIFEST}; write sets with `calib generate` or `calib sets import`")
    try:
        manifest = json.loads(mf.read_text())
        listed: dict[str, str] = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CalibError(f"{mf} is not a valid set manifest ({type(e).__name__})") from None
    on_disk = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and p.name != MANIFEST)
    strays = [f for f in on_disk if not f.endswith(".png") or f.split("/")[0] not in CLASSES or f.count("/") != 1]
    if strays:
        raise CalibError(f"{path}: unexpected files {strays[:3]} (only <class>/<id>.png belong in a set)")
    if not on_disk:
        raise CalibError(f"{path} is empty")
    if set(on_disk) != set(listed):
        missing, extra = sorted(set(listed) - set(on_disk)), sorted(set(on_disk) - set(listed))
        raise CalibError(f"{path}: manifest disagrees with the files (missing {missing[:3]}, unlisted {extra[:3]})")
    images = np.empty((len(on_disk), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    labels = np.empty(len(on_disk), np.int64)
    ids = []
    for i, rel in enumerate(on_disk):
        file = path / rel
        data = file.read_bytes()
        if check_hashes and hashlib.sha256(data).hexdigest() != listed[rel]:
            raise CalibError(f"{file}: content does not match the manifest's hash")
        try:
            with Image.open(file) as im:
                if im.size != (IMAGE_SIZE, IMAGE_SIZE) or im.mode != "RGB":
                    raise CalibError(f"{file}: expected 32x32 RGB, got {im.size[0]}x{im.size[1]} {im.mode}")
                images[i] = np.asarray(im)
        except OSError:
            raise CalibError(f"{file} is not a readable PNG image") from None
        labels[i] = CLASSES.index(rel.split("/")[0])
        ids.append(Path(rel).stem)
    counts = np.bincount(labels, minlength=len(CLASSES))
    if counts.min() != counts.max() and not allow_unbalanced:
        raise CalibError(f"{path} is unbalanced: per-class counts {dict(zip(CLASSES, counts.tolist()))}")
    return CalibrationSet(path, images, labels, ids, manifest)


def datumaro_dataset(path: Path):
    """The set through Datumaro's imagenet reader (the auto-detector refuses the root manifest, the reader not)."""
    import datumaro as dm
    from datumaro.plugins.data_formats.imagenet import ImagenetBase

    return dm.Dataset.from_extractors(ImagenetBase(str(path)))


def export_set(path: Path, fmt: str, out: Path) -> Path:
    """Convert a set with Datumaro: `cifar` (the CIFAR-10 pickle layout) or `imagenet` (class folders)."""
    if fmt not in ("cifar", "imagenet"):
        raise CalibError(f"unknown export format {fmt!r} (cifar or imagenet)")
    read_set(path, allow_unbalanced=True)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OptionError(f"--out {out} exists and is not an empty folder")
    tmp = staging_dir(out.parent, out.name)  # written whole, then renamed: a failed export leaves nothing
    try:
        datumaro_dataset(path).export(str(tmp), fmt, save_media=True)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def import_set(src: Path, out: Path, fmt: str | None = None, seed: int = 0) -> Path:
    """Read any Datumaro-readable classification dataset into the set format (labels mapped by class name)."""
    import datumaro as dm
    from datumaro.components.annotation import AnnotationType, Label

    if not src.is_dir():
        raise OptionError(f"{src} is not a folder to import")
    if not any(p.is_file() for p in src.rglob("*")):
        raise OptionError(f"{src} is empty: nothing to import")
    check_set_target(out)
    try:
        fmt = fmt or dm.Environment().detect_dataset(str(src))[0]
        ds = dm.Dataset.import_from(str(src), fmt)
    except Exception as e:
        raise CalibError(f"Datumaro cannot read {src} ({type(e).__name__}: {e})") from None
    names = [c.name.split(":")[-1] for c in ds.categories()[AnnotationType.label].items]
    images, labels, ids = [], [], []
    for n, item in enumerate(ds):
        ann = [a for a in item.annotations if isinstance(a, Label)]
        if len(ann) != 1 or names[ann[0].label] not in CLASSES:
            raise CalibError(f"{src}: item {item.id} has no single CIFAR-10 class label")
        img = np.asarray(item.media.data)
        if img.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
            raise CalibError(f"{src}: item {item.id} is {img.shape[1]}x{img.shape[0]}, not 32x32")
        img = img[..., :3][..., ::-1] if img.ndim == 3 else np.repeat(img[..., None], 3, -1)  # Datumaro is BGR
        images.append(np.clip(img, 0, 255).astype(np.uint8))
        labels.append(CLASSES.index(names[ann[0].label]))
        ids.append(f"{n:08d}")
    return write_set(out, np.stack(images), np.asarray(labels), ids, "import",
                     {"from": str(src), "format": fmt}, {"import": seed}, role=_role_of_folder(src))


def _role_of_folder(src: Path) -> str:
    """An imported copy of the configured CIFAR-10 test split stays marked as test, so it is refused later."""
    from calib.core.data import resolve_data_dir

    root = resolve_data_dir()
    if root is not None and src.resolve().is_relative_to((root / "test").resolve()):
        return "test"
    return "imported"


def check_calibration_set(cset: CalibrationSet, data_dir: Path | None = None) -> None:
    """Calibration images must never come from the validation or the test split: refused by manifest role, by
    location, and by content (any image whose pixels equal a test or validation image of the configured tree:
    `data_dir`, else `CALIB_CIFAR10_DIR`, else torchvision's download), however it was copied or renamed."""
    from calib.core.data import heldout_hashes, image_hashes, resolve_data_dir

    if cset.role in ("test", "validation"):
        raise CalibError(f"{cset.path} holds {cset.role}-split images; calibration must use the train split")
    if cset.manifest.get("in_memory") and cset.role == "synthetic" and not cset.path.exists():
        return  # made in this process by a synthetic source for a speed run: no file could carry held-out images
    root = resolve_data_dir(data_dir)
    if root is not None and cset.path.resolve().is_relative_to((root / "test").resolve()):
        raise CalibError(f"{cset.path} lies inside the CIFAR-10 test split; calibration must use the train split")
    held = heldout_hashes(data_dir)
    hashes = image_hashes(cset.images)
    for split in ("test", "validation"):
        hit = np.flatnonzero(np.isin(hashes, getattr(held, split)))
        if len(hit):
            first = f"{CLASSES[int(cset.labels[hit[0]])]}/{cset.ids[hit[0]]}.png"
            raise CalibError(f"{cset.path}: {len(hit)} of its {len(hashes)} images are {split}-split images of "
                             f"{held.data_root} (first: {first}); calibration must use the train split's "
                             "calibration pool")
