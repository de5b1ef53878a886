"""Black-box distillation of a teacher generator into DiStyleGAN.

Per step, with (z, c, teacher image) from the teacher set and real CIFAR-10 from the calibration pool:
  D: hinge(teacher as real, student as fake) + w_real * hinge(real CIFAR-10, student)
  G: w_adv * adversarial + w_fm * sum_i w_i |D_i(student) - D_i(teacher)|_1 (w_i = 1/16, 1/8, 1/4, 1)
     + w_pixel * |student - teacher|_1 + w_real * adversarial against the real term
Without a teacher set (no teacher network available), only the real-data terms remain: a conditional
hinge GAN with DiStyleGAN's networks. Every weight is constant over training unless set otherwise.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from calib.core.data import LabeledImages
from calib.core.errors import CalibError
from calib.core.runs import append_jsonl, atomic_path, start_run
from calib.distylegan.networks import CONFIGS, Discriminator, Generator, save_generator
from calib.distylegan.teacher_set import TeacherSet

FM_WEIGHTS = (1 / 16, 1 / 8, 1 / 4, 1.0)


@dataclass(frozen=True)
class DistillConfig:
    network: str = "cifar10"  # key of calib.distylegan.networks.CONFIGS
    projection: bool = False  # class-projection term in D (see DiscriminatorConfig); needed without a teacher
    steps: int = 20_000
    batch_size: int = 128
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    w_adv: float = 1.0  # student vs teacher, adversarial
    w_fm: float = 1.0  # discriminator feature matching: matches the teacher's image statistics per layer
    w_pixel: float = 1.0  # pixel L1: pins the student to the teacher's z -> image map; kept constant
    w_real: float = 0.5  # real CIFAR-10 vs student: keeps the student on real data where the teacher errs
    snapshot_every: int = 1000
    log_every: int = 50
    seed: int = 0
    device: str = "auto"


def _to_float(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def hinge_d(real_logit: torch.Tensor, fake_logit: torch.Tensor) -> torch.Tensor:
    return nn.functional.relu(1 - real_logit).mean() + nn.functional.relu(1 + fake_logit).mean()


class Distiller:
    """Owns networks, optimizers, data on the device and the one RNG that drives every random choice."""

    def __init__(self, cfg: DistillConfig, teacher_set: TeacherSet | None, real: LabeledImages | None):
        if teacher_set is None and real is None:
            raise CalibError("distillation needs a teacher set, real images, or both")
        if real is not None and real.role not in ("train", "calibration_pool"):
            raise CalibError(f"real images for the GAN must come from the train split, not {real.role}")
        from calib.core.train import pick_device

        self.cfg, self.device = cfg, pick_device(cfg.device)
        torch.manual_seed(cfg.seed)
        g_cfg, d_cfg = CONFIGS[cfg.network]
        if teacher_set is not None:  # the student maps the teacher's latents, so it takes their size
            g_cfg = replace(g_cfg, z_dim=int(teacher_set.latents.shape[1]))
        d_cfg = replace(d_cfg, projection=cfg.projection)
        self.G, self.D = Generator(g_cfg).to(self.device), Discriminator(d_cfg).to(self.device)
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.G.parameters(), cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), cfg.lr, betas=betas)
        self.rng = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.step, self.elapsed = 0, 0.0
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)  # noqa: E731
        self.teacher = None if teacher_set is None else (to(teacher_set.latents), to(teacher_set.labels),
                                                         to(teacher_set.images))
        self.real = None if real is None else (to(real.images), to(real.labels))

    def _pick(self, n: int) -> torch.Tensor:
        return torch.randint(0, n, (self.cfg.batch_size,), generator=self.rng, device=self.device)

    def train_step(self) -> dict[str, float]:
        cfg, G, D = self.cfg, self.G, self.D
        logs: dict[str, float] = {}
        batch = {}
        if self.teacher is not None:
            i = self._pick(len(self.teacher[1]))
            batch["t"] = (self.teacher[0][i], self.teacher[1][i], _to_float(self.teacher[2][i]))
        if self.real is not None:
            j = self._pick(len(self.real[1]))
            x = _to_float(self.real[0][j])
            flip = torch.rand(len(j), generator=self.rng, device=self.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            z = torch.randn(len(j), G.cfg.z_dim, generator=self.rng, device=self.device)
            batch["r"] = (z, self.real[1][j], x)
        fakes = {k: G(z, c) for k, (z, c, _) in batch.items()}

        d_loss = torch.zeros((), device=self.device)
        if "t" in batch:
            _, c, t = batch["t"]
            d_loss = d_loss + hinge_d(D(t, c)[0], D(fakes["t"].detach(), c)[0])
        if "r" in batch:
            _, c, x = batch["r"]
            d_loss = d_loss + cfg.w_real * hinge_d(D(x, c)[0], D(fakes["r"].detach(), c)[0])
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        logs["loss_d"] = d_loss.item()

        g_loss = torch.zeros((), device=self.device)
        if "t" in batch:
            _, c, t = batch["t"]
            logit, f_s = D(fakes["t"], c)
            with torch.no_grad():
                _, f_t = D(t, c)
            fm = sum(w * (a - b).abs().mean() for w, a, b in zip(FM_WEIGHTS, f_s, f_t))
            pixel = (fakes["t"] - t).abs().mean()
            g_loss = g_loss + cfg.w_adv * -logit.mean() + cfg.w_fm * fm + cfg.w_pixel * pixel
            logs |= {"loss_fm": fm.item(), "loss_pixel": pixel.item()}
        if "r" in batch:
            g_loss = g_loss + cfg.w_real * -D(fakes["r"], batch["r"][1])[0].mean()
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        logs["loss_g"] = g_loss.item()
        self.step += 1
        return logs

    def state(self) -> dict:
        return {"config": asdict(self.cfg), "generator": self.G.state_dict(), "discriminator": self.D.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "rng": self.rng.get_state(),
                "torch_rng": torch.get_rng_state(), "step": self.step, "elapsed": self.elapsed}

    def load_state(self, state: dict) -> None:
        if state["config"] != asdict(self.cfg):
            raise CalibError("checkpoint was written with other options; resume with the same options")
        self.G.load_state_dict(state["generator"])
        self.D.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.rng.set_state(state["rng"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        self.step, self.elapsed = state["step"], state["elapsed"]


def save_grid(G: Generator, path: Path, per_class: int = 10, seed: int = 12345) -> None:
    from torchvision.utils import save_image

    from calib.distylegan.teacher_set import latents_for_seeds

    G.eval()
    n = G.cfg.num_classes * per_class
    z = latents_for_seeds(np.arange(seed, seed + n), G.cfg.z_dim).to(next(G.parameters()).device)
    c = torch.arange(n, device=z.device) // per_class
    with torch.no_grad():
        save_image((G(z, c) + 1) / 2, path, nrow=per_class)
    G.train()


def distill(cfg: DistillConfig, run_dir: Path, teacher_set: TeacherSet | None = None,
            real: LabeledImages | None = None, resume: bool = False, progress: bool = True,
            stop_after: int | None = None) -> Distiller:
    """Train in `run_dir`; `resume` continues bit-for-bit from its checkpoint. `stop_after` simulates a kill."""
    ckpt = run_dir / "checkpoint.pt"
    if ckpt.exists() and not resume:
        raise CalibError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    trainer = Distiller(cfg, teacher_set, real)
    if resume and ckpt.exists():
        trainer.load_state(torch.load(ckpt, map_location=trainer.device, weights_only=False))
    else:
        start_run(run_dir, cfg, seeds={"distill": cfg.seed},
                  inputs={"teacher_set": f"{len(teacher_set)} triplets" if teacher_set else "none",
                          "real": real.source if real is not None else "none"})
    from calib.core.progress import progress as progress_bar

    with progress_bar("distill", cfg.steps, quiet=not progress) as advance:
        advance(0, completed=trainer.step)
        t0 = time.perf_counter()
        while trainer.step < cfg.steps:
            if stop_after is not None and trainer.step >= stop_after:
                raise KeyboardInterrupt("simulated kill")
            logs = trainer.train_step()
            advance(1, description=f"distill {logs['loss_g']:.3f}")
            if trainer.step % cfg.log_every == 0 or trainer.step == cfg.steps:
                append_jsonl(run_dir / "metrics.jsonl", {"step": trainer.step, **logs})
            if trainer.step % cfg.snapshot_every == 0 or trainer.step == cfg.steps:
                trainer.elapsed += time.perf_counter() - t0
                t0 = time.perf_counter()
                with atomic_path(ckpt) as tmp:
                    torch.save(trainer.state(), tmp)
                save_grid(trainer.G, run_dir / f"grid-{trainer.step:06d}.png")
    save_generator(trainer.G.eval(), run_dir / "generator.pt", extra={"step": trainer.step})
    return trainer
