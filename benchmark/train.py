"""Reproducible training of zoo models, or a user's ``module.path:factory`` model (seeded SGD
with a one-cycle schedule; a zoo model's registered recipe, the defaults otherwise)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from benchmark.cache import atomic_path, atomic_write_text
from benchmark.convert import make_quantizable
from benchmark.data import load_split
from benchmark.factory import initial_model, is_zoo_model
from benchmark.lock import check_folder_path, exclusive, file_lock
from benchmark.models import TRAIN_RECIPES, check_model_name, checkpoint_path, evaluating
from benchmark.quantizers import quantizable_layers


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; every field is recorded next to the checkpoint."""

    epochs: int = 15
    batch_size: int = 128
    max_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    seed: int = 0
    optimizer: str = "sgd"  # "sgd" (Nesterov momentum) or "adamw" (the ViT's recipe)
    augment: bool = True  # random crop and flip of each batch (``augment``)

    @classmethod
    def for_model(cls, name: str, **overrides) -> TrainConfig:
        """The model's registered recipe (none for a user's factory), then ``overrides``
        (``None`` values ignored)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        recipe = TRAIN_RECIPES[check_model_name(name)] if is_zoo_model(name) else {}
        return cls(**{**recipe, **given})

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer {self.optimizer!r} unknown: choose sgd or adamw")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch size must be >= 1")


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and horizontal flip, vectorized over the batch."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), value=float(x.min()))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, 1, h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, 1, h, w)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000):
    """Top-1 accuracy (%) and mean cross-entropy loss of ``model`` on ``(x, y)``."""
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch):
        out = model(x[i : i + batch])
        loss += F.cross_entropy(out, y[i : i + batch], reduction="sum").item()
        correct += (out.argmax(1) == y[i : i + batch]).sum().item()
    return 100.0 * correct / len(x), loss / len(x)


def train(name: str, cfg: TrainConfig, out: Path | None = None, progress: bool = True) -> dict:
    """Train model ``name`` (zoo name or ``module.path:factory``) from scratch; save its
    state_dict and a JSON record beside it (``out``: required for a factory).

    The checkpoint is locked for the whole run (a second ``emq train`` to the same path is
    refused, naming this process) and both files are written atomically. The model (one
    EMQ can quantize, with parameters to train) and the output path are checked first.
    """
    torch.manual_seed(cfg.seed)
    model = initial_model(name)  # seeded initial weights; a bad name or factory is refused
    if out is None and not is_zoo_model(name):
        raise ValueError(f"--model {name}: give the checkpoint path to write (--out)")
    out = Path(out or checkpoint_path(name))
    check_trainable(model, name)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the checkpoint file to write, e.g. "
                         f"{out / 'model.pt'}")  # fmt: skip
    check_folder_path(out.parent, "--out", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(file_lock(out), f"checkpoint {out}"):
        return _train(name, model.train(), cfg, out, progress)


def check_trainable(model: nn.Module, name: str) -> None:
    """Refuse, before training, a model without trainable parameters or one EMQ could not
    quantize once trained (its layers as the other commands will see them)."""
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"--model {name}: the model has no trainable parameters")
    with torch.random.fork_rng(devices=[]), evaluating(model):  # training's RNG untouched
        quantizable_layers(make_quantizable(model))


def _train(name: str, model: nn.Module, cfg: TrainConfig, out: Path, progress: bool) -> dict:
    gen = torch.Generator().manual_seed(cfg.seed)
    x, y = load_split("train")
    xt, yt = load_split("test")
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay}]
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg.max_lr, weight_decay=0.0)
    else:
        opt = torch.optim.SGD(groups, lr=cfg.max_lr, momentum=cfg.momentum, nesterov=True)
    steps = (len(x) // cfg.batch_size) * cfg.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.max_lr, total_steps=steps)
    start = time.time()
    bar = tqdm(total=steps, disable=not progress, desc=f"train {name}")
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(len(x) // cfg.batch_size):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            xb = augment(x[idx], gen) if cfg.augment else x[idx]
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=cfg.label_smoothing)
            if not math.isfinite(loss.item()):  # diverged: nothing is saved
                bar.close()
                raise ValueError(
                    f"training {name} diverged (loss {loss.item()}) at epoch {epoch + 1}, step "
                    f"{i + 1}; nothing was saved: lower --lr (now {cfg.max_lr:g})"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    bar.close()
    acc, test_loss = evaluate(model, xt, yt)
    with atomic_path(out) as tmp:
        torch.save(model.state_dict(), tmp)
    record = {
        "model": name,
        "test_top1": round(acc, 2),
        "test_loss": round(test_loss, 4),
        "seconds": round(time.time() - start, 1),
        "torch": torch.__version__,
        "config": asdict(cfg),
    }
    atomic_write_text(out.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    return record
