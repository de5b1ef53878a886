"""Per-iteration cost of one inversion step (forward + BN hooks + backward + Adam) under the levers the source
could use: batch size, the BN-statistics formula (`torch.var_mean`, as before the speed-up, or E[x^2] - E[x]^2),
channels-last memory format, torch.compile. Each variant is timed in rounds that alternate between variants,
so a busy machine slows all of them alike; the ratios are the result.

    CALIB_WEIGHTS_DIR=../shared/weights-official python scripts/inversion_levers.py --model resnet20 \
        --record results/inversion/levers.jsonl
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from calib.core.runs import record
from calib.core.sources.inversion import BNStatsLoss, _load, total_variation


class VarMeanBNStatsLoss(BNStatsLoss):
    """The hook as it was before the speed-up: `torch.var_mean` over (N, H, W)."""

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple[torch.Tensor]) -> None:
        var, mean = torch.var_mean(inputs[0], (0, 2, 3), correction=0)
        self.terms.append(torch.linalg.vector_norm(mean - module.running_mean)
                          + torch.linalg.vector_norm(var - module.running_var))


class NoBNStats(BNStatsLoss):
    """No statistics at all: the floor, forward and backward of the model alone."""

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple[torch.Tensor]) -> None:
        return None

    def value(self) -> torch.Tensor:
        return torch.zeros(())


def make_step(net: nn.Module, batch: int, channels_last: bool, compiled: bool, var_mean: bool | None = False):
    model = net.to(memory_format=torch.channels_last) if channels_last else net
    forward = torch.compile(model) if compiled else model
    x = torch.randn(batch, 3, 32, 32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = torch.arange(batch) % 10
    opt = torch.optim.Adam([x], lr=0.1, betas=(0.5, 0.9))
    hooks = (NoBNStats if var_mean is None else VarMeanBNStatsLoss if var_mean else BNStatsLoss)(model)

    def step() -> None:
        logits = forward(torch.roll(x, (1, 1), (2, 3)).flip(3))
        loss = hooks.value() + nn.functional.cross_entropy(logits, y) + 1e-3 * total_variation(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, hooks


def main(argv: list[str] | None = None) -> None:
    """The command line; `argv` lets the test suite run it at toy size in-process."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batches", default="25,50,100,200")
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also time torch.compile (compile time reported)")
    p.add_argument("--weights", type=Path, default=None, help="default: as calib finds them (CALIB_WEIGHTS_DIR)")
    p.add_argument("--record", type=Path, default=Path("runs/records.jsonl"))
    a = p.parse_args(argv)
    net, _ = _load(a.model, a.weights)
    for q in net.parameters():
        q.requires_grad_(False)
    variants = {f"batch {b}": (int(b), False, False, False) for b in a.batches.split(",")}
    variants["batch 100, torch.var_mean statistics"] = (100, False, False, True)
    variants["batch 100, torch.var_mean statistics, channels-last"] = (100, True, False, True)
    variants["batch 100, channels-last"] = (100, True, False, False)
    variants["batch 100, channels-last, no BN statistics (the floor)"] = (100, True, False, None)
    if a.compile:
        variants["batch 100, torch.compile"] = (100, False, True, False)
    steps, setup = {}, {}
    for name, (b, cl, comp, var_mean) in variants.items():
        t0 = time.perf_counter()
        steps[name] = make_step(copy.deepcopy(net), b, cl, comp, var_mean)[0]
        steps[name]()  # first call: allocation, and compilation when compiled
        setup[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {n: [] for n in variants}
    for _ in range(a.rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(a.steps):
                step()
            times[name].append((time.perf_counter() - t0) / a.steps / variants[name][0])
    base = statistics.median(times["batch 100"]) if "batch 100" in times else None
    for name in variants:
        ms = statistics.median(times[name]) * 1e3
        rel = f", {ms / base / 1e3:.2f}x batch 100" if base else ""
        print(f"{name}: {ms:.2f} ms per image-iteration (setup {setup[name]:.1f} s){rel}", flush=True)
        record(a.record, "inversion_lever", {"model": a.model, "variant": name, "ms_per_image_iteration": ms,
                                             "setup_s": setup[name], "relative_to_batch_100": ms / base / 1e3
                                             if base else None, "rounds": a.rounds, "steps": a.steps,
                                             "torch_threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
