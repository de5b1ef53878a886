"""Your own model from the exporters people use, through every command that reads model files.

A tiny torchvision-style classifier (conv, BatchNorm, ReLU, global pooling, linear head; 5 classes) whose input
is named `images`, exported by `torch.onnx.export` (TorchScript-based; the `dynamo=True` exporter where
onnxscript is installed), `torch.export`, `torch.jit.script` and `openvino.convert_model`, each with batch fixed
to 1 and with a dynamic batch (TorchScript declares no shapes: one cell), at 32x32 and at 224x224. Each file
has its contract card beside it.

Every cell goes through `calib quantize` with both engines, `calib evaluate` and `benchmark files`: it works,
or is refused in one line before any work (no folder, no row). The test images are labeled with the torch
model's own predictions (images whose top two logits are close are left out), so an FP32 file's accuracy of
exactly 1.0 means its predictions equal the torch model's; INT8 only has to run and agree with FP32 on most
images (its arithmetic differs between CPUs).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from calib.cli import app
from calib.core import contract as C

CLASSES = ("c0", "c1", "c2", "c3", "c4")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIZES = [32, pytest.param(224, marks=pytest.mark.slow)]
BATCHES = ("fixed1", "dynamic")


class Tiny(torch.nn.Module):
    """The shape of a torchvision classifier, small enough to quantize in a second."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), torch.nn.BatchNorm2d(16), torch.nn.ReLU())
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(16, len(CLASSES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(images)), 1))


def images(n: int, size: int, seed: int) -> np.ndarray:
    """Smooth colour images (upsampled noise), uint8 NHWC RGB."""
    low = np.random.default_rng(seed).integers(0, 256, (n, 3, 4, 4), dtype=np.uint8)
    up = torch.nn.functional.interpolate(torch.from_numpy(low).float(), size=(size, size), mode="bilinear")
    return up.round().clamp(0, 255).byte().permute(0, 2, 3, 1).contiguous().numpy()


def contract(size: int) -> C.InputContract:
    return C.InputContract(MEAN, STD, (size, size), classes=CLASSES)


@pytest.fixture(scope="module", params=SIZES, ids=lambda s: f"{s}px")
def world(request, tmp_path_factory):
    """The torch model at one input size (BatchNorm statistics settled on its inputs), and a test tree labeled
    with its own clear predictions."""
    from PIL import Image

    size = request.param
    root = tmp_path_factory.mktemp(f"world{size}")
    torch.manual_seed(size)
    net = Tiny().train()
    with torch.no_grad():
        for s in range(3):
            net(torch.from_numpy(C.to_model_input(images(32, size, 100 + s), contract(size))))
    net.eval()
    imgs = images(40, size, 7)
    with torch.no_grad():
        logits = net(torch.from_numpy(C.to_model_input(imgs, contract(size)))).numpy()
    top2 = np.sort(logits, 1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-3
    for name in CLASSES:
        (root / "data" / "test" / name).mkdir(parents=True)
    for i in np.flatnonzero(clear):
        Image.fromarray(imgs[i]).save(root / "data" / "test" / CLASSES[int(logits[i].argmax())] / f"{i:03d}.png")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return {"net": net, "size": size, "root": root, "data": root / "data", "tested": int(clear.sum())}


def _onnx(net, path, size, batch, dynamo=False):
    x = torch.zeros(1, 3, size, size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            shapes = ({0: torch.export.Dim("batch", min=1, max=64)},) if batch == "dynamic" else None
            torch.onnx.export(net, (torch.zeros(2 if shapes else 1, 3, size, size),), str(path), dynamo=True,
                              input_names=["images"], output_names=["scores"], dynamic_shapes=shapes)
        else:
            axes = {"images": {0: "n"}, "scores": {0: "n"}} if batch == "dynamic" else None
            torch.onnx.export(net, (x,), str(path), input_names=["images"], output_names=["scores"],
                              dynamic_axes=axes, opset_version=17, dynamo=False)


def _export(net, path, size, batch):
    shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if batch == "dynamic" else None
    example = torch.zeros(2 if shapes else 1, 3, size, size)
    torch.export.save(torch.export.export(net, (example,), dynamic_shapes=shapes), str(path))


def _script(net, path, size, batch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(net).save(str(path))


def _openvino(net, path, size, batch):
    import openvino as ov

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ov.convert_model(net, example_input=torch.zeros(1, 3, size, size),
                                 input=[("images", [1 if batch == "fixed1" else -1, 3, size, size])])
    ov.save_model(model, str(path), compress_to_fp16=False)


def _dynamo(net, path, size, batch):
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript, not installed here")
    _onnx(net, path, size, batch, dynamo=True)


EXPORTERS = {"onnx": (".onnx", _onnx), "onnx-dynamo": (".onnx", _dynamo), "export": (".pt2", _export),
             "script": (".pt", _script), "openvino": (".xml", _openvino)}
CELLS = [(e, b) for e in EXPORTERS for b in (("any",) if e == "script" else BATCHES)]


@pytest.fixture(scope="module")
def files(world):
    """Each exporter's file, made once per size, with its card beside it."""
    made = {}
    card = 'mean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\ninput_size = [{0}, {0}]\nclasses_file = ' \
           '"../classes.txt"\n'.format(world["size"])
    for exporter, batch in CELLS:
        suffix, export = EXPORTERS[exporter]
        folder = world["root"] / f"{exporter}-{batch}"
        folder.mkdir()
        path = folder / f"net{suffix}"
        try:
            export(world["net"], path, world["size"], batch)
        except pytest.skip.Exception as e:
            made[exporter, batch] = e
            continue
        path.with_name(path.name + ".calib.toml").write_text(card)
        made[exporter, batch] = path
    return made


def cell(files, exporter, batch):
    path = files[exporter, batch]
    if isinstance(path, BaseException):
        pytest.skip(str(path))
    return path


def run(args: list[str]):
    result = CliRunner().invoke(app, args)
    return result, result.stderr.strip()


@pytest.mark.parametrize("exporter,batch", CELLS, ids=[f"{e}-{b}" for e, b in CELLS])
def test_fp32_file_predicts_as_the_torch_model_in_evaluate(world, files, exporter, batch, tmp_path):
    path = cell(files, exporter, batch)
    engines = ("onnxruntime", "openvino") if exporter.startswith("onnx") else \
        ("pytorch", "openvino") if exporter == "export" else ("openvino",)
    for engine in engines:
        result, err = run(["evaluate", "--model", str(path), "--engine", engine, "--data-dir", str(world["data"]),
                           "--record", str(tmp_path / "rows.jsonl"), "--format", "json", "-q"])
        assert result.exit_code == 0, (engine, result.output)
        row = json.loads(result.stdout)
        assert row["engine"] == engine and row["images"] == world["tested"]
        assert row["accuracy"] == 1.0, (engine, row)
        assert row["input_name"] == "images" and row["contract_from"].startswith("card ")
        assert row["model_batch"] == (1 if batch == "fixed1" else None)
        assert err == ""  # -q: nothing on stderr


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
@pytest.mark.parametrize("exporter,batch", CELLS, ids=[f"{e}-{b}" for e, b in CELLS])
def test_quantize_works_or_is_refused_in_one_line(world, files, exporter, batch, engine, tmp_path):
    path = cell(files, exporter, batch)
    out, rows = tmp_path / "run", tmp_path / "rows.jsonl"
    result, err = run(["quantize", "--model", str(path), "--engine", engine, "--source", "fractal", "--images",
                       "16", "--data-dir", str(world["data"]), "--out", str(out), "--record", str(rows),
                       "--format", "json", "-q"])
    if exporter == "openvino" and engine == "onnxruntime":  # an IR has no ONNX export
        assert result.exit_code == 2 and len(err.splitlines()) == 1, result.output
        assert "--engine onnxruntime does not read" in err and "openvino does" in err
        assert not out.exists() and not rows.exists()
        return
    assert result.exit_code == 0, result.output
    assert err == ""
    row = json.loads(result.stdout)
    assert row["engine"] == engine and row["input_name"] == "images"
    assert row["fp32_accuracy"] == 1.0 and row["int8_agreement"] >= 0.6
    assert (out / f"int8{'.xml' if engine == 'openvino' else '.onnx'}").is_file()
    assert C.read_from_model(row["int8_path"]) == contract(world["size"])
    assert len(rows.read_text().splitlines()) == 1


@pytest.mark.parametrize("exporter,batch", CELLS, ids=[f"{e}-{b}" for e, b in CELLS])
def test_every_file_is_timed_at_its_own_input_size(world, files, exporter, batch):
    from calib.core.engines import Protocol
    from calib.core.own import benchmark_own_files

    path = cell(files, exporter, batch)
    quick = Protocol(warmup_s=0.05, duration_s=0.1, repeats=1, threads=1)
    (row,) = benchmark_own_files([path], quick)
    assert row["input_shape"] == [3, world["size"], world["size"]] and row["model_fps"] > 0


@pytest.mark.slow
def test_benchmark_files_checks_every_file_before_timing_any(world, files, tmp_path):
    """A file without a contract among timed ones: one line, and no row for the files before it."""
    rows = tmp_path / "rows.jsonl"
    bare = tmp_path / "bare.pt"
    bare.write_bytes(files["script", "any"].read_bytes())
    good = [str(files["export", "dynamic"]), str(files["openvino", "fixed1"])]
    result, err = run(["benchmark", "files", *good, str(bare), "--duration", "0.5", "--record", str(rows)])
    assert result.exit_code == 2 and len(err.splitlines()) == 1 and "no input contract for" in err, result.output
    assert "--contract CARD" in err and "bare.pt.calib.toml" in err and not rows.exists()
    result, err = run(["benchmark", "files", *good, "--duration", "0.5", "--record", str(rows), "--format", "json",
                       "-q"])
    assert result.exit_code == 0, result.output
    timed = json.loads(result.stdout)
    assert [t["engine"] for t in timed] == ["pytorch", "openvino"]
    assert all(t["input_shape"] == [3, world["size"], world["size"]] for t in timed)
    assert len(rows.read_text().splitlines()) == 2
