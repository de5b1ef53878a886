"""Input contracts and model files no code here defines, checked against outside truth: torchvision's transforms
(`Resize`, `ToTensor`, `Normalize`), OpenVINO's `PrePostProcessor`, and the model's own torch forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torchvision import transforms

from calib.core import contract as C
from calib.core import foreign
from calib.core.data import to_model_input as zoo_input
from calib.core.errors import CalibError, OptionError

SIZE = 64
CLASSES = ("cat", "dog", "fox", "owl", "yak")
# BGR input with ImageNet normalization, mean and std stated in the model's (BGR) channel order
BGR_IMAGENET = C.InputContract(C.IMAGENET_MEAN[::-1], C.IMAGENET_STD[::-1], (SIZE, SIZE), channel_order="BGR",
                               classes=CLASSES)


def images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour images (blurred noise plus a coloured blob), uint8 NHWC RGB."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (n, max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    out = torch.nn.functional.interpolate(torch.from_numpy(low).permute(0, 3, 1, 2).float(), size=(h, w),
                                          mode="bilinear", align_corners=False)
    return out.clamp(0, 255).round().byte().permute(0, 2, 3, 1).contiguous().numpy()


def torchvision_input(imgs: np.ndarray, c: C.InputContract) -> np.ndarray:
    """The reference: torchvision's own Resize, ToTensor and Normalize on PIL images (channels flipped for BGR)."""
    from PIL import Image

    to_tensor = transforms.Compose([transforms.Resize(c.input_size), transforms.ToTensor()])
    normalize = transforms.Normalize(c.mean, c.std)
    out = []
    for img in imgs:
        t = to_tensor(Image.fromarray(img))
        if c.bgr:
            t = t.flip(0)
        out.append(normalize(t).numpy())
    return np.stack(out)


def test_zoo_contract_gives_exactly_todays_inputs():
    imgs = images(6, 32, 32)
    np.testing.assert_array_equal(C.to_model_input(imgs, C.cifar10()), zoo_input(imgs))


@pytest.mark.parametrize("c", [C.InputContract((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), (SIZE, SIZE)), BGR_IMAGENET,
                               C.InputContract((0.1, 0.2, 0.3), (0.5, 0.5, 0.5), (48, 40))],
                         ids=["rgb", "bgr-imagenet", "non-square"])
def test_stated_contract_matches_torchvision(c):
    imgs = images(5, 37, 45, seed=1)  # any size: resized by the contract
    ours = C.to_model_input(imgs, c)
    ref = torchvision_input(imgs, c)
    assert ours.shape == (5, 3, *c.input_size)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    # the stated mean/std are used: another mean/std on the same images is far from the reference
    other = C.InputContract(C.cifar10().mean, C.cifar10().std, c.input_size, channel_order=c.channel_order)
    assert np.abs(C.to_model_input(imgs, other) - ref).max() > 0.1


def test_pixel_scale_one_matches_torchvision_on_raw_pixels():
    c = C.InputContract((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), (SIZE, SIZE), scale=1)
    imgs = images(3, SIZE, SIZE, seed=2)
    ref = transforms.Normalize(c.mean, c.std)(torch.from_numpy(imgs).permute(0, 3, 1, 2).float()).numpy()
    np.testing.assert_allclose(C.to_model_input(imgs, c), ref, atol=1e-5)


@pytest.mark.parametrize("c", [C.cifar10(), BGR_IMAGENET], ids=["zoo", "bgr-imagenet"])
def test_prepostprocessor_equals_the_numpy_path(c):
    import openvino as ov

    h, w = c.input_size
    x = ov.opset13.parameter([-1, 3, h, w], ov.Type.f32, name="x")
    identity = ov.Model([ov.opset13.multiply(x, np.float32(1.0))], [x])
    compiled = ov.Core().compile_model(C.embed_preprocessing(identity, c), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    imgs = images(4, h, w, seed=3)
    got = compiled(imgs)[0]
    np.testing.assert_allclose(got, C.to_model_input(imgs, c), atol=1e-5)


@pytest.mark.parametrize("bad, says", [
    (dict(std=(0.2, 0.0, 0.2)), "std must be positive"),
    (dict(mean=(0.1, 0.2)), "mean must be three finite numbers"),
    (dict(input_size=(64,)), "input size must be H W"),
    (dict(channel_order="GRB"), "channel order must be RGB or BGR"),
    (dict(scale=0.5), "pixel scale must be 1/255 or 1"),
    (dict(layout="NHWC"), "layout 'NHWC' is not supported"),
    (dict(classes=("a", "a")), "class names repeat: a"),
])
def test_bad_contract_is_one_line(bad, says):
    kwargs = dict(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(SIZE, SIZE)) | bad
    with pytest.raises(OptionError, match=says) as e:
        C.InputContract(**kwargs)
    assert "\n" not in str(e.value)


def test_card_and_options_give_the_same_contract(tmp_path):
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    card = tmp_path / "net.onnx.calib.toml"
    card.write_text('mean = [0.406, 0.456, 0.485]\nstd = [0.225, 0.224, 0.229]\ninput_size = [64, 64]\n'
                    'channel_order = "BGR"\nclasses_file = "classes.txt"\n')
    assert C.from_card(card) == BGR_IMAGENET
    assert C.find(tmp_path / "net.onnx").contract == BGR_IMAGENET  # the card beside the model
    stated = C.from_options(list(BGR_IMAGENET.mean), list(BGR_IMAGENET.std), [SIZE], bgr=True,
                            classes=tmp_path / "classes.txt")
    assert stated == BGR_IMAGENET
    card.write_text('mean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]\ninput_size = [64, 64]\nstdev = 1\n')
    with pytest.raises(OptionError, match="unknown key 'stdev'"):
        C.from_card(card)
    with pytest.raises(OptionError, match="missing --std"):
        C.from_options([0.5] * 3, None, [SIZE])


# --- models no code here defines: torchvision architectures with random weights --------------------------------

@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    """torchvision's MobileNetV3-Small, 5 classes, random weights with BatchNorm statistics settled on the
    contract's inputs (so that its logits depend on the image), saved as TorchScript."""
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(num_classes=len(CLASSES))
    net.train()
    with torch.no_grad():
        for s in range(4):
            net(torch.from_numpy(C.to_model_input(images(32, SIZE, SIZE, seed=100 + s), BGR_IMAGENET)))
    net.eval()
    path = tmp_path_factory.mktemp("mobilenet") / "net.pt"
    torch.jit.script(net).save(str(path))
    return net, path


@pytest.fixture(scope="module")
def exported(mobilenet, tmp_path_factory):
    """The same network as a torch.export archive (.pt2), batch left open."""
    net, _ = mobilenet
    path = tmp_path_factory.mktemp("exported") / "net.pt2"
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(net, (torch.zeros(2, 3, SIZE, SIZE),), dynamic_shapes=({0: batch},)),
                      str(path))
    return path


def test_torchscript_to_ir_and_onnx_follow_the_model_forward(mobilenet, tmp_path):
    import onnxruntime as ort
    import openvino as ov

    net, path = mobilenet
    model = foreign.check(foreign.open_model(path), BGR_IMAGENET)
    assert (model.kind, model.input_shape, model.classes) == ("torchscript", (3, SIZE, SIZE), len(CLASSES))
    imgs = images(12, 50, 70, seed=4)
    with torch.no_grad():
        truth = net(torch.from_numpy(torchvision_input(imgs, BGR_IMAGENET))).numpy()
    x = C.to_model_input(imgs, BGR_IMAGENET)

    xml = foreign.to_ir(model, BGR_IMAGENET, tmp_path / "fp32.xml")
    assert C.read_from_model(xml) == BGR_IMAGENET
    ir = foreign.check(foreign.open_model(xml), C.read_from_model(xml))
    assert ir.classes == len(CLASSES)
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(compiled(x)[0], truth, atol=1e-4, rtol=1e-4)
    # the same preprocessing inside the IR through OpenVINO's PrePostProcessor, fed uint8 images
    resized = C.resize(imgs, BGR_IMAGENET.input_size)
    with_ppp = ov.Core().compile_model(C.embed_preprocessing(ov.Core().read_model(str(xml)), BGR_IMAGENET), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(with_ppp(resized)[0], truth, atol=1e-4, rtol=1e-4)

    onnx_path = foreign.to_onnx(model, BGR_IMAGENET, tmp_path / "fp32.onnx")
    assert C.read_from_model(onnx_path) == BGR_IMAGENET
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x})[0], truth, atol=1e-4, rtol=1e-4)

    # the engines' own predict, at the model's input size (not the zoo's 32x32)
    from calib.core.engines import get_engine

    for engine, file in (("openvino", xml), ("onnxruntime", onnx_path)):
        preds, _ = get_engine(engine).predict(file, x, batch=5)
        np.testing.assert_array_equal(preds, truth.argmax(1))


def test_int8_agrees_with_fp32(mobilenet, tmp_path):
    from calib.core.engines import get_engine
    from calib.core.spec import QuantizeSpec

    _, path = mobilenet
    model = foreign.check(foreign.open_model(path), BGR_IMAGENET)
    xml = foreign.to_ir(model, BGR_IMAGENET, tmp_path / "fp32.xml")
    calib = C.to_model_input(images(32, 40, 40, seed=5), BGR_IMAGENET)
    engine = get_engine("openvino")
    int8, record = engine.quantize(xml, [calib[i : i + 1] for i in range(len(calib))], QuantizeSpec(str(xml), tmp_path),
                                   tmp_path / "int8")
    x = C.to_model_input(images(100, SIZE, SIZE, seed=6), BGR_IMAGENET)
    fp32_preds, _ = engine.predict(xml, x)
    int8_preds, _ = engine.predict(int8, x)
    assert (fp32_preds == int8_preds).mean() >= 0.8


def test_foreign_refusals_are_one_line(mobilenet, tmp_path):
    _, path = mobilenet
    xml = foreign.to_ir(foreign.check(foreign.open_model(path), BGR_IMAGENET), BGR_IMAGENET, tmp_path / "m.xml")
    import openvino as ov

    fixed = ov.Core().read_model(str(xml))
    fixed.reshape([1, 3, SIZE, SIZE])
    ov.save_model(fixed, str(tmp_path / "fixed.xml"), compress_to_fp16=False)
    cases = [
        (tmp_path / "fixed.xml", C.InputContract((0.5,) * 3, (0.5,) * 3, (32, 32)),
         "contract says 32x32 but the model takes 64x64"),
        (tmp_path / "fixed.xml", C.InputContract((0.5,) * 3, (0.5,) * 3, (SIZE, SIZE), classes=("a", "b", "c")),
         "3 class names but the model has 5 outputs"),
        (path, C.InputContract((0.5,) * 3, (0.5,) * 3, (SIZE, SIZE), classes=("a", "b", "c")),
         "3 class names but the model has 5 outputs"),
    ]
    for file, c, says in cases:
        with pytest.raises(CalibError, match=says) as e:
            foreign.check(foreign.open_model(file), c)
        assert "\n" not in str(e.value)
    junk = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, junk)
    (tmp_path / "model.h5").write_bytes(b"\0")
    for file in (junk, tmp_path / "model.h5"):
        with pytest.raises(CalibError, match="is not ONNX, IR, TorchScript or a torch.export archive") as e:
            foreign.open_model(file)
        assert "\n" not in str(e.value)


# --- your own image folder and calibration sources at the model's input size ------------------------------------

def write_own_tree(root, train: int = 8, test: int = 4, size: tuple[int, int] = (50, 60)):
    """A tree with the test classes' own names, images of another size than the model's."""
    from PIL import Image

    for split, n in (("train", train), ("test", test)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(images(n, *size, seed=1000 * (split == "test") + 10 * c)):
                Image.fromarray(img).save(root / split / name / f"{i:03d}.png")
    return root


def test_own_folder_splits_keep_calibration_validation_and_test_apart(tmp_path):
    from calib.core import own
    from calib.core.data import SplitConfig

    root = write_own_tree(tmp_path / "data")
    parts = own.Tree(root, BGR_IMAGENET, SplitConfig(validation_per_class=3)).parts
    assert {k: len(v) for k, v in parts.items()} == {"calibration_pool": 25, "validation": 15, "test": 20}
    assert parts["test"].images.shape[1:] == (SIZE, SIZE, 3)
    assert not set(parts["calibration_pool"].indices) & set(parts["validation"].indices)
    assert [parts[r].role for r in ("calibration_pool", "validation", "test")] == ["calibration_pool", "validation",
                                                                                  "test"]
    with pytest.raises(CalibError, match="are not the contract's class names"):
        _ = own.Tree(root, C.InputContract((0.5,) * 3, (0.5,) * 3, (SIZE, SIZE), classes=("a", "b"))).parts
    (tmp_path / "empty" / "test" / "cat").mkdir(parents=True)
    with pytest.raises(CalibError, match="holds no images"):
        own.read_labeled(tmp_path / "empty" / "test", C.InputContract((0.5,) * 3, (0.5,) * 3, (SIZE, SIZE)), "test")


def test_folder_source_refuses_test_and_validation_images(tmp_path):
    import shutil

    from calib.core import own

    root = write_own_tree(tmp_path / "data", train=120)  # 100 per class go to validation by default
    pool = tmp_path / "unlabeled"
    pool.mkdir()
    for i, img in enumerate(images(6, 30, 30, seed=77)):
        from PIL import Image

        Image.fromarray(img).save(pool / f"u{i}.png")
    tree = own.Tree(root, BGR_IMAGENET)
    got = own.make_images("folder", 4, 0, BGR_IMAGENET, pool, tree)
    assert got.shape == (4, SIZE, SIZE, 3)
    shutil.copy(root / "test" / "dog" / "001.png", pool / "renamed.png")
    with pytest.raises(CalibError, match="equal test or validation images"):
        own.make_images("folder", 7, 0, BGR_IMAGENET, pool, tree)
    with pytest.raises(CalibError, match="inside the test split"):
        own.make_images("folder", 2, 0, BGR_IMAGENET, root / "test" / "cat", tree)


@pytest.mark.parametrize("source", ["noise", "fractal", "distylegan"])
def test_sources_at_the_model_input_size(source):
    from calib.core import own

    c = C.InputContract(C.IMAGENET_MEAN[::-1], C.IMAGENET_STD[::-1], (48, 40), channel_order="BGR")
    a = own.make_images(source, 4, 3, c)
    assert a.shape == (4, 48, 40, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, own.make_images(source, 4, 3, c))  # seeded
    if source == "distylegan":  # its 32x32 images, one per class in turn, resized as the contract says
        from calib.core.sources import generate

        np.testing.assert_array_equal(a, C.resize(generate("distylegan", 1, 3).images[:4], (48, 40)))
    if source == "noise":  # N(0, 1) in the model's own normalized space, clipping aside
        x = C.to_model_input(own.make_images(source, 16, 3, c), c)
        assert abs(x.mean()) < 0.15 and 0.7 < x.std() < 1.1


@pytest.mark.slow
def test_quantize_own_model_with_no_data_then_evaluate(mobilenet, tmp_path):
    import json

    from calib.core import own

    _, path = mobilenet
    root = write_own_tree(tmp_path / "data")
    req = own.OwnRequest(path, BGR_IMAGENET, source="fractal", images=32, data_dir=root, validation_per_class=3)
    row = own.quantize_own(req, tmp_path / "run", record_path=tmp_path / "rows.jsonl")
    assert row["contract"] == BGR_IMAGENET.to_dict()
    assert json.loads((tmp_path / "run" / "options.json").read_text())["contract"] == BGR_IMAGENET.to_dict()
    assert C.read_from_model(row["int8_path"]) == C.read_from_model(row["fp32_path"]) == BGR_IMAGENET
    assert row["test_images"] == 20 and row["int8_agreement"] >= 0.8
    assert json.loads((tmp_path / "rows.jsonl").read_text().splitlines()[-1])["contract"]["channel_order"] == "BGR"


# --- one command: calib quantize --model M --source S --images N with the contract as options --------------------

def test_cli_quantize_own_model_in_one_command(mobilenet, tmp_path):
    import json

    from typer.testing import CliRunner

    from calib.cli import app

    _, path = mobilenet
    root = write_own_tree(tmp_path / "data")
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    args = ["quantize", "--model", str(path), "--source", "noise", "--images", "16", "--mean", "0.406,0.456,0.485",
            "--std", "0.225,0.224,0.229", "--input-size", "64", "--bgr", "--classes", str(tmp_path / "classes.txt"),
            "--engine", "onnxruntime", "--out", str(tmp_path / "run"), "--record", str(tmp_path / "rows.jsonl"),
            "--format", "json"]
    result = CliRunner().invoke(app, [*args, "--data-dir", str(root)])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["contract"] == BGR_IMAGENET.to_dict() and row["engine"] == "onnxruntime"
    assert row["test_images"] == 20 and row["int8_agreement"] >= 0.8
    assert C.read_from_model(tmp_path / "run" / "fp32.onnx") == BGR_IMAGENET
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["contract"] == BGR_IMAGENET.to_dict()
    # calib evaluate reads the contract from the INT8 file itself and the classes from the user's folders
    result = CliRunner().invoke(app, ["evaluate", "--model", row["int8_path"], "--data-dir", str(root), "--record",
                                      str(tmp_path / "rows.jsonl"), "--format", "json"])
    assert result.exit_code == 0, result.output
    ev = json.loads(result.stdout)
    assert ev["images"] == 20 and ev["contract"] == BGR_IMAGENET.to_dict()
    assert ev["accuracy"] == pytest.approx(row["int8_accuracy"])
    # calib benchmark files times both at the model's own 64x64 input, the contract read from each file
    result = CliRunner().invoke(app, ["benchmark", "files", row["fp32_path"], row["int8_path"], "--duration", "0.5",
                                      "--record", str(tmp_path / "rows.jsonl"), "--format", "json"])
    assert result.exit_code == 0, result.output
    timed = json.loads(result.stdout)
    assert [t["file"] for t in timed] == [row["fp32_path"], row["int8_path"]] and timed[0]["vs_first"] == 1.0
    assert all(t["contract"] == BGR_IMAGENET.to_dict() and t["model_fps"] > 0 for t in timed)


def test_cli_own_model_refusals_exit_2_in_one_line(mobilenet, tmp_path):
    from typer.testing import CliRunner

    from calib.cli import app

    _, path = mobilenet
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    (tmp_path / "few.txt").write_text("a\nb\nc\n")
    stated = ["--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"]
    cases = [
        (["--model", str(path), *stated, "--input-size", "64"], "needs --source"),
        (["--model", str(path), "--source", "noise", "--mean", "0.5,0.5", "--std", "0.5,0.5,0.5", "--input-size",
          "64"], "mean must be three"),
        (["--model", str(path), "--source", "noise", *stated], "missing --input-size"),
        (["--model", str(path), "--source", "noise", *stated, "--input-size", "64", "--classes",
          str(tmp_path / "few.txt")], "3 class names but the model has 5 outputs"),
        (["--model", str(path), "--source", "noise", *stated, "--input-size", "64", "--calib", "SET"],
         "--calib is for zoo models and --calib sets only"),
        (["--model", str(path), "--source", "noise"], "no input contract"),
        (["--model", str(tmp_path / "junk.onnx"), "--source", "noise", *stated, "--input-size", "64"],
         "is not a readable ONNX file"),
        (["--model", str(path), "--source", "folder", *stated, "--input-size", "64"], "--folder DIR"),
        (["--model", "resnet20", "--source", "noise"], "a zoo model takes --calib SET"),
        (["--model", str(path), "--source", "noise", *stated, "--input-size", "64", "--algo", "accuracy-aware"],
         "validates on your labeled images: give --data-dir ROOT"),
        (["--model", str(path), "--source", "noise", *stated, "--input-size", "64", "--algo", "accuracy-aware",
          "--engine", "onnxruntime", "--data-dir", str(tmp_path)], "--algo accuracy-aware is NNCF's"),
        (["--model", str(path), "--source", "noise", *stated, "--input-size", "64", "--max-drop", "0.01"],
         "--max-drop goes with --algo accuracy-aware"),
    ]
    for args, says in cases:
        result = CliRunner().invoke(app, ["quantize", *args, "--out", str(tmp_path / "run")])
        err = result.stderr.strip()
        assert result.exit_code == 2 and len(err.splitlines()) == 1 and says in err, (args, result.output)
        assert not (tmp_path / "run").exists()


def test_inversion_of_any_model_with_batchnorm(mobilenet, exported):
    from calib.core import own

    net, path = mobilenet
    a, info = own.invert(net, BGR_IMAGENET, 6, seed=1, iterations=8, batch_size=6)
    assert a.shape == (6, SIZE, SIZE, 3) and a.dtype == np.uint8
    assert info["bn_loss_uint8"] < info["bn_loss_start"]
    np.testing.assert_array_equal(a, own.invert(net, BGR_IMAGENET, 6, seed=1, iterations=8, batch_size=6)[0])
    # a torch.export graph keeps no BatchNorm modules, only batch-norm calls: the same images, byte for byte
    graph = foreign.load_module(foreign.check(foreign.open_model(exported), BGR_IMAGENET))
    np.testing.assert_array_equal(a, own.invert(graph, BGR_IMAGENET, 6, seed=1, iterations=8, batch_size=6)[0])
    no_bn = torchvision.models.squeezenet1_1(num_classes=len(CLASSES))
    for model, says in ((no_bn, "needs BatchNorm2d layers, and this model has none"),
                        (foreign.load_torchscript(path), "a TorchScript module takes no BatchNorm hooks")):
        with pytest.raises(CalibError, match=says) as e:
            own.invert(model, BGR_IMAGENET, 2, seed=0, iterations=1)
        assert "\n" not in str(e.value)


def test_engines_time_a_model_at_its_own_input_size(tmp_path):
    from calib.core.engines import Protocol
    from calib.core.speed import time_model

    # a flatten-and-linear head takes 64x64 only (MobileNet's adaptive pooling would take the zoo's 32x32 too)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 16 * 16, len(CLASSES))).eval()
    torch.jit.script(net).save(str(tmp_path / "fixed.pt"))
    model = foreign.check(foreign.open_model(tmp_path / "fixed.pt"), BGR_IMAGENET)
    quick = Protocol(warmup_s=0.05, duration_s=0.1, repeats=1, threads=1)
    for engine, file in (("openvino", foreign.to_ir(model, BGR_IMAGENET, tmp_path / "m.xml")),
                         ("onnxruntime", foreign.to_onnx(model, BGR_IMAGENET, tmp_path / "m.onnx"))):
        row = time_model(engine, file, quick)  # random inputs at 64x64: the zoo's 32x32 would not match a fixed IR
        assert row["fps_throughput_median"] > 0 and row["fps_latency_median"] > 0


@pytest.mark.slow
def test_cli_quantize_own_exported_model_from_its_own_batchnorm_statistics(mobilenet, exported, tmp_path):
    """`calib quantize --model M.pt2 --source inversion`: no data at all; the IR follows the module's forward."""
    import json

    import openvino as ov
    from typer.testing import CliRunner

    from calib.cli import app

    net, script = mobilenet
    root = write_own_tree(tmp_path / "data")
    stated = ["--mean", "0.406,0.456,0.485", "--std", "0.225,0.224,0.229", "--input-size", "64", "--bgr"]
    result = CliRunner().invoke(app, ["quantize", "--model", str(exported), "--source", "inversion", "--images", "8",
                                      *stated, "--data-dir", str(root), "--out", str(tmp_path / "run"), "--record",
                                      str(tmp_path / "rows.jsonl"), "--format", "json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["images"] == 8 and row["inversion"]["bn_loss_uint8"] < row["inversion"]["bn_loss_start"]
    assert row["test_images"] == 20 and row["int8_agreement"] >= 0.5
    x = C.to_model_input(images(5, SIZE, SIZE, seed=9), BGR_IMAGENET)
    with torch.no_grad():
        truth = net(torch.from_numpy(x)).numpy()
    ir = ov.Core().compile_model(row["fp32_path"], "CPU")(x)[0]
    np.testing.assert_allclose(ir, truth, rtol=1e-3, atol=1e-3)
    for model, says in ((script, "a TorchScript module takes no BatchNorm hooks"),):
        result = CliRunner().invoke(app, ["quantize", "--model", str(model), "--source", "inversion", *stated,
                                          "--out", str(tmp_path / "refused")])
        assert result.exit_code == 2 and says in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "refused").exists()


# --- accuracy-aware quantization and diagnose for your own model ------------------------------------------------

def write_val(root, n: int = 3, size: tuple[int, int] = (50, 60)):
    """`<root>/val/<class>/*`: the model's own held-out images, none equal to a test image."""
    from PIL import Image

    for c, name in enumerate(CLASSES):
        (root / "val" / name).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images(n, *size, seed=500 + c)):
            Image.fromarray(img).save(root / "val" / name / f"{i:03d}.png")
    return root


def read_tree(folder) -> tuple[np.ndarray, np.ndarray]:
    """`<folder>/<class>/*.png` as torchvision inputs and labels, in the contract's class order, read by PIL."""
    from PIL import Image

    imgs, labels = [], []
    for c, name in enumerate(CLASSES):
        for f in sorted((folder / name).glob("*.png")):
            imgs.append(np.asarray(Image.open(f).convert("RGB")))
            labels.append(c)
    return torchvision_input(np.stack(imgs), BGR_IMAGENET), np.asarray(labels)


def test_own_validation_is_val_where_it_exists_and_never_a_test_image(tmp_path):
    import shutil

    from calib.core import own

    root = write_val(write_own_tree(tmp_path / "data"))
    tree = own.Tree(root, BGR_IMAGENET)
    assert {k: len(v) for k, v in tree.parts.items()} == {"validation": 15, "calibration_pool": 40, "test": 20}
    assert "held out by you" in tree.validation_from
    shutil.copy(root / "test" / "dog" / "001.png", root / "val" / "dog" / "copy.png")
    with pytest.raises(CalibError, match="validation image.* equal test images"):
        _ = own.Tree(root, BGR_IMAGENET).parts


def test_own_tree_reads_train_only_when_a_step_needs_it(tmp_path):
    """A default run with a tree needs only its test images: a train/ it cannot read (here, other class names)
    is not read at all, while the steps that need validation refuse it."""
    import shutil

    from calib.core import own

    root = write_own_tree(tmp_path / "data")
    shutil.move(root / "train" / "dog", root / "train" / "wolf")
    tree = own.Tree(root, BGR_IMAGENET)
    assert len(tree.test) == 20 and "parts" not in tree.__dict__
    with pytest.raises(CalibError, match="are not the contract's class names"):
        tree.validation("accuracy-aware quantization needs validation images")


@pytest.mark.slow
def test_accuracy_aware_own_model_equals_nncf_called_directly(mobilenet, tmp_path):
    """The own-model path's accuracy-aware INT8 model predicts exactly as NNCF's own
    `quantize_with_accuracy_control` does on the same FP32 IR, with validation and test inputs made by
    torchvision's transforms from the files on disk."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    from calib.core import own

    _, path = mobilenet
    root = write_val(write_own_tree(tmp_path / "data"))
    req = own.OwnRequest(path, BGR_IMAGENET, source="fractal", images=16, data_dir=root, algo="accuracy-aware",
                         max_drop=0.01)
    row = own.quantize_own(req, tmp_path / "run")
    assert row["algo"] == "accuracy-aware" and row["validation_images"] == 15 and row["test_images"] == 20
    assert "val" in row["validation_from"] and row["quantize"]["validation_role"] == "validation"

    val_x, val_y = read_tree(root / "val")
    test_x, _ = read_tree(root / "test")
    calib_x = torchvision_input(own.make_images("fractal", 16, 0, BGR_IMAGENET), BGR_IMAGENET)

    def validate(compiled, items):
        correct = [float(np.argmax(compiled(x)[0]) == y) for x, y in items]
        return float(np.mean(correct)), correct

    int8 = nncf.quantize_with_accuracy_control(
        ov.Core().read_model(row["fp32_path"]), nncf.Dataset([calib_x[i : i + 1] for i in range(16)]),
        nncf.Dataset([(val_x[i : i + 1], int(val_y[i])) for i in range(len(val_y))]), validate, max_drop=0.01,
        subset_size=16, preset=nncf.QuantizationPreset.PERFORMANCE, target_device=nncf.TargetDevice.CPU,
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(ranking_subset_size=15))
    core = ov.Core()
    theirs = core.compile_model(int8, "CPU")(test_x)[0]
    ours = core.compile_model(row["int8_path"], "CPU")(test_x)[0]
    np.testing.assert_array_equal(ours.argmax(1), theirs.argmax(1))
    assert row["quantize"]["aa_fp32_validation_accuracy"] == pytest.approx(
        validate(core.compile_model(row["fp32_path"], "CPU"), zip(val_x[:, None], val_y))[0])


@pytest.mark.slow
def test_cli_diagnose_own_model_on_its_validation_images_by_its_contract(mobilenet, tmp_path):
    """The first quantizer reads the model input: its measured value range equals the range of torchvision's
    Resize + ToTensor + Normalize of the validation files (BGR, ImageNet statistics), so the contract is used."""
    import json

    from typer.testing import CliRunner

    from calib.cli import app

    _, path = mobilenet
    root = write_val(write_own_tree(tmp_path / "data"))
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    stated = ["--mean", "0.406,0.456,0.485", "--std", "0.225,0.224,0.229", "--input-size", "64", "--bgr",
              "--classes", str(tmp_path / "classes.txt")]
    result = CliRunner().invoke(app, ["diagnose", "--model", str(path), "--source", "fractal", "--images", "16",
                                      *stated, "--data-dir", str(root), "--out", str(tmp_path / "diag"), "--record",
                                      str(tmp_path / "rows.jsonl")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "diag" / "rows.jsonl").read_text().splitlines()]
    assert len(rows) > 10 and {r["reference"] for r in rows} == {"validation"}
    assert {r["reference_images"] for r in rows} == {15} and rows[0]["contract"] == BGR_IMAGENET.to_dict()
    first = next(r for r in rows if r["index"] == 0)
    val_x, _ = read_tree(root / "val")
    assert first["ref_min"] == pytest.approx(val_x.min(), abs=1e-5)
    assert first["ref_max"] == pytest.approx(val_x.max(), abs=1e-5)
    # an ONNX file (which calib would quantize with ONNX Runtime) is diagnosed through OpenVINO, its contract
    # read from the file itself
    onnx_file = foreign.to_onnx(foreign.check(foreign.open_model(path), BGR_IMAGENET), BGR_IMAGENET,
                                tmp_path / "net.onnx")
    result = CliRunner().invoke(app, ["diagnose", "--model", str(onnx_file), "--source", "noise", "--images", "8",
                                      "--data-dir", str(root), "--out", str(tmp_path / "diag-onnx"), "--record",
                                      str(tmp_path / "rows.jsonl")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "diag-onnx" / "rows.jsonl").read_text().count("\n") == len(rows)
    for args, says in ((["--reference", "test", "--data-dir", str(root)], "never looks at the test split"),
                       ([], "give --data-dir ROOT"),
                       (["--reference", str(root / "test" / "cat"), "--data-dir", str(root)], "inside the test split"),
                       (["--data-dir", str(root), "--calib", "SET"], "--calib is for zoo models and --calib sets")):
        result = CliRunner().invoke(app, ["diagnose", "--model", str(path), "--source", "fractal", *stated, *args,
                                          "--out", str(tmp_path / "refused")])
        assert result.exit_code == 2 and says in result.stderr and len(result.stderr.strip().splitlines()) == 1, \
            (args, result.output)
        assert not (tmp_path / "refused").exists()


def test_source_auto_tries_every_data_free_source_and_keeps_the_lowest_estimate(mobilenet, tmp_path):
    """--source auto: each data-free source quantizes into its own folder; the one kept has the lowest estimate
    (without a fit, the lowest probe KL); a source this file cannot take (inversion of a TorchScript file) is
    listed with its reason, not fatal."""
    import json

    from typer.testing import CliRunner

    from calib.cli import app
    from calib.core.own import DATA_FREE, choice_key
    from tests.conftest import TEST_PROBE_PER_CLASS

    _, path = mobilenet
    args = ["quantize", "--model", str(path), "--source", "auto", "--images", "8", "--mean", "0.406,0.456,0.485",
            "--std", "0.225,0.224,0.229", "--input-size", "64", "--bgr", "--engine", "onnxruntime",
            "--out", str(tmp_path / "run"), "--record", str(tmp_path / "rows.jsonl"), "--format", "json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    choice = json.loads((tmp_path / "run" / "choice.json").read_text())
    assert [t["source"] for t in choice["tries"]] == list(DATA_FREE) == [t["source"] for t in row["choice"]]
    ran = [t for t in choice["tries"] if not t.get("error")]
    assert len(ran) == 3 and all(0 <= t["probe_flip"] <= 1 and t["probe_kl"] >= 0 for t in ran)
    assert "inversion" in {t["source"] for t in choice["tries"] if t.get("error")}
    assert choice["chosen"] == row["source"] == min(ran, key=choice_key)["source"]
    assert (tmp_path / "run" / row["source"] / "int8.onnx").is_file()
    assert row["probe_images"] == 10 * TEST_PROBE_PER_CLASS
