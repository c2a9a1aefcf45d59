"""A LightningModule watched by collapsewatch's callback: the digits CNN, its `training_step` returning
logits and targets next to the loss. Needs `pip install collapsewatch[lightning] scikit-learn`; then:

    python examples/lightning_module.py [--server http://127.0.0.1:8000] [--epochs 3] [--lr 0.003]
"""

from __future__ import annotations

import argparse
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from plain_pytorch import cnn, digits
from torch.utils.data import DataLoader, TensorDataset

from collapsewatch.integrations.lightning import CollapseWatchCallback


class DigitsModule(pl.LightningModule):
    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr, self.net = lr, cnn()

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x, t = batch
        logits = self.net(x)  # (B, 10)
        loss = -(t * F.log_softmax(logits, -1)).sum(-1).mean()
        return {"loss": loss, "logits": logits, "targets": t}  # the keys the callback reads

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x, t = batch
        return {"logits": self.net(x), "targets": t}  # one run.log_eval per validation epoch

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=-1, help="stop after this many batches")
    parser.add_argument("--lr", type=float, default=3e-3, help="try 0.3 to watch it collapse")
    args = parser.parse_args()

    torch.manual_seed(0)
    x, t = digits(smoothing=0.1)
    train = DataLoader(TensorDataset(x[:-300], t[:-300]), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(x[-300:], t[-300:]), batch_size=300)
    watch = CollapseWatchCallback(name="examples/lightning_module", config={"lr": args.lr}, server=args.server)
    trainer = pl.Trainer(
        max_epochs=args.epochs, max_steps=args.steps, accelerator="cpu", callbacks=[watch], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(DigitsModule(args.lr), train, val)
    assert watch.run is not None
    print(f"{trainer.global_step} batches logged, {len(watch.run.warnings)} warnings: {watch.run.url}")


if __name__ == "__main__":
    main()
