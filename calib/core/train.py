"""Train a zoo classifier with the zoo's recipe: SGD Nesterov, cosine schedule, random crop + flip.

The whole split lives on the device as uint8 and is augmented there, so one loop serves a 2-core CPU and
a GPU alike. The run folder holds options.json (written first), last.pt (resumable), metrics.jsonl and,
at the end, the weights under the zoo's file naming with a card beside them.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from calib.core.cards import trained_on_fields
from calib.core.data import MEAN, SPLIT, STD, LabeledImages
from calib.core.errors import CalibError
from calib.core.runs import append_jsonl, atomic_path, atomic_write_json, file_sha256, start_run
from calib.core.zoo import create_model


@dataclass(frozen=True)
class TrainConfig:
    model: str
    epochs: int = 200
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    seed: int = 0
    device: str = "auto"
    max_steps: int | None = None  # stop early (tests, smoke runs)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def normalize_batch(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW on any device -> normalized float32, identical to `data.to_model_input`."""
    mean = torch.tensor(MEAN, device=images_u8.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images_u8.device).view(1, 3, 1, 1)
    return (images_u8.float() / 255.0 - mean) / std


def augment(batch: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """RandomCrop(32, padding=4) + horizontal flip on a uint8 NCHW batch, on its own device."""
    n, _, h, w = batch.shape
    padded = nn.functional.pad(batch, [pad] * 4)
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=gen.device).to(batch.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=gen.device).to(batch.device)
    rows = (oy[:, None] + torch.arange(h, device=batch.device))[:, :, None]
    cols = (ox[:, None] + torch.arange(w, device=batch.device))[:, None, :]
    out = padded[torch.arange(n, device=batch.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    flip = (torch.rand(n, generator=gen, device=gen.device) < 0.5).to(batch.device)
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def lr_lambda(total_steps: int, warmup_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return 0.1 + 0.9 * step / max(1, warmup_steps)
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


@torch.no_grad()
def accuracy(model: nn.Module, data: LabeledImages, device: torch.device, batch_size: int = 1000) -> float:
    model.eval()
    images = torch.from_numpy(data.images).permute(0, 3, 1, 2)
    correct = 0
    for i in range(0, len(data), batch_size):
        x = normalize_batch(images[i : i + batch_size].to(device)).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pred = model(x).argmax(1).cpu().numpy()
        correct += int((pred == data.labels[i : i + batch_size]).sum())
    return correct / len(data)


def tree_split_name(data: LabeledImages, split: str) -> str:
    """Where `data` came from, as a card names it: the tree's folder name and the split, never the training
    machine's full path (cards travel with the weights)."""
    prov = data.provenance
    if prov.get("data") == "torchvision":
        return f"torchvision CIFAR-10 {split}"
    if prov.get("data_root"):
        return f"{Path(prov['data_root']).name}/{split}"
    return f"in-memory {split} images"


def describe_train_data(train: LabeledImages) -> str:
    """The card's `train_data`, for people; what reading trusts are the fields of `card_fields`."""
    tree = tree_split_name(train, "train")
    if train.role == "calibration_pool":
        return (f"{tree} minus the validation split: the calibration pool, {len(train):,} images "
                f"(calib.core.data.SPLIT: validation_per_class={SPLIT.validation_per_class}, seed={SPLIT.seed}, "
                "held out and never seen in training)")
    return f"{tree}: all {len(train):,} train images, the validation split included"


def card_fields(train: LabeledImages) -> dict:
    """`trained_on`, `held_out` and `trained_on_tree` for the card, with the train split's content hash as rows
    record it (`data_train_sha256`), so the tree is recognised under any folder name."""
    prov = train.provenance
    sha = prov.get("content_sha256") if prov.get("split") == "train" else None
    return trained_on_fields(train.role == "calibration_pool", tree_split_name(train, "train"), sha)


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def train_model(cfg: TrainConfig, train: LabeledImages, out_dir: Path, test: LabeledImages | None = None,
                resume: bool = True, progress: bool = True) -> dict:
    """Train (or resume) and return a summary; the final weights land in `out_dir` with a card."""
    if train.role not in ("train", "calibration_pool"):
        raise CalibError(f"training data must come from the train split, not {train.role}")
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model).to(device).to(memory_format=torch.channels_last)
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    steps_per_epoch = len(train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise CalibError(f"batch size {cfg.batch_size} is larger than the {len(train)} training images")
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, int(cfg.warmup_epochs * steps_per_epoch)))
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed)
    step, epoch, elapsed = 0, 0, 0.0
    ckpt = out_dir / "last.pt"
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        if state["config"] != asdict(cfg):
            raise CalibError(f"{ckpt} was written with other options; use another --out or --no-resume")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"].cpu())
        step, epoch, elapsed = state["step"], state["epoch"], state["elapsed"]
    else:
        start_run(out_dir, cfg, seeds={"train": cfg.seed})

    images = torch.from_numpy(train.images).permute(0, 3, 1, 2).contiguous().to(device)
    labels = torch.from_numpy(train.labels).to(device)
    loss_fn = nn.CrossEntropyLoss()
    from calib.core.progress import progress as progress_bar

    with progress_bar(f"train {cfg.model}", total, quiet=not progress) as advance:
        advance(0, completed=step)
        while epoch < cfg.epochs and (cfg.max_steps is None or step < cfg.max_steps):
            t0, model_loss, seen = time.perf_counter(), 0.0, 0
            model.train()
            order = torch.randperm(len(train), generator=gen, device=device)
            for i in range(steps_per_epoch):
                if cfg.max_steps is not None and step >= cfg.max_steps:
                    break
                idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
                x = normalize_batch(augment(images[idx], gen)).contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    loss = loss_fn(model(x), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                model_loss += loss.item()
                seen += 1
                if step % 50 == 0:
                    append_jsonl(out_dir / "metrics.jsonl", {"step": step, "epoch": epoch, "loss": loss.item(),
                                                             "lr": sched.get_last_lr()[0]})
                advance(1, description=f"train {cfg.model} epoch {epoch + 1} loss {loss.item():.3f}")
            elapsed += time.perf_counter() - t0
            if seen == steps_per_epoch:
                epoch += 1
            row = {"epoch": epoch, "step": step, "train_loss": model_loss / max(1, seen), "seconds": elapsed}
            if test is not None and (epoch == cfg.epochs or epoch % 10 == 0):
                row["test_accuracy"] = accuracy(model, test, device)
            append_jsonl(out_dir / "metrics.jsonl", row)
            with atomic_path(ckpt) as tmp:
                torch.save({"config": asdict(cfg), "model": model.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "generator": gen.get_state(), "step": step,
                            "epoch": epoch, "elapsed": elapsed}, tmp)

    summary = {"model": cfg.model, "epochs": epoch, "steps": step, "train_seconds": round(elapsed, 1),
               "hardware": torch.cuda.get_device_name(0) if device.type == "cuda" else _cpu_text(),
               "recipe": f"SGD lr {cfg.lr} Nesterov momentum {cfg.momentum}, weight decay {cfg.weight_decay}, "
                         f"batch {cfg.batch_size}, cosine to 0 after {cfg.warmup_epochs} warm-up epochs, "
                         f"RandomCrop(32, padding 4) + horizontal flip, seed {cfg.seed}",
               "train_data": describe_train_data(train), **card_fields(train)}
    if epoch == cfg.epochs:
        tmp = out_dir / ".final.pt"
        torch.save({k: v.float().cpu() for k, v in model.state_dict().items()}, tmp)
        final = out_dir / f"cifar10_{cfg.model}-{file_sha256(tmp)[:8]}.pt"
        tmp.replace(final)
        summary["file"] = final.name
        if test is not None:
            summary["test_accuracy"] = accuracy(model, test, device)
            summary["test_data"] = tree_split_name(test, "test")
        atomic_write_json(final.with_suffix(".json"), summary)
    return summary


def _cpu_text() -> str:
    """The training CPU for the card: model, cores, kernel-relevant flags and the ISA PyTorch's oneDNN ran."""
    from calib.core.hardware import hardware

    hw = hardware()
    flags = ", ".join(hw["cpu_flags"]) or "no AVX2"
    return (f"{hw['cpu_count']} {hw['cpu']} cores ({flags}; oneDNN ISA {hw['isa']}), CPU only, torch threads "
            f"{torch.get_num_threads()}")
