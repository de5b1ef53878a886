"""The engine registry: every engine exports, predicts and is timed under the one protocol, checked against
PyTorch's own forward pass, OpenVINO's plain synchronous inference and the runtimes' own API boundaries."""

from __future__ import annotations

import ast
import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.datasets import ImageFolder
from typer.testing import CliRunner

from calib.cli import app
from calib.core.data import MEAN, STD
from calib.core.engines import (
    Protocol,
    ThreadPoolRunner,
    engine_for_file,
    get_engine,
    list_engines,
)
from calib.core.errors import CalibError
from calib.core.spec import QuantizeSpec
from calib.core.speed import _throughput_run, time_model
from tests.conftest import REPO

runner = CliRunner()
ENGINES = list_engines()
INT8_ENGINES = list_engines(int8=True)
FP32_ONLY = list_engines(int8=False)


def torchvision_input(images: np.ndarray) -> np.ndarray:
    """Normalized NCHW through torchvision's own transforms: an independent check of the project's transform."""
    t = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    return torch.stack([t(Image.fromarray(img)) for img in images]).numpy()


def read_tree(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    tree = ImageFolder(str(folder))
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p, _ in tree.samples])
    return images, np.asarray(tree.targets, np.int64)


_TRAINED: dict[Path, Path] = {}


def train_tiny(cifar_dir: Path, folder: Path) -> Path:
    """tiny_cnn trained for 60 Adam steps on the tiny tree's train split (well above chance on its test split),
    saved under the zoo's file naming; once per tree and process, on one thread so it stays quick."""
    if cifar_dir in _TRAINED:
        return _TRAINED[cifar_dir]
    from calib.core.zoo import create_model

    images, labels = read_tree(cifar_dir / "train")
    x, y = torch.from_numpy(torchvision_input(images)), torch.from_numpy(labels)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = create_model("tiny_cnn")
            opt = torch.optim.Adam(model.parameters(), 0.01)
            gen = torch.Generator().manual_seed(0)
            for _ in range(60):
                idx = torch.randint(0, len(x), (128,), generator=gen)
                loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    tmp = folder / "tmp.pt"
    torch.save(model.state_dict(), tmp)
    _TRAINED[cifar_dir] = tmp.rename(folder / f"cifar10_tiny_cnn-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pt")
    return _TRAINED[cifar_dir]


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory, cifar_dir) -> Path:
    return train_tiny(cifar_dir, tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="module")
def tiny(trained_tiny):
    from calib.core.weights import load_model

    return load_model("tiny_cnn", trained_tiny)


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory) -> dict[str, Path]:
    """The trained tiny model as every engine's FP32 file."""
    return {name: get_engine(name).export(tiny, tmp_path_factory.mktemp(name)) for name in ENGINES}


@pytest.fixture(scope="module")
def random_images() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (37, 32, 32, 3), dtype=np.uint8)


def test_registry_lists_every_engine_and_refuses_unknown_ones():
    assert {"openvino", "onnxruntime", "pytorch"} <= set(ENGINES)
    assert set(INT8_ENGINES) | set(FP32_ONLY) == set(ENGINES) and "pytorch" in FP32_ONLY
    with pytest.raises(CalibError, match="unknown engine"):
        get_engine("tensorrt")
    with pytest.raises(CalibError, match="no engine reads"):
        engine_for_file("model.tflite")


@pytest.mark.parametrize("name", ENGINES)
def test_export_and_padded_batch_predict_match_pytorch(name, exported, tiny, random_images):
    """37 images at batch 10: the last batch is padded; every class equals PyTorch's own forward pass."""
    engine, path = get_engine(name), exported[name]
    assert path.suffix == engine.suffix and engine_for_file(path) is engine
    x = torchvision_input(random_images)
    preds, fps = engine.predict(path, x, batch=10)
    with torch.no_grad():
        expected = tiny(torch.from_numpy(x)).argmax(1).numpy()
    assert preds.dtype == np.int64 and np.array_equal(preds, expected) and fps > 0


def test_openvino_padded_batches_equal_plain_synchronous_inference(exported, random_images):
    """The queue-driven evaluator (preallocated outputs, zero-padded last batch) against OpenVINO's plain
    synchronous call, one image at a time, logits included."""
    import openvino as ov

    from calib.core.engines.openvino import predict_ov

    xml = exported["openvino"]
    x = torchvision_input(random_images)
    preds, _, config = predict_ov(xml, x, batch=8)
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    reference = np.concatenate([compiled(x[i : i + 1])[0] for i in range(len(x))])
    assert np.array_equal(preds, reference.argmax(1)) and config["batch"] == 8


@pytest.mark.parametrize("name", ENGINES)
def test_every_engine_is_timed_under_the_same_protocol(name, exported):
    protocol = Protocol(warmup_s=0.05, duration_s=0.15, repeats=3, threads=2, batch=4, requests=2)
    r = time_model(name, exported[name], protocol)
    assert len(r["fps_throughput_runs"]) == len(r["fps_latency_runs"]) == 3
    assert r["fps_throughput_median"] > 0 and r["fps_latency_median"] > 0
    assert (r["throughput_batch"], r["throughput_requests"], r["threads"], r["latency_batch"]) == (4, 2, 2, 1)
    assert r["protocol_text"] == protocol.describe() and "latency" in r["protocol_text"]


def test_openvino_runs_the_protocols_streams_and_threads(exported):
    r = time_model("openvino", exported["openvino"], Protocol(0.05, 0.1, 3, threads=2, requests=2, batch=3))
    assert r["device_config"]["NUM_STREAMS"] == "2" and r["device_config"]["INFERENCE_NUM_THREADS"] == "2"
    assert r["device_config"]["INFERENCE_PRECISION_HINT"] == "f32"


def test_timing_loop_keeps_every_request_busy():
    """Two slots, one 6x slower: the loop must start a request whenever one slot is free. Waiting for every
    request each round would give at most 2 per slow call (~40 in 0.6 s); keeping both busy gives ~140."""
    runner_ = ThreadPoolRunner([lambda: time.sleep(0.005), lambda: time.sleep(0.03)])
    try:
        n = _throughput_run(runner_, 0.6)
    finally:
        runner_.close()
    assert n > 70


def test_openvino_timing_uses_the_queue_without_waiting_each_round(exported, monkeypatch):
    """Spy on OpenVINO's own AsyncInferQueue: within a timed run requests start as soon as one is idle; the
    queue is drained once per run (warm-up + repeats), never once per round of requests."""
    import openvino as ov

    calls = {"start_async": 0, "wait_all": 0}

    class SpyQueue(ov.AsyncInferQueue):
        def start_async(self, *a, **k):
            calls["start_async"] += 1
            return super().start_async(*a, **k)

        def wait_all(self):
            calls["wait_all"] += 1
            return super().wait_all()

    monkeypatch.setattr(ov, "AsyncInferQueue", SpyQueue)
    time_model("openvino", exported["openvino"], Protocol(0.05, 0.2, 2, threads=2, requests=2))
    assert calls["wait_all"] == 1 + 2 and calls["start_async"] > 20


def test_thread_pool_runner_reraises_a_failed_request():
    def boom():
        raise RuntimeError("request failed")

    r = ThreadPoolRunner([boom])
    r.start()
    with pytest.raises(RuntimeError, match="request failed"):
        r.wait_all()
    r.close()


@pytest.mark.parametrize("name", FP32_ONLY)
def test_fp32_only_engines_refuse_quantization_in_one_line(name, tmp_path, cifar_dir):
    from calib.core.sources import generate_set

    cset = generate_set("noise", 1, 0, tmp_path / "set")
    result = runner.invoke(app, ["quantize", "--model", "tiny_cnn", "--calib", str(cset), "--engine", name,
                                 "--out", str(tmp_path / "q"), "--record", str(tmp_path / "r.jsonl")])
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1 and name in result.output
    with pytest.raises(CalibError, match="no INT8"):  # and the engine itself, whatever calls it
        QuantizeSpec("tiny_cnn", Path("."), engine=name)


@pytest.mark.parametrize("suffix,content", [(".xml", "<net name='x'><layers><layer id='0'"), (".onnx", "not onnx")])
def test_evaluate_a_malformed_model_file_is_one_line(tmp_path, suffix, content):
    bad = tmp_path / f"bad{suffix}"
    bad.write_text(content)
    result = runner.invoke(app, ["evaluate", "--model", str(bad), "--record", str(tmp_path / "r.jsonl")])
    text = result.output.strip()
    # an unreadable --model is bad input, refused before any work: one line, exit code 2
    assert result.exit_code == 2 and "Traceback" not in text and len(text.splitlines()) == 1, text
    assert "not a readable" in text


def test_export_to_openvino_emits_no_torch_jit_warning(tiny):
    import warnings

    from calib.core.export import to_openvino

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        to_openvino(tiny)
    assert not [w for w in caught if "torch.jit" in str(w.message)]


@pytest.mark.slow
def test_quantize_command_prints_no_library_noise(tmp_path):
    """The whole command in a fresh process, where torch.jit's FutureWarning and the CUDA probe's log line
    would show; stdout is the JSON row, stderr holds only NNCF's progress bars."""
    import os
    import subprocess
    import sys

    from calib.core.sources import generate_set

    cset = generate_set("noise", 1, 0, tmp_path / "set")
    cmd = [sys.executable, "-m", "calib.cli", "quantize", "--model", "tiny_cnn", "--calib", str(cset),
           "--out", str(tmp_path / "q"), "--record", str(tmp_path / "r.jsonl")]
    run = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert run.returncode == 0, run.stderr
    for noise in ("Warning", "No CUDA runtime", "warnings.warn"):
        assert noise not in run.stderr and noise not in run.stdout


def _engine_name_comparisons(tree: ast.AST) -> list[str]:
    names = set(ENGINES)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                if isinstance(side, ast.Constant) and side.value in names:
                    found.append(f"line {node.lineno}: {ast.unparse(node)}")
                if isinstance(side, ast.Tuple | ast.List | ast.Set) and any(
                        isinstance(e, ast.Constant) and e.value in names for e in side.elts):
                    found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_pipeline_benchmark_and_study_never_branch_on_an_engine_name():
    cells_src = ast.parse((REPO / "calib" / "study" / "cells.py").read_text())
    mine = [n for n in cells_src.body if isinstance(n, ast.FunctionDef)
            and n.name in ("baseline_cell", "quantize_cell", "speed_only_cell")]
    assert len(mine) == 3
    found = {name: _engine_name_comparisons(ast.parse((REPO / "calib" / "core" / name).read_text()))
             for name in ("pipeline.py", "benchmark.py", "evaluate.py")}
    found["cells.py"] = [f for fn in mine for f in _engine_name_comparisons(fn)]
    assert not any(found.values()), found


def test_no_engine_reaches_back_into_benchmark_or_pipeline():
    """No import circle: engines import only the registry; nothing imports another module's private helpers."""
    files = [*sorted((REPO / "calib" / "core" / "engines").glob("*.py"))]
    files += [REPO / "calib" / "core" / f for f in ("benchmark.py", "pipeline.py", "evaluate.py", "quantize.py",
                                                 "export.py", "speed.py", "spec.py")]
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("calib.core"):
                if file.parent.name == "engines":
                    assert node.module not in ("calib.core.benchmark", "calib.core.pipeline", "calib.core.speed"), \
                        (file, node.module)
                private = [a.name for a in node.names if a.name.startswith("_")]
                same_package = file.parent.name == "engines" and node.module == "calib.core.engines"
                assert not private or same_package, (file.name, node.module, private)


@pytest.mark.parametrize("name", ["images", "x"])
def test_onnx_runtime_quantizes_a_model_whose_input_has_any_name(tmp_path, tiny, name):
    """Most exporters do not call the input `input`: ONNX Runtime's calibration feeds the graph's own name, and
    the INT8 model predicts as ONNX Runtime's FP32 session of the same file does on most images."""
    import onnxruntime as ort
    import torch

    from calib.core.engines import get_engine
    from calib.core.spec import QuantizeSpec

    fp32 = tmp_path / "net.onnx"
    torch.onnx.export(tiny, (torch.zeros(1, 3, 32, 32),), str(fp32), input_names=[name], output_names=["logits"],
                      dynamic_axes={name: {0: "batch"}}, dynamo=False)
    x = np.random.default_rng(0).normal(size=(20, 3, 32, 32)).astype(np.float32)
    int8, record = get_engine("onnxruntime").quantize(fp32, [x[:10], x[10:]], QuantizeSpec("tiny_cnn", tmp_path),
                                                       tmp_path / "q")
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [name]
    got = session.run(None, {name: x})[0].argmax(1)
    want = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, {name: x})[0].argmax(1)
    assert (got == want).mean() >= 0.8
