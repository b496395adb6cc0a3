"""Training throughput on this machine: the full ferlab step vs the network step alone vs a
naive per-sample PIL pipeline, with achieved GFLOP/s against a measured GEMM peak.

Two naive references: "naive" runs ferlab's own network settings (precision, channels_last)
behind the per-sample PIL DataLoader, so the ratio to it is what the data pipeline alone buys;
"plain" is that pipeline as the usual torchvision script writes it (float32, default NCHW
memory format), so the ratio to it is what all of ferlab's choices together buy.

    python experiments/benchmark_training.py [--models baseline vgg9] [--batches 20]
    python experiments/benchmark_training.py --knobs [--models vgg9]   # compile/threads/batch
    python experiments/benchmark_training.py --regularisers [--models vgg9]   # mixup/cutmix/EMA
    python experiments/benchmark_training.py --sizes 48 32 24 [--models vgg8_gap_slim]
        # the network step at each face size: what progressive resizing buys

Uses FER2013 from $FERLAB_DATA when present (else random faces of the same shape). Run it on an
otherwise idle machine: every figure is wall-clock throughput.
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision.transforms import v2

from ferlab.config import CONFIG_DIR, register_resolvers
from ferlab.data import load_faces, preprocess
from ferlab.data.transforms import PIXEL_MEAN, PIXEL_STD
from ferlab.precision import slow_bf16_reason


def compose_cfg(model: str, precision: str, batch_size: int, extra: tuple[str, ...] = ()):
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[f"model={model}", f"trainer.precision={precision}",
                                           f"data.batch_size={batch_size}", "paths.output_dir=.",
                                           *extra])


def autocast(precision: str):
    if precision.startswith("bf16"):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def network_step_rate(module, optimizer, x, y, precision, batches, warmup=3) -> float:
    """Images/s of forward + loss + backward + optimiser step on one fixed batch."""
    module.train()
    for i in range(warmup + batches):
        if i == warmup:
            start = time.perf_counter()
        with autocast(precision):
            logits = module(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return len(y) * batches / (time.perf_counter() - start)


def flops_per_image(module, x, y, precision) -> float:
    with FlopCounterMode(display=False) as counter:
        with autocast(precision):
            logits = module(x)
        F.cross_entropy(logits.float(), y).backward()
    return counter.get_total_flops() / len(y)


class _BatchTimer(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.end, self.images = warmup, None, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx >= self.warmup:
            self.images += len(batch[1])
            self.end = time.perf_counter()


def full_step_rate(cfg, datamodule, batches, warmup=3, callbacks=()) -> float:
    """Images/s of the whole ferlab training step, run by Lightning's Trainer exactly as
    ``python -m ferlab.train`` runs it (batch fetch, preprocessing + augmentation, forward,
    loss, metrics, logging, backward, optimiser and scheduler step)."""
    module = instantiate(cfg.module, model=instantiate(cfg.model))
    timer = _BatchTimer(warmup)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=cfg.trainer.precision,
                        max_epochs=1, limit_train_batches=warmup + batches, limit_val_batches=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer, *callbacks])
    trainer.fit(module, datamodule=datamodule)
    return timer.images / (timer.end - timer.start)


class NaiveFaces(Dataset):
    """The usual torchvision recipe: one PIL image per sample, per-sample transforms."""

    def __init__(self, faces: np.ndarray, labels: np.ndarray):
        self.faces, self.labels = faces, labels
        self.transform = v2.Compose([
            v2.RandomHorizontalFlip(),
            v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([PIXEL_MEAN], [PIXEL_STD]),
            v2.RandomErasing(p=0.5, scale=(0.02, 0.15)),
        ])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.faces[i])), int(self.labels[i])


def naive_rate(module, optimizer, faces, labels, precision, batch_size, batches, workers,
               warmup=3) -> float:
    loader = DataLoader(NaiveFaces(faces, labels), batch_size=batch_size, shuffle=True,
                        num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    module.train()
    images = 0
    for i, (x, y) in enumerate(loader):
        if i == warmup:
            start, images = time.perf_counter(), 0
        with autocast(precision):
            logits = module(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        images += len(y)
        if i + 1 == warmup + batches:
            break
    return images / (time.perf_counter() - start)


def plain_rate(model_name: str, faces, labels, args) -> float:
    """The naive pipeline as the usual torchvision script writes it: float32 and the default
    (NCHW) memory format, the same network, optimiser and batch size."""
    cfg = compose_cfg(model_name, "32-true", args.batch_size, ("module.channels_last=false",))
    module = instantiate(cfg.module, model=instantiate(cfg.model))
    optimizer = instantiate(cfg.module.optimizer)(params=module.parameters())
    return naive_rate(module, optimizer, faces, labels, "32-true", args.batch_size,
                      args.batches, args.naive_workers)


def gemm_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def knob_rates(model_name: str, batches: int) -> None:
    """The fp32 network step of one model under each speed knob, one at a time: torch.compile
    (its one-off compile time shown), fewer threads, other batch sizes."""
    threads = torch.get_num_threads()
    settings = [("eager (reference)", False, threads, 128), ("torch.compile", True, threads, 128),
                (f"{max(1, threads // 2)} thread(s)", False, max(1, threads // 2), 128),
                ("batch 64", False, threads, 64), ("batch 256", False, threads, 256)]
    print(f"\n{model_name}, fp32 channels_last network step (batch 128, {threads} threads "
          "unless named):")
    for name, compiled, n_threads, batch_size in settings:
        torch.manual_seed(0)
        cfg = compose_cfg(model_name, "32-true", batch_size)
        module = instantiate(cfg.module, model=instantiate(cfg.model))
        optimizer = instantiate(cfg.module.optimizer)(params=module.parameters())
        x = torch.randn(batch_size, 1, 48, 48)
        y = torch.randint(0, cfg.data.num_classes, (batch_size,))
        torch.set_num_threads(n_threads)
        step = torch.compile(module) if compiled else module
        start = time.perf_counter()
        F.cross_entropy(step(x), y).backward()  # first call: compiles when compiled
        first = time.perf_counter() - start
        rate = network_step_rate(step, optimizer, x, y, "32-true", batches)
        torch.set_num_threads(threads)
        print(f"  {name:<20}{rate:>8.0f} img/s   (first step {first:5.1f} s)", flush=True)


REGULARISERS = {  # name: (overrides, callbacks config key)
    "plain": ((), None),
    "mixup 0.2": (("module.mixup_alpha=0.2",), None),
    "cutmix 1.0": (("module.cutmix_alpha=1.0",), None),
    "EMA 0.999": (("callbacks=ema",), "ema"),
}


def regulariser_rates(model_name: str, batches: int, batch_size: int) -> None:
    """The whole fp32 ferlab step with each regulariser the framework offers, one at a time."""
    print(f"\n{model_name}, whole ferlab training step, fp32, batch {batch_size}:")
    base = None
    for name, (overrides, callback) in REGULARISERS.items():
        torch.manual_seed(0)
        cfg = compose_cfg(model_name, "32-true", batch_size, overrides)
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        extra = [instantiate(cfg.callbacks[callback])] if callback else []
        rate = full_step_rate(cfg, datamodule, batches, callbacks=extra)
        base = base or rate
        print(f"  {name:<12}{rate:>8.0f} img/s  {rate / base:5.2f}x", flush=True)


def size_rates(model_name: str, precision: str, sizes: list[int], batches: int,
               batch_size: int) -> None:
    """The network step (forward, loss, backward, optimiser) on faces of each side length: the
    price list of progressive resizing (module.progressive_resize)."""
    print(f"\n{model_name}, {precision} channels_last network step, batch {batch_size}:")
    cfg = compose_cfg(model_name, precision, batch_size)
    base = None
    for size in sizes:
        torch.manual_seed(0)
        module = instantiate(cfg.module, model=instantiate(cfg.model))
        optimizer = instantiate(cfg.module.optimizer)(params=module.parameters())
        x = torch.randn(batch_size, 1, size, size)
        y = torch.randint(0, cfg.data.num_classes, (batch_size,))
        try:
            flops = flops_per_image(module, x, y, precision)
        except RuntimeError as err:  # a flatten head takes one size only
            print(f"  {size:>3} px: the network cannot take this size ({str(err).splitlines()[0]})")
            continue
        # the first size also pays oneDNN's one-off kernel set-up: warm it up longer
        rate = network_step_rate(module, optimizer, x, y, precision, batches,
                                 warmup=3 if base else 10)
        base = base or rate
        print(f"  {size:>3} px {rate:>8.0f} img/s  {rate / base:5.2f}x   "
              f"{flops / 1e9:6.3f} GFLOP/img", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["baseline", "vgg9"])
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--naive-workers", type=int, default=2)
    parser.add_argument("--knobs", action="store_true",
                        help="only the network step under torch.compile, threads, batch size")
    parser.add_argument("--regularisers", action="store_true",
                        help="only the whole step with mixup, cutmix or EMA (their cost)")
    parser.add_argument("--sizes", nargs="+", type=int,
                        help="only the network step at these face sizes (progressive resizing)")
    parser.add_argument("--slow-bf16", action="store_true",
                        help="measure bf16 even on a CPU without oneDNN bf16 kernels")
    args = parser.parse_args()
    reason = slow_bf16_reason()
    if reason and not args.slow_bf16 and any(p.startswith("bf16") for p in args.precisions):
        print(f"bf16 skipped: {reason} (--slow-bf16 measures it anyway)")
        args.precisions = [p for p in args.precisions if not p.startswith("bf16")]
    if args.sizes:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        for model_name in args.models:
            for precision in args.precisions:
                size_rates(model_name, precision, args.sizes, args.batches, args.batch_size)
        return
    if args.regularisers:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        for model_name in args.models:
            regulariser_rates(model_name, args.batches, args.batch_size)
        return
    if args.knobs:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        for model_name in args.models:
            knob_rates(model_name, args.batches)
        return

    L.seed_everything(0, verbose=False)
    root = Path(os.environ.get("FERLAB_DATA", "data/fer2013"))
    try:
        train = load_faces(root).select("train")
        faces, labels, source = train.faces, train.labels, f"FER2013 train at {root}"
    except FileNotFoundError:
        rng = np.random.default_rng(0)
        faces = rng.integers(0, 256, (8192, 48, 48), dtype=np.uint8)
        labels = rng.integers(0, 7, 8192)
        source = "random faces (FER2013 not found)"
    peak32, peak16 = gemm_peak(torch.float32), gemm_peak(torch.bfloat16)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, data: {source}")
    print(f"measured GEMM peak: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s")
    # overhead: the share of a full ferlab step spent outside the network step
    header = (f"{'model':<14}{'precision':<12}{'net img/s':>10}{'ferlab img/s':>13}"
              f"{'overhead':>9}{'naive img/s':>12}{'vs naive':>9}{'plain img/s':>12}"
              f"{'vs plain':>9}{'GFLOP/img':>10}{'GFLOP/s':>9}{'% peak':>7}")
    print(header)
    for model_name in args.models:
        plain = plain_rate(model_name, faces, labels, args)
        for precision in args.precisions:
            cfg = compose_cfg(model_name, precision, args.batch_size)
            datamodule = instantiate(cfg.data)
            datamodule.setup("fit")
            module = instantiate(cfg.module, model=instantiate(cfg.model))
            optimizer = instantiate(cfg.module.optimizer)(params=module.parameters())
            x, y = next(iter(datamodule.train_dataloader()))
            x = datamodule.augment(preprocess(x))
            flops = flops_per_image(module, x, y, precision)
            net = network_step_rate(module, optimizer, x, y, precision, args.batches)
            full = full_step_rate(cfg, datamodule, args.batches)
            naive = naive_rate(module, optimizer, faces, labels, precision, args.batch_size,
                               args.batches, args.naive_workers)
            peak = peak16 if precision.startswith("bf16") else peak32
            achieved = flops * full / 1e9
            print(f"{model_name:<14}{precision:<12}{net:>10.0f}{full:>13.0f}"
                  f"{(1 - full / net) * 100:>8.1f}%{naive:>12.0f}{full / naive:>8.2f}x"
                  f"{plain:>12.0f}{full / plain:>8.2f}x{flops / 1e9:>10.3f}"
                  f"{achieved:>9.0f}{achieved / peak * 100:>6.0f}%",
                  flush=True)


if __name__ == "__main__":
    main()
