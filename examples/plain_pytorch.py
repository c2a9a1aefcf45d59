"""A plain PyTorch loop watched by collapsewatch: a two-layer CNN on scikit-learn's digits, trained on soft
targets (label smoothing), every batch logged. Start the dashboard first (`make serve`), then:

    python examples/plain_pytorch.py [--server http://127.0.0.1:8000] [--epochs 3] [--lr 0.003]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import collapsewatch as cw


def digits(smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, 8, 8) images in [0, 1] and (N, 10) smoothed one-hot targets."""
    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32)[:, None]
    t = F.one_hot(torch.tensor(data.target), 10).float() * (1 - smoothing) + smoothing / 10
    return x, t


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="stop after this many batches")
    parser.add_argument("--lr", type=float, default=3e-3, help="try 0.3 to watch it collapse")
    args = parser.parse_args()

    torch.manual_seed(0)
    x, t = digits(smoothing=0.1)
    model = cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    batch_size = 64
    run = cw.init(
        name="examples/plain_pytorch", config={"lr": args.lr, "batch_size": batch_size},
        server=args.server, steps_per_epoch=-(-len(x) // batch_size),
    )  # fmt: skip

    # --- training: every batch logged, tensors kept on the device (no host sync) ---
    step = 0
    with run:  # a crash or Ctrl-C ends the run failed or cancelled
        for epoch in range(args.epochs):
            for idx in torch.randperm(len(x)).split(batch_size):
                logits = model(x[idx])  # (B, 10)
                loss = -(t[idx] * F.log_softmax(logits, -1)).sum(-1).mean()
                optimizer.zero_grad()
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
                optimizer.step()
                run.log_batch(logits, t[idx], loss=loss, grad_norm=grad_norm, lr=args.lr, epoch=epoch)
                step += 1
                if args.steps is not None and step >= args.steps:
                    break
            # --- evaluation: a sync point, once per epoch ---
            with torch.no_grad():
                run.log_eval(model(x[-300:]), t[-300:], epoch=epoch)
            if args.steps is not None and step >= args.steps:
                break
    print(f"{step} batches logged, {len(run.warnings)} warnings: {run.url}")


if __name__ == "__main__":
    main()
