"""A Lightning callback that streams a LightningModule's training batches to collapsewatch.

`training_step` returns its logits and targets next to the loss; the callback logs them after each batch:

    def training_step(self, batch, batch_idx):
        x, t = batch                                  # t: (B, C) soft targets or (B,) class indices
        logits = self(x)
        loss = soft_cross_entropy(logits, t)
        return {"loss": loss, "logits": logits, "targets": t}

    trainer = pl.Trainer(callbacks=[CollapseWatchCallback(name="my-run", config={"lr": 1e-3})])

`validation_step` may return the same keys: the epoch's validation batches become one `run.log_eval`.
Install with `pip install collapsewatch[lightning]`.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

import collapsewatch as cw
from collapsewatch.run import Run


class CollapseWatchCallback(pl.Callback):
    """Logs `outputs[logits_key]` and `outputs[targets_key]` of every training batch to a collapsewatch run.

    The run is `run` if given, else made at `on_fit_start` by `collapsewatch.init(**init_kwargs)` (with
    `steps_per_epoch` from the trainer unless given). Only the global-zero process logs under DDP. Each
    batch is logged with its loss (`outputs["loss"]`), the first optimizer's learning rate, the epoch and
    `trainer.global_step - 1` as step (one optimizer step per batch; with gradient accumulation or manual
    optimization, the count of logged batches).
    Tensors are detached and kept by reference: no host sync per batch. The run is finished at
    `on_fit_end` (failed, or cancelled on Ctrl-C, from `on_exception`) when this callback made it, or when
    `finish=True`.
    """

    def __init__(
        self,
        run: Run | None = None,
        *,
        logits_key: str = "logits",
        targets_key: str = "targets",
        log_validation: bool = True,
        finish: bool | None = None,
        **init_kwargs: Any,
    ) -> None:
        if run is not None and init_kwargs:
            raise ValueError(f"pass either run= or collapsewatch.init() arguments, not both: {sorted(init_kwargs)}")
        self.run = run
        self.logits_key, self.targets_key = logits_key, targets_key
        self.log_validation = log_validation
        self._finish = run is None if finish is None else finish
        self._init_kwargs = init_kwargs
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    # --- the run's life -----------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or (self.run is not None and not self.run.finished):
            return
        kwargs = dict(self._init_kwargs)
        if "steps_per_epoch" not in kwargs and isinstance(trainer.num_training_batches, int):
            kwargs["steps_per_epoch"] = trainer.num_training_batches
        self.run = cw.init(**kwargs)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.run is not None and self._finish:
            self.run.finish()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not trainer.is_global_zero or self.run is None or self.run.finished:
            return
        if isinstance(exception, KeyboardInterrupt):
            self.run.finish("cancelled", "KeyboardInterrupt")
        else:
            self.run.finish("failed", f"{type(exception).__name__}: {exception}")

    # --- training batches -----------------------------------------------------------------------------
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero or self.run is None or self.run.finished:
            return
        logits, targets = self._pair(outputs, "training_step")
        loss = outputs.get("loss")
        self.run.log_batch(
            logits,
            targets,
            loss=loss.detach() if isinstance(loss, torch.Tensor) else loss,
            lr=_learning_rate(trainer),
            step=trainer.global_step - 1 if _one_step_per_batch(trainer, pl_module) else None,
            epoch=trainer.current_epoch,
        )

    # --- validation: one evaluation per validation epoch ---------------------------------------------
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val = []

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._watching_validation(trainer) and isinstance(outputs, dict) and self.logits_key in outputs:
            self._val.append(self._pair(outputs, "validation_step"))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._watching_validation(trainer) and self._val and self.run is not None:
            logits = torch.cat([z for z, _ in self._val])
            targets = torch.cat([t for _, t in self._val])
            self.run.log_eval(logits, targets, epoch=trainer.current_epoch)  # a sync point, once per epoch
        self._val = []

    def _watching_validation(self, trainer: pl.Trainer) -> bool:
        live = self.run is not None and not self.run.finished
        return self.log_validation and live and trainer.is_global_zero and not trainer.sanity_checking

    def _pair(self, outputs: Any, hook: str) -> tuple[torch.Tensor, torch.Tensor]:
        keys = (self.logits_key, self.targets_key)
        if not isinstance(outputs, dict) or not all(k in outputs for k in keys):
            got = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
            raise ValueError(
                f"CollapseWatchCallback: {hook} must return a dict with {keys[0]!r} and {keys[1]!r} "
                f'(e.g. {{"loss": loss, "{keys[0]}": logits, "{keys[1]}": targets}}), got {got}'
            )
        return outputs[keys[0]].detach(), outputs[keys[1]].detach()


def _learning_rate(trainer: pl.Trainer) -> float | None:
    """The first parameter group's learning rate of the first optimizer (a Python number: no sync)."""
    if not trainer.optimizers:
        return None
    lr = trainer.optimizers[0].param_groups[0].get("lr")
    return float(lr) if isinstance(lr, int | float) else None


def _one_step_per_batch(trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
    """Whether each training batch is one optimizer step, so that `global_step` numbers the batches."""
    return pl_module.automatic_optimization and trainer.accumulate_grad_batches == 1
