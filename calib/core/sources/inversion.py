"""Data-free images inverted from the target model's own BatchNorm statistics (DeepInversion-style).

Images are optimized in normalized space so that the mean and variance of every BatchNorm layer's *input*
match that layer's running statistics (inputs, not conv outputs, so RepVGG's identity-branch BNs count),
with cross-entropy toward each image's class, total-variation and L2 priors, random jitter and flips.
Images are kept inside the valid pixel range at every step; the result is de-normalized and rounded
to uint8, and the BN loss is measured again on those uint8 images, since that is what calibration sees.

With a `contract` (your own model's `calib.core.contract.InputContract`), `model` is your model's file (a
`torch.export` archive, or any `nn.Module` through `invert_module`) and the images are made at the contract's
size, in its normalized space, channel order and pixel scale, without class targets (its classes may be
anything): the same optimizer, loss and batch plan as for the zoo.

The batch is the unit of generation: a batch is optimized jointly against its own statistics, so an image
depends on its batch-mates. Batches follow from `(per_class, batch_size)` alone (`batch_plan`); a batch's
initial noise comes from its images' seeds and its jitter stream from its first image's seed. The set's
manifest records every effective option, the batches and the weights' sha256, which is all `regenerate`
needs to remake any image, byte for byte, from the seed in its file name (same torch build and CPU kernels,
also recorded; the thread count does not matter).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from calib.core.data import MEAN, STD, from_model_input, to_model_input
from calib.core.errors import CalibError, OptionError
from calib.core.sources import Generated, balanced_labels, image_seed, register_source

if TYPE_CHECKING:
    from calib.core.contract import InputContract

# Settings before the speed-up (issue: 1.01 s/image measured at 400 iterations, batch 20); kept for benchmarks.
OLD_DEFAULTS = {"iterations": 1000, "batch_size": 100, "lr": 0.1, "channels_last": False}
DEFAULTS = {"iterations": 100, "batch_size": 100, "lr": 0.25}
INITS = ("noise", "fractal", "distylegan")  # what the images start from


def bn_mismatch(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor) -> torch.Tensor:
    """How far one batch of a BatchNorm layer's 4-D input is from the layer's running statistics: the norms of
    the per-channel mean and variance differences."""
    if x.is_contiguous(memory_format=torch.channels_last):  # (N*H*W, C) is a view: reduce along rows
        x = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        mean, mean_sq = x.mean(0), (x * x).mean(0)
    else:
        mean, mean_sq = x.mean((0, 2, 3)), (x * x).mean((0, 2, 3))
    var = mean_sq - mean * mean  # E[x^2] - E[x]^2: half the backward cost of torch.var_mean here
    return torch.linalg.vector_norm(mean - running_mean) + torch.linalg.vector_norm(var - running_var)


class _BNTerms:
    """What both BatchNorm-statistics losses share: `run(x)` is the model's forward, during which each BatchNorm
    input adds its mismatch (`bn_mismatch`) to `terms`; `value()` sums and clears them."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.terms: list[torch.Tensor] = []

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def value(self) -> torch.Tensor:
        total = torch.stack(self.terms).sum()
        self.terms.clear()
        return total

    def remove(self) -> None:
        """Leave the model as it was."""


class BNStatsLoss(_BNTerms):
    """Hooks on every BatchNorm2d module's input."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.handles = [m.register_forward_pre_hook(self._hook) for m in model.modules()
                        if isinstance(m, nn.BatchNorm2d)]
        if not self.handles:
            raise CalibError("model has no BatchNorm2d layers to invert")

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple[torch.Tensor]) -> None:
        self.terms.append(bn_mismatch(inputs[0], module.running_mean, module.running_var))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _batch_norm_ops() -> tuple:
    return (torch.ops.aten.batch_norm.default, torch.ops.aten._native_batch_norm_legit_no_training.default)


class _Record(nn.Module):
    """Inserted before each batch-norm call of a graph: adds that call's mismatch to the owner's terms."""

    def __init__(self, terms: list[torch.Tensor]):
        super().__init__()
        self.terms = terms

    def forward(self, x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor) -> None:
        if x.ndim == 4:
            self.terms.append(bn_mismatch(x, running_mean, running_var))


def _graph_batch_norms(graph: torch.fx.GraphModule) -> list:
    return [n for n in graph.graph.nodes if n.op == "call_function" and n.target in _batch_norm_ops()]


class GraphBNStats(_BNTerms):
    """The same loss for a `torch.export` graph, whose BatchNorm layers are calls rather than modules: a copy of
    the graph (made once) records each batch-norm call's 4-D input against its running statistics."""

    def __init__(self, graph: torch.fx.GraphModule):
        import copy

        super().__init__(copy.deepcopy(graph))
        self.model.add_submodule("_bn_record", _Record(self.terms))
        calls = _graph_batch_norms(self.model)
        if not calls:
            raise CalibError("model has no BatchNorm2d layers to invert")
        for node in calls:
            with self.model.graph.inserting_before(node):
                self.model.graph.call_module("_bn_record", (node.args[0], node.args[3], node.args[4]))
        self.model.recompile()


def _is_graph(model: nn.Module) -> bool:
    return isinstance(model, torch.fx.GraphModule) and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def has_batch_norm(model: nn.Module) -> bool:
    """Whether inversion has statistics to match: BatchNorm2d modules, or batch-norm calls of an exported graph."""
    return bool(_graph_batch_norms(model)) if _is_graph(model) else any(
        isinstance(m, nn.BatchNorm2d) for m in model.modules())


def check_invertible(module) -> None:
    """One line unless inversion can run on `module`: a Python module or a torch.export graph with BatchNorm."""
    if isinstance(module, torch.jit.ScriptModule):
        raise OptionError("inversion needs the model as a Python nn.Module: a TorchScript module takes no "
                          "BatchNorm hooks (save it with torch.export.save as .pt2 instead)")
    if not has_batch_norm(module):
        raise OptionError("inversion needs BatchNorm2d layers, and this model has none; use --source fractal")


def bn_statistics(model: nn.Module) -> _BNTerms:
    """The BatchNorm-statistics loss of `model`: hooks on its BatchNorm2d modules, or the batch-norm calls of a
    `torch.export` graph (which keeps no BatchNorm modules)."""
    return GraphBNStats(model) if _is_graph(model) else BNStatsLoss(model)


def to_normalized(pixels: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def _model_input(images_u8: np.ndarray, contract: InputContract | None) -> torch.Tensor:
    """uint8 NHWC RGB images as the model's input: the zoo's normalization, or the contract's."""
    if contract is None:
        return torch.from_numpy(to_model_input(images_u8))
    from calib.core.contract import to_model_input as by_contract

    return torch.from_numpy(by_contract(images_u8, contract))


@torch.no_grad()
def bn_loss_of(model: nn.Module | _BNTerms, images_u8: np.ndarray, contract: InputContract | None = None) -> float:
    """BN-statistics distance of a batch of uint8 images under `model` (eval mode), or under its loss already
    built (`bn_statistics`); made model inputs by `contract`, else the zoo's normalization."""
    hooks = model if isinstance(model, _BNTerms) else bn_statistics(model)
    try:
        hooks.run(_model_input(images_u8, contract))
        return float(hooks.value())
    finally:
        if hooks is not model:
            hooks.remove()


def pixel_bounds(contract: InputContract | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The valid pixel range (black, white) in the normalized input space, per channel, shaped (1, 3, 1, 1)."""
    if contract is None:
        return to_normalized(torch.zeros(1, 3, 1, 1)), to_normalized(torch.ones(1, 3, 1, 1))
    mean = torch.tensor(contract.mean).view(1, 3, 1, 1)
    std = torch.tensor(contract.std).view(1, 3, 1, 1)
    top = 255.0 if contract.scale == 1.0 else 1.0
    return (0 - mean) / std, (top - mean) / std


def to_pixels(x: torch.Tensor, contract: InputContract | None) -> np.ndarray:
    """Normalized model inputs back to uint8 NHWC RGB images (the zoo's normalization, or the contract's)."""
    if contract is None:
        pixels = from_model_input(x).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        return np.rint(pixels * 255).astype(np.uint8)
    mean = torch.tensor(contract.mean).view(1, 3, 1, 1)
    std = torch.tensor(contract.std).view(1, 3, 1, 1)
    pixels = (x * std + mean) * (255.0 if contract.scale != 1.0 else 1.0)
    if contract.bgr:
        pixels = pixels.flip(1)
    return pixels.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def batch_plan(per_class: int, batch_size: int, num_classes: int = 10) -> list[np.ndarray]:
    """Image indices of each batch. Classes are interleaved so that every batch mixes them, as the BN
    statistics were gathered on mixed batches; the plan depends on nothing but its arguments."""
    order = np.argsort(np.arange(per_class * num_classes) % per_class, kind="stable")
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def optimize_inputs(model: nn.Module | _BNTerms, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, seed: int,
                    iterations: int, lr: float, w_bn: float, w_tv: float, w_l2: float, jitter: int = 2,
                    labels: np.ndarray | None = None, w_ce: float = 0.0) -> tuple[torch.Tensor, float, float]:
    """Adam on the normalized inputs `x` (a leaf that requires grad) toward the BatchNorm statistics of `model`,
    with total-variation and L2 priors, cross-entropy toward `labels` where given, jitter and flips drawn from
    `seed`; `x` stays inside [lo, hi] (the valid pixel range) at every step. Returns (x, BN loss at the first
    step, BN loss of the final float inputs). `model` may be its loss already (`bn_statistics`), to build that
    once for many batches."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.from_numpy(labels) if labels is not None else None
    opt = torch.optim.Adam([x], lr=lr, betas=(0.5, 0.9))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
    hooks = model if isinstance(model, _BNTerms) else bn_statistics(model)
    first_bn = None
    try:
        for _ in range(iterations):
            dx, dy = torch.randint(-jitter, jitter + 1, (2,), generator=gen).tolist()
            inp = torch.roll(x, (dx, dy), (2, 3))
            if torch.rand(1, generator=gen).item() < 0.5:
                inp = inp.flip(3)
            logits = hooks.run(inp)
            bn = hooks.value()
            first_bn = bn.item() if first_bn is None else first_bn
            loss = w_bn * bn
            if y is not None:
                loss = loss + w_ce * nn.functional.cross_entropy(logits, y)
            loss = loss + w_tv * total_variation(x) + w_l2 * x.pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():  # stay inside the valid pixel range, so that saving loses only rounding
                x.copy_(torch.maximum(torch.minimum(x, hi), lo))
        with torch.no_grad():
            hooks.run(x)
            last_bn = float(hooks.value())
    finally:
        if hooks is not model:
            hooks.remove()
    return x, first_bn, last_bn


def invert_batch(model: nn.Module, labels: np.ndarray | None, seeds: list[int], iterations: int, lr: float,
                 w_bn: float, w_ce: float, w_tv: float, w_l2: float, jitter: int = 2,
                 start: np.ndarray | None = None, channels_last: bool = False, contract: InputContract | None = None,
                 stats: _BNTerms | None = None) -> tuple[np.ndarray, dict]:
    """One batch, optimized jointly: initial noise from each image's seed (or `start`, uint8 images), jitter and
    flips from `seeds[0]`. `channels_last` makes the BN-statistics reductions contiguous (ResNet20: 1.6x
    faster per step on 2 cores). With `contract`, at its input size and in its normalized space; `labels` None:
    no class targets. `stats`: the model's loss built once (`bn_statistics`) for many batches."""
    net = stats.model if stats is not None else model  # what runs: a graph's loss runs an instrumented copy
    if not isinstance(net, torch.fx.GraphModule):  # an exported graph is fixed in the mode it was exported in
        net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    shape = contract.shape if contract is not None else (3, 32, 32)
    if start is None:
        x = torch.stack([torch.randn(*shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    else:
        x = _model_input(start, contract)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net.to(memory_format=fmt)
    x = x.contiguous(memory_format=fmt).requires_grad_(True)
    lo, hi = pixel_bounds(contract)
    loss = stats if stats is not None else model
    x, first_bn, last_bn = optimize_inputs(loss, x, lo, hi, seeds[0], iterations, lr, w_bn, w_tv, w_l2, jitter,
                                           labels=labels, w_ce=w_ce)
    images = to_pixels(x.detach(), contract)
    return images, {"bn_loss_start": first_bn, "bn_loss_float": last_bn,
                    "bn_loss_uint8": bn_loss_of(loss, images, contract)}


def _step_options(opts: dict) -> dict:
    return {k: v for k, v in opts.items() if k not in ("batch_size", "init")}


def _start_images(init: str, per_class: int, seed: int,
                  contract: InputContract | None = None) -> tuple[np.ndarray | None, dict]:
    """Starting images: noise (None), or another source's set with the same per-class count and seed, so that
    image i starts from that source's image i (which has the same seed); at the contract's size where given."""
    if init == "noise":
        return None, {}
    if init not in INITS:
        raise CalibError(f"inversion init must be one of {', '.join(INITS)}, not {init!r}")
    from calib.core.sources import generate

    g = generate(init, per_class, seed)
    images = g.images
    if contract is not None:
        from calib.core.contract import resize

        images = resize(images, contract.input_size)
    return images, {"source": init, **{k: v for k, v in g.extra.items() if "sha256" in k or "checkpoint" in k}}


def _load(model: str, weights: Path | None) -> tuple[nn.Module, Path | None]:
    from calib.core.weights import load_model, resolve_weights

    path = resolve_weights(model, weights) if weights is not None or not model.startswith("tiny") else None
    return load_model(model, path, fuse=False, pretrained=path is not None), path  # unfused: keep every BN


def invert_module(net: nn.Module, per_class: int, seed: int, opts: dict, contract: InputContract | None = None,
                  init: str = "noise", progress: Callable[[int, int], None] | None = None
                  ) -> tuple[np.ndarray, np.ndarray, list[str], list[dict], dict]:
    """Every batch of `batch_plan(per_class, opts["batch_size"])` inverted from `net` (`invert_batch`, with the
    step options of `opts`): class targets for the zoo, none with a `contract` (at its size and normalization).
    Returns the images, labels and ids in class order, each batch's ids and BN losses, and the start's
    provenance."""
    labels = balanced_labels(per_class)
    seeds = [image_seed(seed, i) for i in range(len(labels))]
    start, start_extra = _start_images(init, per_class, seed, contract)
    h, w = contract.input_size if contract is not None else (32, 32)
    images = np.empty((len(labels), h, w, 3), np.uint8)
    batches: list[dict] = []
    stats = bn_statistics(net) if contract is not None else None  # once: for a graph it is an instrumented copy
    try:
        for idx in batch_plan(per_class, opts["batch_size"]):
            imgs, st = invert_batch(net, labels[idx] if contract is None else None, [seeds[i] for i in idx],
                                    **_step_options(opts), start=None if start is None else start[idx],
                                    contract=contract, stats=stats)
            images[idx] = imgs
            batches.append({"ids": [f"{seeds[i]:010d}" for i in idx], **st})
            if progress is not None:
                progress(sum(len(b["ids"]) for b in batches), len(labels))
    finally:
        if stats is not None:
            stats.remove()
    return images, labels, [f"{s:010d}" for s in seeds], batches, start_extra


def _load_own(path: Path) -> nn.Module:
    """Your own model's PyTorch module from its file, refused in one line where it cannot be inverted."""
    from calib.core import foreign

    net = foreign.load_module(foreign.open_model(Path(path)))
    check_invertible(net)
    return net


@register_source("inversion", pinned=True)
def inversion(per_class: int, seed: int, model: str = "resnet20", weights: Path | None = None,
              iterations: int = DEFAULTS["iterations"], batch_size: int = DEFAULTS["batch_size"],
              lr: float = DEFAULTS["lr"], w_bn: float = 1.0, w_ce: float = 1.0, w_tv: float = 1e-3,
              w_l2: float = 1e-4, init: str = "noise", channels_last: bool = True,
              contract: InputContract | None = None,
              progress: Callable[[int, int], None] | None = None) -> Generated:
    """Class-conditional images optimized to match the model's BatchNorm running statistics; with `contract`,
    your own model's file (`model`) inverted at the contract's size and normalization, without class targets."""
    from calib.core.weights import file_sha256, weights_provenance

    if iterations < 1 or batch_size < 1 or lr <= 0:
        raise CalibError("inversion needs iterations >= 1, batch_size >= 1 and lr > 0")
    if contract is None:
        net, path = _load(model, weights)
        provenance = {"model": model, "weights": str(path) if path else "random", **weights_provenance(path)}
    else:
        if weights is not None:
            raise CalibError("inversion of your own model file takes no weights: the file holds them")
        net, w_ce = _load_own(Path(model)), 0.0  # your classes are not CIFAR-10's: no class targets
        provenance = {"model": str(model), "model_sha256": file_sha256(Path(model)), "contract": contract.to_dict()}
    opts = {"iterations": iterations, "batch_size": batch_size, "lr": lr, "w_bn": w_bn, "w_ce": w_ce,
            "w_tv": w_tv, "w_l2": w_l2, "init": init, "channels_last": channels_last}
    images, labels, ids, batches, start_extra = invert_module(net, per_class, seed, opts, contract, init, progress)
    rebuild = {"unit": "batch", "needs": "options in 'inversion', 'batches', 'weights_sha256', this torch build",
               "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    extra = {**provenance, "inversion": opts, "init_source": start_extra, "regenerate": rebuild, "batches": batches}
    return Generated(images, labels, ids, extra=extra)


def regenerate(set_dir: Path, ids: list[str]) -> dict[str, np.ndarray]:
    """Remake images of an inversion set from its manifest alone: each id's seed gives its index, the
    recorded batches its batch-mates, and the recorded options and weight hash everything else; with the
    pinned kernels where the set was made with them (`calib.core.pinned`)."""
    from calib.core.pinned import call_pinned

    manifest = json.loads((Path(set_dir) / "manifest.json").read_text())
    if "kernels" in manifest:
        return call_pinned(_regenerate, Path(set_dir), list(ids))
    return _regenerate(Path(set_dir), list(ids))


def _regenerate(set_dir: Path, ids: list[str]) -> dict[str, np.ndarray]:
    from calib.core.weights import file_sha256

    manifest = json.loads((Path(set_dir) / "manifest.json").read_text())
    if manifest.get("source") != "inversion" or "inversion" not in manifest:
        raise CalibError(f"{set_dir} is not an inversion set with recorded options (made before they were kept?)")
    seed, per_class = manifest["seeds"]["set"], manifest["options"]["per_class"]
    opts = manifest["inversion"]
    batches = [b["ids"] for b in manifest["batches"]]
    planned = [[f"{image_seed(seed, i):010d}" for i in idx] for idx in batch_plan(per_class, opts["batch_size"])]
    if batches != planned:
        raise CalibError(f"{set_dir}: recorded batches differ from the batch plan of its options")
    path = None if manifest["weights"] == "random" else Path(manifest["weights"])
    if path is not None and (not path.is_file() or file_sha256(path) != manifest["weights_sha256"]):
        from calib.core.weights import resolve_weights

        path = resolve_weights(manifest["model"])
        if file_sha256(path) != manifest["weights_sha256"]:
            raise CalibError(f"no weight file with sha256 {manifest['weights_sha256'][:12]}... for {manifest['model']}")
    net, _ = _load(manifest["model"], path)
    labels = balanced_labels(per_class)
    index = {f"{image_seed(seed, i):010d}": i for i in range(len(labels))}
    wanted, out = set(ids), {}
    unknown = wanted - {i for b in batches for i in b}
    if unknown:
        raise CalibError(f"{set_dir} has no images {sorted(unknown)[:3]}")
    start, _ = _start_images(opts.get("init", "noise"), per_class, seed)
    for batch in batches:
        if wanted & set(batch):
            idx = [index[i] for i in batch]
            imgs, _ = invert_batch(net, labels[idx], [image_seed(seed, i) for i in idx], **_step_options(opts),
                                   start=None if start is None else start[idx])
            out.update({i: img for i, img in zip(batch, imgs) if i in wanted})
    return out


def verify_regeneration(set_dir: Path, ids: list[str]) -> list[str]:
    """Ids whose regenerated PNG differs, byte for byte, from the file in the set (empty: all reproduced)."""
    import io

    from PIL import Image

    files = json.loads((Path(set_dir) / "manifest.json").read_text())["files"]
    by_id = {Path(rel).stem: rel for rel in files}
    bad = []
    for id_, img in regenerate(set_dir, ids).items():
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG", optimize=False)
        if buf.getvalue() != (Path(set_dir) / by_id[id_]).read_bytes():
            bad.append(id_)
    return bad
