"""Your own classifier: a model file, its `InputContract`, and (optionally) your own labeled image folder.

`Tree` reads an image-folder tree `<root>/{train,val,test}/<class>/*` with the contract's class names (any
image size; resized by the contract), each part once and only when asked: train is cut by
`calib.core.data.train_split_indices` into a calibration pool and a validation split that never overlap (unless
val/ exists), test is for the final accuracy only. `make_images` makes
calibration images at the model's input size from `noise`, `fractal`, `folder` (any unlabeled folder, refused
where it holds a test or validation image of the tree in use) or `distylegan` (its 32x32 CIFAR-10 images,
resized); `invert` makes them from the model's own BatchNorm statistics (source `inversion`). `quantize_own`
goes from "my model, no data" to an INT8 model in one call, evaluating where a tree is given; its row and
manifest carry the contract.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from calib.core.contract import InputContract, resize
from calib.core.data import LabeledImages, SplitConfig, image_hashes, train_split_indices
from calib.core.errors import CalibError, OptionError

SOURCES = ("noise", "fractal", "folder", "distylegan", "inversion")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


def _read_images(paths: list[Path], contract: InputContract) -> np.ndarray:
    from PIL import Image

    h, w = contract.input_size
    out = np.empty((len(paths), h, w, 3), np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except OSError as e:
            raise CalibError(f"{path} is not a readable image ({e})") from None
        out[i] = resize(arr[None], contract.input_size)[0]
    return out


def read_labeled(folder: Path, contract: InputContract, role: str) -> LabeledImages:
    """`<folder>/<class>/*` as uint8 images at the contract's input size, labels in the contract's class order
    (the class folders must be exactly the contract's class names, or give the names when it has none)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibError(f"missing image folder {folder}")
    found = sorted(d.name for d in folder.iterdir() if d.is_dir())
    classes = contract.classes or tuple(found)
    if set(found) != set(classes):
        raise CalibError(f"{folder}: class folders {found} are not the contract's class names {list(classes)}")
    paths, labels = [], []
    for c, name in enumerate(classes):
        files = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [c] * len(files)
    if not paths:
        raise CalibError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return LabeledImages(_read_images(paths, contract), np.asarray(labels, np.int64), role, source=str(folder),
                         provenance={"data_root": str(folder.parent.resolve()), "classes": list(classes)})


@dataclass(frozen=True)
class Tree:
    """Your labeled tree `<root>/{train,val,test}/<class>/*` at the model's contract, each part read once and only
    when a step asks for it: a run that needs only test/ never reads a large train/. Validation is `<root>/val`
    where it exists (the model's own held-out images; all of train is then the calibration pool), else a seeded
    cut of `<root>/train` (`split`), which the model must not have trained on; test is for the final accuracy."""

    root: Path
    contract: InputContract
    split: SplitConfig = SplitConfig()

    @cached_property
    def test(self) -> LabeledImages | None:
        return read_labeled(self.root / "test", self.contract, "test") if (self.root / "test").is_dir() else None

    @cached_property
    def parts(self) -> dict[str, LabeledImages]:
        """The calibration pool, validation and test splits that exist; one line where the tree has none, or
        where a validation image equals a test image."""
        root, out = self.root, {}
        if (root / "val").is_dir():
            out["validation"] = read_labeled(root / "val", self.contract, "validation")
        if (root / "train").is_dir():
            train = read_labeled(root / "train", self.contract, "train")
            if "validation" in out:
                out["calibration_pool"] = train.subset(np.arange(len(train)), role="calibration_pool")
            else:
                classes = tuple(train.provenance["classes"])
                for role, idx in train_split_indices(train.labels, self.split, classes).items():
                    out[role] = train.subset(idx, role=role)
        if self.test is not None:
            out["test"] = self.test
        if not out:
            raise CalibError(f"{root} has none of train/, val/, test/ (expected <root>/{{train,val,test}}/<class>/*)")
        if "validation" in out and "test" in out:
            shared = np.isin(image_hashes(out["validation"].images), image_hashes(out["test"].images))
            if shared.any():
                raise CalibError(f"{int(shared.sum())} validation image(s) of {root} equal test images: the final "
                                 "accuracy never uses validation images")
        return out

    def validation(self, why: str) -> LabeledImages:
        """The validation split; one line saying `why` it is needed where the tree has neither val/ nor train/."""
        if "validation" not in self.parts:
            raise OptionError(f"--data-dir {self.root} has neither val/ nor train/: {why}")
        return self.parts["validation"]

    @property
    def validation_from(self) -> str:
        """Where validation comes from, in words for rows."""
        if (self.root / "val").is_dir():
            return f"{self.root / 'val'} (held out by you)"
        return (f"a seeded cut of {self.root / 'train'} ({self.split.validation_per_class} per class, seed "
                f"{self.split.seed}): the model must not have trained on it")

    @cached_property
    def heldout(self) -> np.ndarray:
        """Sorted pixel hashes (at the contract's size) of the test and validation images: calibration never
        sees them."""
        held = [image_hashes(self.parts[r].images) for r in ("test", "validation") if r in self.parts]
        return np.sort(np.concatenate(held)) if held else np.empty(0, np.uint64)

    def holds_test(self, folder: Path) -> bool:
        """Whether `folder` is the tree's test/ or inside it."""
        test = (self.root / "test").resolve()
        return test in (Path(folder).resolve(), *Path(folder).resolve().parents)


def _noise(n: int, seed: int, contract: InputContract) -> np.ndarray:
    """N(0, 1) per pixel in the model's normalized input space, de-normalized to uint8 RGB."""
    from calib.core.sources import image_seed

    h, w = contract.input_size
    x = np.stack([np.random.default_rng(image_seed(seed, i)).standard_normal((h, w, 3)) for i in range(n)])
    mean, std = np.asarray(contract.mean), np.asarray(contract.std)
    if contract.bgr:
        mean, std = mean[::-1], std[::-1]
    pixels = (x * std + mean) * (255.0 if contract.scale != 1.0 else 1.0)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _fractal(n: int, seed: int, contract: InputContract, variants: int = 25) -> np.ndarray:
    """The fractal source's iterated function systems rendered at the model's input size."""
    from calib.core.sources import image_seed
    from calib.core.sources.fractal import random_system, render

    h, w = contract.input_size
    systems: dict[int, tuple] = {}
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        k = i // variants
        if k not in systems:
            systems[k] = random_system(np.random.default_rng([seed, 1, k]), 0.2)
        A, b, p = systems[k]
        img = render(A, b, p, np.random.default_rng(image_seed(seed, i)), size=max(h, w))
        out[i] = resize(img[None], (h, w))[0]
    return out


def make_images(source: str, n: int, seed: int, contract: InputContract, folder: Path | None = None,
                tree: Tree | None = None) -> np.ndarray:
    """`n` calibration images (uint8 NHWC RGB at the contract's size) from `source`; a `folder` image whose
    pixels equal a test or validation image of `tree` is refused, as is a folder inside its test/."""
    if source not in SOURCES:
        raise OptionError(f"--source {source} is not one for your own model; sources: {', '.join(SOURCES)}")
    if n < 1:
        raise OptionError(f"--images must be at least 1, not {n}")
    if source == "inversion":
        raise OptionError("--source inversion inverts the model itself: quantize_own does that (own.invert)")
    if source == "noise":
        return _noise(n, seed, contract)
    if source == "fractal":
        return _fractal(n, seed, contract)
    if source == "distylegan":  # CIFAR-10 content at 32x32, resized to the model's input size
        from calib.core.sources import generate

        per_class = -(-n // 10)
        g = generate("distylegan", per_class, seed)
        interleaved = np.argsort(np.arange(len(g.labels)) % per_class, kind="stable")[:n]  # every class in turn
        return resize(g.images[interleaved], contract.input_size)
    if folder is None:
        raise OptionError("--source folder needs --folder DIR (any folder of unlabeled images)")
    folder = Path(folder).resolve()
    if tree is not None and tree.holds_test(folder):
        raise CalibError(f"{folder} is inside the test split of {tree.root}: calibration never sees test images")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not paths:
        raise CalibError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    pick = np.sort(np.random.default_rng(seed).permutation(len(paths))[:n])
    images = _read_images([paths[i] for i in pick], contract)
    if tree is None:
        return images
    clash = np.isin(image_hashes(images), tree.heldout)
    if clash.any():
        first = paths[pick[int(np.flatnonzero(clash)[0])]]
        raise CalibError(f"{int(clash.sum())} image(s) of {folder} (e.g. {first.name}) equal test or validation "
                         f"images of {tree.root}: calibration never sees those")
    return images


@dataclass(frozen=True)
class OwnRequest:
    """One quantization of your own model; `engine` None: openvino, or onnxruntime for an .onnx file."""

    model: Path
    contract: InputContract
    source: str = "fractal"
    images: int = 300
    seed: int = 0
    engine: str | None = None
    folder: Path | None = None
    data_dir: Path | None = None
    validation_per_class: int = 100
    algo: str = "default"  # or accuracy-aware: validated on the tree's validation split (`Tree`)
    max_drop: float | None = None

    def tree(self) -> Tree | None:
        """`data_dir` as a `Tree`, its train/ cut with `validation_per_class`; None without one."""
        if self.data_dir is None:
            return None
        split = replace(SplitConfig(), validation_per_class=self.validation_per_class)
        return Tree(Path(self.data_dir), self.contract, split)


def quantize_own(req: OwnRequest, out: Path, record_path: Path | None = None, tree: Tree | None = None) -> dict:
    """Check the model against its contract, make the calibration set at its input size, quantize, and measure
    FP32 and INT8 test accuracy where `data_dir` has a test/ folder (`tree`: `req.tree()`, passed in where a
    caller has read parts of it already). Writes `options.json`, `manifest.json`, the FP32 and INT8 files and
    `quantize.json` under `out`; returns the row (also appended to `record_path`)."""
    from calib.core import foreign, runs
    from calib.core.contract import to_model_input
    from calib.core.engines import get_engine
    from calib.core.spec import QuantizeSpec

    model = foreign.check(foreign.open_model(req.model), req.contract)
    module = None
    if req.source == "inversion":  # refused before the run folder exists
        if model.kind not in ("torchscript", "export"):
            raise OptionError(f"--source inversion needs a PyTorch model (a torch.export .pt2 archive); "
                              f"{req.model} is {model.kind}")
        module = foreign.load_module(model)
        check_invertible(module)
    engine_name = req.engine or ("onnxruntime" if model.kind == "onnx" else "openvino")
    if engine_name == "onnxruntime" and model.kind == "openvino":
        raise OptionError(f"{req.model} is an OpenVINO IR; quantize it with the openvino engine")
    engine = get_engine(engine_name)
    spec = QuantizeSpec(str(req.model), out, engine=engine_name, seed=req.seed, algo=req.algo,  # checks options
                        max_drop=req.max_drop)
    tree = tree or req.tree()
    validation = None
    if req.algo != "default":
        if tree is None:
            raise OptionError("--algo accuracy-aware validates on your labeled images: give --data-dir ROOT with "
                              "ROOT/val/<class>/* (or ROOT/train/<class>/*, cut by a seed)")
        validation = tree.validation("accuracy-aware quantization needs validation images")
    if req.source == "folder" and tree is not None:
        _ = tree.heldout  # read, and a tree whose validation and test clash refused, before the run folder exists
    options = {**{k: str(v) if isinstance(v, Path) else v for k, v in req.__dict__.items() if k != "contract"},
               "engine": engine_name, "contract": req.contract.to_dict()}
    runs.start_run(out, options, seeds={"calibration": req.seed},
                   inputs={"model_sha256": runs.sha256_file(Path(req.model))})
    manifest = json.loads((out / "manifest.json").read_text())
    runs.atomic_write_json(out / "manifest.json", {**manifest, "contract": req.contract.to_dict()})
    t0 = time.perf_counter()
    fp32 = (foreign.to_onnx if engine_name == "onnxruntime" else foreign.to_ir)(
        model, req.contract, out / f"fp32{engine.suffix}")
    inverted: dict = {}
    if req.source == "inversion":
        images, inverted = invert(module, req.contract, req.images, req.seed)
    else:
        images = make_images(req.source, req.images, req.seed, req.contract, req.folder, tree)
    x = to_model_input(images, req.contract)
    int8, params = engine.quantize(fp32, [x[i : i + 1] for i in range(len(x))], spec, out / "int8", validation,
                                   req.contract)
    row: dict = {"model": str(req.model), "model_kind": model.kind, "engine": engine_name, "source": req.source,
                 "images": len(images), "seed": req.seed, "classes": model.classes, "fp32_path": str(fp32),
                 "int8_path": str(int8), "fp32_bytes": fp32.with_suffix(".bin").stat().st_size
                 if fp32.suffix == ".xml" else fp32.stat().st_size,
                 "int8_bytes": int8.with_suffix(".bin").stat().st_size if int8.suffix == ".xml"
                 else int8.stat().st_size, "contract": req.contract.to_dict(), "quantize": params,
                 "inversion": inverted or None,
                 "algo": req.algo, "validation_images": len(validation) if validation is not None else 0,
                 "validation_from": tree.validation_from if validation is not None else None,
                 "fp32_accuracy": None, "int8_accuracy": None, "int8_agreement": None, "test_images": 0}
    if tree is not None and tree.test is not None:
        test = tree.test
        xt = to_model_input(test.images, req.contract)
        p32, _ = engine.predict(fp32, xt)
        p8, _ = engine.predict(int8, xt)
        row |= {"fp32_accuracy": float((p32 == test.labels).mean()), "int8_accuracy": float((p8 == test.labels).mean()),
                "int8_agreement": float((p32 == p8).mean()), "test_images": len(test.labels)}
    row["seconds"] = round(time.perf_counter() - t0, 2)
    runs.atomic_write_json(out / "quantize.json", row)
    if record_path is not None:
        row = runs.record(record_path, "quantize_own", row, seeds={"calibration": req.seed},
                          inputs={"model_sha256": runs.sha256_file(Path(req.model))})
    return row


def check_invertible(module) -> None:
    """One line unless inversion can run on `module`: a Python module or a torch.export graph with BatchNorm."""
    import torch

    from calib.core.sources.inversion import has_batch_norm

    if isinstance(module, torch.jit.ScriptModule):
        raise OptionError("inversion needs the model as a Python nn.Module: a TorchScript module takes no "
                         "BatchNorm hooks (save it with torch.export.save as .pt2 instead)")
    if not has_batch_norm(module):
        raise OptionError("inversion needs BatchNorm2d layers, and this model has none; use --source fractal")


def invert(module, contract: InputContract, n: int, seed: int, iterations: int = 100, batch_size: int = 50,
           lr: float = 0.25, w_bn: float = 1.0, w_tv: float = 1e-4, w_l2: float = 1e-5,
           jitter: int = 2) -> tuple[np.ndarray, dict]:
    """`n` images (uint8 NHWC RGB at the contract's size) inverted from the BatchNorm statistics of a PyTorch
    `nn.Module`, as the `inversion` source does for the zoo, in the model's own input space: the loss on every
    BatchNorm2d input, total variation and L2, with jitter and flips; no class targets (your classes may be
    anything). A model without BatchNorm2d layers is refused in one line."""
    import torch

    from calib.core.contract import to_model_input
    from calib.core.sources import image_seed
    from calib.core.sources.inversion import bn_statistics, optimize_inputs

    check_invertible(module)
    if not isinstance(module, torch.fx.GraphModule):  # an exported graph is fixed in the mode it was exported in
        module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    mean = torch.tensor(contract.mean).view(1, 3, 1, 1)
    std = torch.tensor(contract.std).view(1, 3, 1, 1)
    top = 255.0 if contract.scale == 1.0 else 1.0
    lo, hi = (0 - mean) / std, (top - mean) / std
    out, bn_start, bn_end = [], [], []
    stats = bn_statistics(module)  # once: for an exported graph it is an instrumented copy
    try:
        for s in range(0, n, batch_size):
            seeds = [image_seed(seed, i) for i in range(s, min(n, s + batch_size))]
            x = torch.stack([torch.randn(contract.shape, generator=torch.Generator().manual_seed(k)) for k in seeds])
            x = torch.maximum(torch.minimum(x, hi), lo).requires_grad_(True)
            x, first_bn, _ = optimize_inputs(stats, x, lo, hi, seeds[0], iterations, lr, w_bn, w_tv, w_l2, jitter)
            bn_start.append(first_bn)
            with torch.no_grad():
                pixels = (x * std + mean) * (255.0 if contract.scale != 1.0 else 1.0)
                if contract.bgr:
                    pixels = pixels.flip(1)
                images = pixels.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
                stats.run(torch.from_numpy(to_model_input(images, contract)))
            bn_end.append(float(stats.value()))
            out.append(images)
    finally:
        stats.remove()
    return np.concatenate(out), {"bn_loss_start": float(np.mean(bn_start)), "bn_loss_uint8": float(np.mean(bn_end)),
                                 "iterations": iterations, "batch_size": batch_size, "lr": lr}


def evaluate_own(model: Path, contract: InputContract, data_dir: Path, batch: int = 50,
                 record_path: Path | None = None) -> dict:
    """Top-1 of an engine's model file (.xml or .onnx, FP32 or INT8) on `<data_dir>/test` read under its
    contract; the row carries the contract."""
    from calib.core import foreign, runs
    from calib.core.contract import to_model_input
    from calib.core.engines import engine_for_file

    checked = foreign.check(foreign.open_model(Path(model)), contract)
    engine = engine_for_file(model)
    test = read_labeled(Path(data_dir) / "test", contract, "test")
    preds, fps = engine.predict(model, to_model_input(test.images, contract), batch)
    row = {"model": str(model), "engine": engine.name, "accuracy": float((preds == test.labels).mean()),
           "images": len(test.labels), "eval_fps": fps, "classes": checked.classes,
           "test": str(Path(data_dir) / "test"), "contract": contract.to_dict()}
    if record_path is not None:
        row = runs.record(record_path, "evaluate", row, inputs={"test": row["test"]})
    return row
