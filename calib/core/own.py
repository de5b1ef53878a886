"""Your own classifier: a model file of any kind (`calib.core.kinds`), its `InputContract`, and (optionally) your
own labeled image folder.

`open_own` reads a file and the contract that applies to it as every command does (`calib.core.contract.find`)
and checks one against the other; `pick_engine` chooses the engine for its kind and use. `Tree` reads an
image-folder tree `<root>/{train,val,test}/<class>/*` with the contract's class names (any image size; resized by
the contract), each part once and only when asked: train is cut by `calib.core.data.train_split_indices` into a
calibration pool and a validation split that never overlap (unless val/ exists), test is for the final accuracy
only. `make_images` draws calibration images from the source registry (`calib.core.sources`: the same `noise`,
`fractal`, `distylegan` and `inversion` functions the zoo uses, at the contract's size and normalization;
inversion from the model file's own BatchNorm statistics) or from a folder (refused where it holds a test or
validation image of the tree in use); `invert` runs the inversion source's `invert_module` on a module already in
memory. `quantize_own` goes from
"my model, no data" to an INT8 model in one call, `evaluate_own` and `benchmark_own_files` run any file through
the one evaluator (`calib.core.evaluate`) and the one timing protocol; rows carry the contract and its origin.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from calib.core import contract as C
from calib.core import foreign, kinds
from calib.core.contract import Found, InputContract
from calib.core.data import LabeledImages, SplitConfig, image_hashes, train_split_indices
from calib.core.errors import CalibError, OptionError
from calib.core.foreign import ForeignModel

if TYPE_CHECKING:
    from calib.core.spec import QuantizeSpec

SOURCES = ("noise", "fractal", "folder", "distylegan", "inversion")
AUTO = "auto"  # --source auto: every data-free source tried, the one with the lowest label-free estimate kept
DATA_FREE = ("distylegan", "fractal", "inversion", "noise")
# inversion of your own model: half the zoo's batch (inputs may be 224x224) and weaker image priors
OWN_INVERSION = {"iterations": 100, "batch_size": 50, "lr": 0.25, "w_tv": 1e-4, "w_l2": 1e-5, "channels_last": False}
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
        out[i] = C.resize(arr[None], contract.input_size)[0]
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


def is_zoo_file(model: ForeignModel) -> bool:
    """Whether a file without a contract is taken as a zoo model's (CIFAR-10's contract): it declares the zoo's
    3x32x32 input itself and 10 outputs (or, a PyTorch archive, none yet known)."""
    return model.input_shape == (3, 32, 32) and model.classes in (10, None)


def without_contract(path: Path, options: dict | None = None, card: Path | None = None) -> ForeignModel | None:
    """The model file where nothing states a contract for it (no option, no card, none written inside), else None;
    `is_zoo_file` then says whether it is taken as a zoo model's."""
    if options or card is not None or C.card_path(Path(path)).is_file():
        return None
    try:
        file = foreign.open_model(Path(path))
        return file if C.read_from_model(Path(path)) is None else None
    except CalibError as e:
        raise OptionError(str(e)) from None


@dataclass(frozen=True)
class OwnModel:
    """A model file with the contract that applies to it (`calib.core.contract.find`: options over a card over
    the file's own), checked against what the file declares (`calib.core.foreign.check`)."""

    file: ForeignModel
    found: Found

    @property
    def contract(self) -> InputContract:
        return self.found.contract

    @property
    def path(self) -> Path:
        return self.file.path

    def facts(self) -> dict:
        """What rows record about the model and its contract."""
        return {"model_kind": self.file.kind, "input_name": self.file.input_name, "model_batch": self.file.batch,
                "fp16_weights": self.file.fp16_weights,
                "classes": self.file.classes, "contract": self.contract.to_dict(), "contract_from": self.found.origin,
                "contract_overrides": list(self.found.overrides)}


def open_own(path: Path, options: dict | None = None, card: Path | None = None) -> OwnModel:
    """The model file, its contract and their agreement, each problem one line (an `OptionError`: refused before
    any work)."""
    try:
        file = foreign.open_model(Path(path))
        found = C.find(Path(path), options, card)
        return OwnModel(foreign.check(file, found.contract), found)
    except OptionError:
        raise
    except CalibError as e:
        raise OptionError(str(e)) from None


def pick_engine(model: ForeignModel, engine: str | None, use: str) -> str:
    """The engine for a file in a use of `calib.core.kinds.READERS`: `engine` if it reads this kind there, else
    the kind's default; one line naming the engines that do."""
    readers = kinds.READERS[use][model.kind]
    if engine is None:
        return readers[0]
    if engine not in readers:
        raise OptionError(f"--engine {engine} does not read {model.path} ({kinds.NAMES[model.kind]}) here; "
                          f"{' or '.join(readers)} does: leave --engine out or pass --engine {readers[0]}")
    return engine


def runnable(own: OwnModel, engine: str):
    """What `engine` runs for the file: an `ov.Model` (OpenVINO reads or converts the file in memory, at the
    contract's input size), else the file itself."""
    return foreign.to_ov_model(own.file, own.contract) if engine == "openvino" else own.path


def _interleaved(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of the first `n` images taking every class folder in turn."""
    per_class = int(np.bincount(labels).max())
    return np.argsort(np.arange(len(labels)) % per_class, kind="stable")[:n]


def _registry_images(source: str, n: int, seed: int, contract: InputContract,
                     **options) -> tuple[np.ndarray, dict]:
    """`n` images of a registry source at the contract's size and normalization (a source that takes no
    contract: resized), every class folder in turn, and the source's manifest extras."""
    from calib.core.sources import generate, source_info

    takes = {"contract": contract} if "contract" in source_info(source).options else {}
    g = generate(source, -(-n // 10), seed, **takes, **options)
    return C.resize(g.images[_interleaved(g.labels, n)], contract.input_size), g.extra


def _inversion_summary(batches: list[dict], opts: dict) -> dict:
    """What a row records of an inversion: the options and the BN losses averaged over the batches."""
    return {**opts, "bn_loss_start": float(np.mean([b["bn_loss_start"] for b in batches])),
            "bn_loss_uint8": float(np.mean([b["bn_loss_uint8"] for b in batches])), "batches": len(batches)}


def invert_file(model: Path, contract: InputContract, n: int, seed: int) -> tuple[np.ndarray, dict]:
    """`n` images inverted from the BatchNorm statistics of your model's file by the registry's `inversion`
    source (pinned kernels, as for the zoo), at the contract's size and normalization; and what the row records."""
    images, extra = _registry_images("inversion", n, seed, contract, model=str(model), **OWN_INVERSION)
    return images, {**_inversion_summary(extra["batches"], extra["inversion"]), "kernels": extra.get("kernels")}


def make_images(source: str, n: int, seed: int, contract: InputContract, folder: Path | None = None,
                tree: Tree | None = None, model: Path | None = None) -> np.ndarray:
    """`n` calibration images (uint8 NHWC RGB at the contract's size) from `source`: the registry's own source
    (`calib.core.sources`) at the contract's size and normalization, every class folder in turn (`inversion`:
    of the `model` file); or a `folder` (at most `n` of its images, seeded), whose image equal to a test or
    validation image of `tree` is refused, as is a folder inside its test/."""
    if source not in SOURCES:
        raise OptionError(f"--source {source} is not one for your own model; sources: {', '.join(SOURCES)}")
    if n < 1:
        raise OptionError(f"--images must be at least 1, not {n}")
    if source == "inversion":
        if model is None:
            raise OptionError("--source inversion inverts your model's file: give it")
        return invert_file(Path(model), contract, n, seed)[0]
    if source != "folder":
        return _registry_images(source, n, seed, contract)[0]
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
    """One quantization of your own model; `engine` None: the file kind's default (`calib.core.kinds`).
    `contract_from` and `overrides` say where the contract came from (`calib.core.contract.Found`)."""

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
    contract_from: str = "options"
    overrides: tuple[str, ...] = ()

    def tree(self) -> Tree | None:
        """`data_dir` as a `Tree`, its train/ cut with `validation_per_class`; None without one."""
        if self.data_dir is None:
            return None
        split = replace(SplitConfig(), validation_per_class=self.validation_per_class)
        return Tree(Path(self.data_dir), self.contract, split)

    def options(self) -> dict:
        """Every field as JSON-able values, the contract as its dict."""
        return {**{k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items() if k != "contract"},
                "overrides": list(self.overrides), "contract": self.contract.to_dict()}


@dataclass(frozen=True)
class OwnPlan:
    """A request checked against its model file before any work: the file, the engine, the spec, the tree and
    its validation split where a step uses it."""

    model: ForeignModel
    engine: str
    spec: QuantizeSpec
    tree: Tree | None
    validation: LabeledImages | None


def plan_own(req: OwnRequest, tree: Tree | None = None) -> OwnPlan:
    """Every check of a request that needs no calibration image, in one line each (an `OptionError`), so that a
    refused request makes no folder and no row: the file against its contract, the engine for its kind, the
    quantization options, inversion's needs, and the tree's validation and held-out images where a step uses
    them."""
    from calib.core.spec import QuantizeSpec

    try:
        model = foreign.check(foreign.open_model(req.model), req.contract)
    except OptionError:
        raise
    except CalibError as e:
        raise OptionError(str(e)) from None
    if req.source not in SOURCES:
        raise OptionError(f"--source {req.source} is not one for your own model; sources: {', '.join(SOURCES)}")
    if req.images < 1:
        raise OptionError(f"--images must be at least 1, not {req.images}")
    if (req.folder is None) != (req.source != "folder"):
        raise OptionError("--folder DIR goes with --source folder, and only with it")
    if req.folder is not None and not Path(req.folder).is_dir():
        raise OptionError(f"--folder {req.folder}: no such folder")
    engine = pick_engine(model, req.engine, "quantize")
    if model.batch not in (None, 1):
        raise OptionError(f"{req.model} takes batch {model.batch} only; calib calibrates with batch 1: export it "
                          "with batch 1 or a dynamic batch")
    if req.algo != "default" and engine != "openvino":
        raise OptionError(f"--algo {req.algo} is NNCF's (openvino); {req.model} goes to {engine}: pass --engine "
                          "openvino")
    if req.max_drop is not None and req.algo == "default":
        raise OptionError("--max-drop goes with --algo accuracy-aware")
    if req.data_dir is not None and not Path(req.data_dir).is_dir():
        raise OptionError(f"--data-dir {req.data_dir}: no such folder")
    spec = QuantizeSpec(str(req.model), Path("."), engine=engine, seed=req.seed, algo=req.algo,
                        max_drop=req.max_drop)  # checks the options against the engine
    if req.source == "inversion":
        if model.kind not in ("torchscript", "export"):
            raise OptionError(f"--source inversion needs a PyTorch model (a torch.export .pt2 archive); "
                              f"{req.model} is {kinds.NAMES[model.kind]}")
        from calib.core.sources.inversion import check_invertible

        check_invertible(foreign.load_module(model))
    tree = tree or req.tree()
    validation = None
    try:
        if req.algo != "default":
            if tree is None:
                raise OptionError("--algo accuracy-aware validates on your labeled images: give --data-dir ROOT with "
                                  "ROOT/val/<class>/* (or ROOT/train/<class>/*, cut by a seed)")
            validation = tree.validation("accuracy-aware quantization needs validation images")
        if req.source == "folder" and tree is not None:
            _ = tree.heldout  # read, and a tree whose validation and test clash refused
        if tree is not None:
            _ = tree.test
    except OptionError:
        raise
    except CalibError as e:
        raise OptionError(str(e)) from None
    return OwnPlan(model, engine, spec, tree, validation)


def own_folder(req: OwnRequest, root: Path = Path("runs/quantize"), extra: dict | None = None) -> Path:
    """`<root>/own-<stem>-<kind>-<engine>[-<algo>]-<source>-<images>-s<seed>-<digest>`: the main conditions
    readable, and a digest of the model file's content, the contract, every option and `extra` (another
    command's own options), so that two conditions (another file of the same stem, another mean) never share a
    folder."""
    from calib.core.folders import name_digest
    from calib.core.runs import file_sha256

    kind = kinds.kind_of(req.model) or "file"
    engine = req.engine or kinds.READERS["quantize"].get(kind, ("openvino",))[0]
    algo = "" if req.algo == "default" else f"-{req.algo}"
    condition = {**req.options(), "model": file_sha256(Path(req.model)), "engine": engine, **(extra or {})}
    condition.pop("contract_from"), condition.pop("overrides")
    return root / (f"own-{Path(req.model).stem}-{kind}-{engine}{algo}-{req.source}-{req.images}-s{req.seed}-"
                   f"{name_digest(condition, 8)}")


def quantize_own(req: OwnRequest, out: Path, record_path: Path | None = None, tree: Tree | None = None,
                 plan: OwnPlan | None = None) -> dict:
    """Check the request (`plan_own`, unless `plan` is given), make the calibration set at the model's input size,
    quantize, and measure FP32 and INT8 test accuracy through `calib.core.evaluate` where the tree has a test/
    folder. Writes `options.json`, `manifest.json`, the FP32 and INT8 files and `quantize.json` under `out`;
    returns the row, also appended to `record_path` once everything is written."""
    from calib.core import runs
    from calib.core.engines import get_engine
    from calib.core.evaluate import evaluate
    from calib.core.speed import model_size_bytes

    plan = plan or plan_own(req, tree)
    model, tree, validation = plan.model, plan.tree, plan.validation
    engine = get_engine(plan.engine)
    model_sha = runs.file_sha256(Path(req.model))
    runs.start_run(out, req.options() | {"engine": plan.engine}, seeds={"calibration": req.seed},
                   inputs={"model_sha256": model_sha})
    manifest = json.loads((out / "manifest.json").read_text())
    runs.atomic_write_json(out / "manifest.json", {**manifest, "contract": req.contract.to_dict()})
    t0 = time.perf_counter()
    fp32 = (foreign.to_onnx if plan.engine == "onnxruntime" else foreign.to_ir)(
        model, req.contract, out / f"fp32{engine.suffix}")
    inverted: dict = {}
    if req.source == "inversion":
        images, inverted = invert_file(req.model, req.contract, req.images, req.seed)
    else:
        images = make_images(req.source, req.images, req.seed, req.contract, req.folder, tree)
    x = C.to_model_input(images, req.contract)
    int8, params = engine.quantize(fp32, [x[i : i + 1] for i in range(len(x))], plan.spec, out, validation,
                                   req.contract)
    own = OwnModel(model, C.Found(req.contract, req.contract_from, req.overrides))
    row: dict = {"model": str(req.model), "model_sha256": model_sha, **own.facts(), "engine": plan.engine,
                 "source": req.source, "images": len(images), "images_asked": req.images, "seed": req.seed,
                 "fp32_path": str(fp32), "int8_path": str(int8), "fp32_bytes": model_size_bytes(fp32),
                 "int8_bytes": model_size_bytes(int8), "quantize": params, "inversion": inverted or None,
                 "algo": req.algo, "validation_images": len(validation) if validation is not None else 0,
                 "validation_from": tree.validation_from if validation is not None else None,
                 "fp32_accuracy": None, "int8_accuracy": None, "int8_agreement": None, "test_images": 0,
                 "test": None}
    if tree is not None and tree.test is not None:
        batch = model.batch or 50  # a file fixed to one batch runs at it
        p32 = evaluate(fp32, tree.test, batch, contract=req.contract)
        p8 = evaluate(int8, tree.test, batch, contract=req.contract)
        row |= {"fp32_accuracy": p32["accuracy"], "int8_accuracy": p8["accuracy"],
                "int8_agreement": float((p32["predictions"] == p8["predictions"]).mean()),
                "test_images": p32["test_images"], "test": str(tree.root / "test")}
    row |= probe_own(fp32, int8, req)
    row["seconds"] = round(time.perf_counter() - t0, 2)
    row["out"] = str(out)
    runs.atomic_write_json(out / "quantize.json", row)
    if record_path is not None:
        row = runs.record(record_path, "quantize_own", row, seeds={"calibration": req.seed},
                          inputs={"model_sha256": model_sha})
    return row


def probe_own(fp32: Path, int8: Path, req: OwnRequest) -> dict:
    """The label-free estimate of your model's drop (`calib.core.drop`): probe images at its input size, made by
    the registry's data-free sources with a seed the calibration set did not take."""
    from calib.core.drop import measure, probe_images, probe_seed

    def make(source: str, per_class: int, seed: int) -> np.ndarray:
        return _registry_images(source, 10 * per_class, seed, req.contract)[0]

    seed = probe_seed(req.source, req.seed)
    return measure(fp32, int8, C.to_model_input(probe_images(seed, make), req.contract), seed)


def choice_key(row: dict) -> tuple:
    """How `quantize_auto` ranks its tries: the lowest estimated drop, else (no fit shipped) the lowest KL of the
    INT8 outputs from the FP32 ones on the probe; a try that failed last."""
    if row.get("error"):
        return (2, 0.0)
    if row.get("estimated_drop") is not None:
        return (0, row["estimated_drop"])
    return (1, row.get("probe_kl", float("inf")))


def quantize_auto(req: OwnRequest, out: Path, tree: Tree | None = None) -> dict:
    """`--source auto`: quantize with each data-free source (`DATA_FREE`) into `out/<source>/`, and keep the try
    with the lowest label-free estimate (`choice_key`): choosing a source needs no data. A source that cannot run
    on this model (inversion without BatchNorm) is named with its reason. Writes `out/choice.json`; returns the
    chosen try's row with `choice` (every try: source, estimate, interval, test accuracy if measured)."""
    from calib.core import runs

    tries = []
    for source in DATA_FREE:
        one = replace(req, source=source)
        try:
            row = quantize_own(one, out / source, tree=tree)
        except CalibError as e:
            row = {"source": source, "error": str(e)}
        tries.append(row)
    chosen = min(tries, key=choice_key)
    if chosen.get("error"):
        raise CalibError(f"no data-free source could quantize {req.model}: "
                         + "; ".join(f"{t['source']}: {t['error']}" for t in tries))
    keep = ("source", "estimated_drop", "estimated_drop_low", "estimated_drop_high", "probe_flip", "probe_kl",
            "int8_accuracy", "fp32_accuracy", "out", "error")
    choice = [{k: t.get(k) for k in keep if k in t} for t in tries]
    runs.atomic_write_json(out / "choice.json", {"chosen": chosen["source"], "tries": choice,
                                                 "rule": "lowest estimated drop (no fit: lowest probe KL)"})
    return {**chosen, "choice": choice, "out": chosen["out"]}


def invert(module, contract: InputContract, n: int, seed: int, iterations: int = OWN_INVERSION["iterations"],
           batch_size: int = OWN_INVERSION["batch_size"], lr: float = OWN_INVERSION["lr"], w_bn: float = 1.0,
           w_tv: float = OWN_INVERSION["w_tv"], w_l2: float = OWN_INVERSION["w_l2"],
           jitter: int = 2) -> tuple[np.ndarray, dict]:
    """`n` images (uint8 NHWC RGB at the contract's size) inverted from the BatchNorm statistics of a PyTorch
    module already in memory (an `nn.Module` or a torch.export graph) by the inversion source's own
    `invert_module`, as `make_images` does for a model file: the same batches, the same images. A module without
    BatchNorm2d layers, or a TorchScript one, is refused in one line."""
    from calib.core.sources.inversion import check_invertible, invert_module

    check_invertible(module)
    opts = {"iterations": iterations, "batch_size": batch_size, "lr": lr, "w_bn": w_bn, "w_ce": 0.0, "w_tv": w_tv,
            "w_l2": w_l2, "jitter": jitter, "channels_last": OWN_INVERSION["channels_last"]}
    images, labels, _, batches, _ = invert_module(module, -(-n // 10), seed, opts, contract)
    return images[_interleaved(labels, n)], _inversion_summary(batches, opts)


def evaluate_own(model: Path, data_dir: Path | None, options: dict | None = None, card: Path | None = None,
                 batch: int = 50, engine: str | None = None, record_path: Path | None = None) -> dict:
    """Top-1 of a model file of any kind (FP32 or INT8) on `<data_dir>/test` read under its contract
    (`open_own`), through `calib.core.evaluate` with the engine that runs its kind; the row carries the
    contract and where it came from."""
    from calib.core import runs
    from calib.core.engines import get_engine
    from calib.core.evaluate import evaluate

    own = open_own(Path(model), options, card)
    engine_name = pick_engine(own.file, engine, "run")
    if data_dir is None:
        raise OptionError("your own model is evaluated on --data-dir ROOT (ROOT/test/<class>/*, your class folders)")
    if not (Path(data_dir) / "test").is_dir():
        raise OptionError(f"--data-dir {data_dir} has no test/ folder: evaluate reads ROOT/test/<class>/*")
    try:
        test = read_labeled(Path(data_dir) / "test", own.contract, "test")
    except CalibError as e:
        raise OptionError(str(e)) from None
    result = evaluate(runnable(own, engine_name), test, own.file.batch or batch, get_engine(engine_name),
                      own.contract)
    result.pop("predictions")
    row = {"model": str(model), **result, **own.facts(), "test": str(Path(data_dir) / "test")}
    if record_path is not None:
        row = runs.record(record_path, "evaluate", row, inputs={"test": row["test"]})
    return row


def benchmark_own_files(paths: list[Path], protocol, options: dict | None = None, card: Path | None = None,
                        engine: str | None = None, record_path: Path | None = None, quiet: bool = False) -> list[dict]:
    """Speed of model files of any kind under one protocol, each at its own input size: the size the file
    declares, else its contract's (`calib.core.contract.find`). Every file is opened, its contract found and
    its engine chosen before the first is timed, so a refused file leaves no row; `vs_first` is each throughput
    over the first file's."""
    from dataclasses import asdict

    from calib.core import runs
    from calib.core.engines import get_engine
    from calib.core.progress import track
    from calib.core.speed import model_size_bytes, speed_fields, time_model

    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise OptionError(f"no such model file: {', '.join(missing)}")
    ready = []
    for path in paths:
        file = without_contract(Path(path), options, card)
        if file is not None and file.declares_input and file.kind in ("openvino", "onnx"):
            found, name, model, shape = None, pick_engine(file, engine, "run"), path, file.input_shape  # all it needs
        else:
            own = open_own(Path(path), options, card)
            found, name, file = own.found, pick_engine(own.file, engine, "run"), own.file
            model, shape = runnable(own, name), own.contract.shape
        if file.batch not in (None, protocol.batch):
            raise OptionError(f"{path} takes batch {file.batch} only; pass --batch {file.batch}")
        ready.append((Path(path), file, found, name, model, shape))
    rows: list[dict] = []
    for path, file, found, name, model, shape in track(ready, "benchmark files", quiet=quiet):
        timing = replace(protocol, input_shape=tuple(shape))
        b = time_model(get_engine(name), model, timing)
        row = {"file": str(path), "engine": name, "model_kind": file.kind, "input_shape": list(shape),
               "bytes": model_size_bytes(path), **speed_fields("model", b), "protocol": asdict(timing),
               "protocol_text": timing.describe(), "contract": found.contract.to_dict() if found else None,
               "contract_from": found.origin if found else "the file's own input shape"}
        row["vs_first"] = row["model_fps"] / rows[0]["model_fps"] if rows else 1.0
        rows.append(runs.record(record_path, "benchmark_files", row) if record_path is not None else row)
    return rows
