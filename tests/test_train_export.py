import json

import numpy as np
import pytest
import torch

from calib.core.data import LabeledImages, load_split
from calib.core.export import to_onnx, to_openvino
from calib.core.train import TrainConfig, train_model
from calib.core.zoo import create_model, list_models, study_models


def test_tiny_training_lowers_the_loss(tmp_path, cifar_dir):
    train = load_split("train", cifar_dir)
    cfg = TrainConfig("tiny_cnn", epochs=4, batch_size=64, lr=0.05, seed=0)
    summary = train_model(cfg, train, tmp_path / "run", test=load_split("test", cifar_dir), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert losses[-1] < losses[0]
    assert (tmp_path / "run" / "options.json").exists()
    assert (tmp_path / "run" / summary["file"]).exists()
    assert json.loads((tmp_path / "run" / summary["file"]).with_suffix(".json").read_text())["epochs"] == 4


def test_training_resumes_from_its_last_checkpoint(tmp_path, cifar_dir):
    train = load_split("train", cifar_dir)
    full = train_model(TrainConfig("tiny_cnn", epochs=2, batch_size=128, seed=3), train, tmp_path / "a", progress=False)
    cfg = TrainConfig("tiny_cnn", epochs=2, batch_size=128, seed=3)
    # stop after the first epoch by running a 1-epoch prefix with the same config, then resume
    train_model(cfg.__class__(**{**cfg.__dict__, "max_steps": 8}), train, tmp_path / "b", progress=False)
    state = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    state["config"] = cfg.__dict__
    torch.save(state, tmp_path / "b" / "last.pt")
    resumed = train_model(cfg, train, tmp_path / "b", progress=False)
    assert resumed["file"] == full["file"]  # same bytes -> same hash in the file name


def test_training_refuses_test_data():
    data = LabeledImages(np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, np.int64), "test")
    from calib.core.errors import CalibError

    with pytest.raises(CalibError):
        train_model(TrainConfig("tiny_cnn"), data, None)


# every family's builder once (its smallest member), the study's five and the tiny models; members of a family
# differ only in width or depth, which the state-dict tests in test_zoo.py check exactly
_FAMILY_SMALLEST = ("resnet20", "vgg11_bn", "mobilenetv2_x0_5", "shufflenetv2_x0_5", "repvgg_a0")
EXPORT_MODELS = sorted(set(study_models()) | set(_FAMILY_SMALLEST) | set(list_models("tiny*", include_tiny=True)))
EXPORT_CASES = [(n, False) for n in EXPORT_MODELS] + [(n, True) for n in ("tiny_cnn", "resnet20")]


@pytest.mark.parametrize(("name", "dynamic"), EXPORT_CASES)
def test_openvino_export_matches_pytorch(name, dynamic):
    import openvino as ov

    torch.manual_seed(0)
    model = create_model(name).eval()
    ov_model = to_openvino(model, dynamic)
    if not dynamic:  # a batch-1 export must take any batch after reshape (evaluation runs batches)
        ov_model.reshape({ov_model.input(0).get_any_name(): [3, 3, 32, 32]})
    compiled = ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(compiled(x.numpy())[0] - expected).max() < 1e-4


@pytest.mark.parametrize("name", ["tiny_cnn", "tiny_repvgg", "resnet20"])
def test_onnx_export_matches_pytorch(name, tmp_path):
    from calib.core.engines.onnxruntime import session

    torch.manual_seed(0)
    model = create_model(name).eval()
    sess = session(to_onnx(model, tmp_path / "m.onnx"))
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(sess.run(None, {"input": x.numpy()})[0] - expected).max() < 1e-4
