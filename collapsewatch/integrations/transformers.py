"""A `compute_loss_func` for `transformers.Trainer` that logs each training batch's logits and labels to
collapsewatch (Trainer's callbacks never see logits; its loss function does):

    loss = watch_loss(name="bert-soft", config={"lr": 5e-5})
    trainer = Trainer(model, args, train_dataset=ds, compute_loss_func=loss, callbacks=[loss.callback])

Install with `pip install collapsewatch[transformers]`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

import collapsewatch as cw
from collapsewatch.run import Run

IGNORE_INDEX = -100  # the labels Trainer's own losses skip
LossFunc = Callable[..., torch.Tensor]


def soft_or_hard_cross_entropy(
    outputs: Any, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
) -> torch.Tensor:
    """Cross-entropy of `outputs.logits` against class indices (IGNORE_INDEX skipped) or soft targets
    (floating labels of the logits' shape). Summed over the items and divided by `num_items_in_batch` when
    Trainer gives it (so gradient accumulation averages over the whole accumulated batch), else averaged."""
    logits = _logits(outputs)
    if labels.dtype.is_floating_point:
        per_item = -(labels * F.log_softmax(logits.float(), dim=-1)).sum(-1)
        total = per_item.sum()
        count = per_item.numel()
        if num_items_in_batch is not None:  # Trainer counts label elements: C per soft row
            num_items_in_batch = num_items_in_batch / labels.shape[-1]
    else:
        flat = logits.float().reshape(-1, logits.shape[-1])
        total = F.cross_entropy(flat, labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
        count = (labels != IGNORE_INDEX).sum()
    return total / (num_items_in_batch if num_items_in_batch is not None else count)


class WatchedLoss:
    """The callable `watch_loss` returns: Trainer's `compute_loss_func(outputs, labels, num_items_in_batch)`."""

    def __init__(self, loss_fn: LossFunc | None, run: Run | None, init_kwargs: dict[str, Any]) -> None:
        self.loss_fn = loss_fn or soft_or_hard_cross_entropy
        self.run = run
        self._init_kwargs = init_kwargs
        self._owned = run is None
        self.lr: float | None = None
        self.epoch: int | None = None
        self.callback = WatchCallback(self)

    def __call__(
        self, outputs: Any, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        loss = self.loss_fn(outputs, labels, num_items_in_batch=num_items_in_batch)
        # evaluation (prediction_step) runs the same function under no_grad: only training batches are logged
        if torch.is_grad_enabled() and labels is not None and _is_rank_zero():
            run = self._ensure_run()
            if not run.finished:
                logits, targets = _rows(_logits(outputs).detach(), labels.detach())
                run.log_batch(logits, targets, loss=loss.detach(), lr=self.lr, epoch=self.epoch)
        return loss

    def _ensure_run(self) -> Run:
        if self.run is None:
            self.run = cw.init(**self._init_kwargs)
        return self.run

    def finish(self, status: str = "completed", error: str | None = None) -> None:
        """End the run if this wrapper made it (a run you passed in is yours to finish)."""
        if self._owned and self.run is not None and not self.run.finished:
            self.run.finish(status, error)


class WatchCallback(TrainerCallback):
    """Tells the loss the learning rate and epoch of each step, and finishes the run at `on_train_end`."""

    def __init__(self, loss: WatchedLoss) -> None:
        self.loss = loss

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        optimizer = kwargs.get("optimizer")
        if optimizer is not None:
            lr = optimizer.param_groups[0].get("lr")
            self.loss.lr = float(lr) if isinstance(lr, int | float) else None
        self.loss.epoch = int(state.epoch or 0)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.loss.finish()


def watch_loss(loss_fn: LossFunc | None = None, run: Run | None = None, **init_kwargs: Any) -> WatchedLoss:
    """Wrap `loss_fn(outputs, labels, num_items_in_batch=...)` (default: `soft_or_hard_cross_entropy`) for
    `Trainer(compute_loss_func=...)`, logging every training batch to `run`, or to a run made at the first
    batch by `collapsewatch.init(**init_kwargs)`. Pass `callbacks=[loss.callback]` too: it supplies the
    learning rate and epoch and finishes the run when training ends (an exception that ends the process
    still ends the run, failed, at exit). Only rank 0 logs under torch.distributed."""
    if run is not None and init_kwargs:
        raise ValueError(f"pass either run= or collapsewatch.init() arguments, not both: {sorted(init_kwargs)}")
    return WatchedLoss(loss_fn, run, init_kwargs)


def _logits(outputs: Any) -> torch.Tensor:
    logits = outputs["logits"] if isinstance(outputs, dict) else getattr(outputs, "logits", None)
    if logits is None:
        logits = outputs[0] if isinstance(outputs, tuple | list) else None
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"watch_loss: the model's outputs hold no logits tensor ({type(outputs).__name__})")
    return logits


def _rows(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C) logits and their targets. Per-token logits (B, L, C) are flattened and the ignored positions
    dropped: boolean indexing, a sync point per batch (sequence classification never takes this path)."""
    if logits.ndim == 2:
        return logits, labels
    logits = logits.reshape(-1, logits.shape[-1])
    if labels.dtype.is_floating_point:
        return logits, labels.reshape(-1, labels.shape[-1])
    labels = labels.reshape(-1)
    keep = labels != IGNORE_INDEX
    return logits[keep], labels[keep]


def _is_rank_zero() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
