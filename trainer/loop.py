"""`train(config, sink, should_stop)`: the training loop, read top to bottom.

Statistics are computed inside the step from what the loss already holds and reach the sink in
chunks; the only per-batch host work is bookkeeping. A non-finite loss ends the run as diverged.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from trainer.config import TrainConfig, from_dict
from trainer.data import SoftLabelData, load_data
from trainer.detector import CollapseDetector
from trainer.evaluation import evaluate_predictions
from trainer.losses import LossParts, balanced_class_weights, objective_from_config, smooth_targets
from trainer.memory_limit import describe_out_of_memory
from trainer.model import MLP
from trainer.monitor import StatsRecorder
from trainer.records import BATCH_COLUMNS, BatchChunk, CollapseWarning, EvalRecord, RunInfo, TrainResult
from trainer.sinks import NullSink, Sink


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
    return torch.device(name)


def resolve_class_weights(cfg: TrainConfig, train_targets: torch.Tensor) -> torch.Tensor | None:
    if cfg.class_weights is None:
        return None
    if cfg.class_weights == "balanced":  # from the targets the weights multiply: the smoothed ones
        return balanced_class_weights(smooth_targets(train_targets, cfg.label_smoothing))
    return torch.tensor(cfg.class_weights, dtype=torch.float32, device=train_targets.device)


def get_lr(cfg: TrainConfig, step: int, total_steps: int) -> float:
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))
    return cfg.lr


def make_optimizer(cfg: TrainConfig, model: MLP) -> torch.optim.Optimizer:
    """The base decay on every parameter; the head's weight in a group of its own with the extra decay
    on top, decoupled under AdamW (lr * wd * w per step, whatever the gradient's scale)."""
    head = model.head.weight
    groups = [
        {"params": [p for p in model.parameters() if p is not head], "weight_decay": cfg.weight_decay},
        {"params": [head], "weight_decay": cfg.weight_decay + cfg.final_layer_weight_decay},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)


# A rank's share of a batch's loss (trainer/distributed.py `loss_share`): (logits, its parts) -> the parts it
# records, with `trained` scaled so that DDP's averaged gradient is the whole batch's
LossShare = Callable[[torch.Tensor, LossParts], LossParts]


def optimization_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    t: torch.Tensor,
    cfg: TrainConfig,
    class_weights: torch.Tensor | None,
    share: LossShare | None = None,
) -> tuple[torch.Tensor, LossParts, torch.Tensor]:
    """Forward, objective, backward, clipping, update; returns logits (B, C), the loss parts, grad norm."""
    logits = model(x)  # (B, C)
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)  # a run on several processes
    head = model.module.head if ddp else model.head
    parts = objective_from_config(logits, t, head.weight, cfg, class_weights)
    if share is not None:
        parts = share(logits, parts)
    optimizer.zero_grad(set_to_none=True)
    parts.trained.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    if cfg.max_grad_norm is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm, foreach=True)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
    optimizer.step()
    return logits, parts, grad_norm


def record_step(
    recorder: StatsRecorder,
    logits: torch.Tensor,
    parts: LossParts,
    grad_norm: torch.Tensor,
    step: int,
    epoch: int,
    lr: float,
) -> None:
    """Hand one step's tensors to the recorder: references only, the statistics come per chunk."""
    recorder.record(logits, parts, grad_norm, step, epoch, lr)


class _Run:
    """State of one training run; `train()` below drives it."""

    def __init__(self, cfg: TrainConfig, data: SoftLabelData, sink: Sink, device: torch.device) -> None:
        self.cfg, self.sink, self.device = cfg, sink, device
        torch.manual_seed(cfg.seed)
        self.x = torch.from_numpy(data.x_train).to(device)
        self.t = torch.from_numpy(data.t_train).to(device)
        self.x_val = torch.from_numpy(data.x_val).to(device)
        self.t_val = torch.from_numpy(data.t_val).to(device)
        c = data.t_train.shape[1]
        self.model = MLP(data.x_train.shape[1], cfg.hidden_sizes, c, cfg.dropout, cfg.activation).to(device)
        self.net: torch.nn.Module = self.model  # what trains: a rank's run wraps the model in DDP
        self.optimizer = make_optimizer(cfg, self.model)
        self.class_weights = resolve_class_weights(cfg, self.t)
        self.steps_per_epoch = math.ceil(len(self.x) / cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.recorder = self.make_recorder(c)
        self.detector = CollapseDetector(cfg, data.profile, self.steps_per_epoch)
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.warnings: list[CollapseWarning] = []
        self.diverged_at: int | None = None
        self.last_eval: EvalRecord | None = None
        self.step = 0

    def make_recorder(self, num_classes: int) -> StatsRecorder:
        cfg = self.cfg
        return StatsRecorder(
            num_classes,
            self.device,
            capacity=cfg.flush_batches,
            max_grad_norm=cfg.max_grad_norm,
            temperature=cfg.temperature,
            deploy_temperature=cfg.deploy_temperature,
        )

    def split(self, idx: torch.Tensor) -> tuple[torch.Tensor, LossShare | None]:
        """The rows of batch `idx` this process trains, and its share of the batch's loss (None: all of it).
        A rank's run (trainer/ranks.py) trains its slice."""
        return idx, None

    def devices(self) -> str:
        return str(self.device)

    def train_step(self, idx: torch.Tensor, epoch: int) -> None:
        cfg = self.cfg
        rows, share = self.split(idx)
        x, t = self.x[rows], self.t[rows]
        lr = get_lr(cfg, self.step, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        logits, parts, grad_norm = optimization_step(self.net, self.optimizer, x, t, cfg, self.class_weights, share)
        if self.step % cfg.stats_interval == 0:
            record_step(self.recorder, logits, parts, grad_norm, self.step, epoch, lr)
        self.recorder.count(len(idx))
        self.step += 1

    def deliver(self, chunks: list[BatchChunk]) -> None:
        """Hand read-back chunks to the detector and the sink; note the first non-finite loss."""
        for chunk in chunks:
            self.sink.on_batches(chunk)
            self._warn(self.detector.observe_batches(chunk))
            loss = chunk.column("loss")
            bad = np.flatnonzero(~np.isfinite(loss))
            if bad.size and self.diverged_at is None:  # the detector has raised nonfinite_loss for it
                self.diverged_at = int(chunk.steps[bad[0]])

    def _warn(self, new: list[CollapseWarning]) -> None:
        for w in new:
            self.warnings.append(w)
            self.sink.on_warning(w)

    @torch.no_grad()
    def evaluate(self, epoch: int) -> None:
        # a sync point, once per evaluation: the metrics are computed on the host
        self.model.eval()
        logits = torch.cat([self.model(xb) for xb in self.x_val.split(4096)])
        parts = objective_from_config(logits, self.t_val, self.model.head.weight, self.cfg, self.class_weights)
        self.model.train()
        deployed = torch.softmax(logits.double() / self.cfg.deploy_temperature, dim=-1)
        record = evaluate_predictions(
            parts.probs.double().cpu().numpy(),
            self.t_val.double().cpu().numpy(),
            float(parts.total),
            self.step,
            epoch,
            deployed_probs=deployed.cpu().numpy(),
        )
        self.last_eval = record
        self.sink.on_eval(record)
        self._warn(self.detector.observe_eval(record))


# should_stop is called this many times while a run prepares, then once before every step
PREPARATION_CHECKS = 2


def train(
    config: TrainConfig | dict[str, Any],
    sink: Sink | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train one run; never raises for a training failure: the result's status says what happened."""
    cfg = config if isinstance(config, TrainConfig) else from_dict(config)
    sink = sink or NullSink()
    should_stop = should_stop or (lambda: False)
    if cfg.processes > 1:  # one process per rank, started and watched from here
        from trainer.launcher import launch

        return launch(cfg, sink, should_stop)
    started = time.perf_counter()
    run: _Run | None = None
    status, error, epoch = "completed", None, 0
    try:
        device = resolve_device(cfg.device)
        # a cancel is heard after the data is made and after the model is built (PREPARATION_CHECKS),
        # not only once training has started
        data = load_data(cfg.data)
        run = None if should_stop() else _Run(cfg, data, sink, device)
        if run is None or should_stop():
            status, run = "cancelled", None  # nothing started: no statistics to flush
        else:
            sink.on_start(_run_info(cfg, run, data))
            status, epoch = _loop(run, should_stop)
    except Exception as exc:  # the run fails; what was measured still reaches the sink
        status, error = "failed", describe_out_of_memory(exc) or f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    if run is not None:
        try:
            run.recorder.flush()
            run.deliver(run.recorder.ready(wait=True))
        except Exception as exc:
            status, error = "failed", error or f"{type(exc).__name__}: {exc}"
        if run.diverged_at is not None and status in ("completed", "cancelled"):
            status = "diverged"
    result = TrainResult(
        status=status,
        config=cfg.to_dict(),
        steps=run.step if run else 0,
        epochs=epoch,
        duration_s=time.perf_counter() - started,
        final_eval=run.last_eval if run else None,
        warnings=run.warnings if run else [],
        error=error,
    )
    sink.on_end(result)
    return result


def _loop(run: _Run, should_stop: Callable[[], bool]) -> tuple[str, int]:
    cfg = run.cfg
    last_flush = time.perf_counter()
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(run.x), generator=run.shuffle)
        if run.device.type == "cuda":  # pinned + non_blocking: a pageable copy would sync the host
            order = order.pin_memory().to(run.device, non_blocking=True)
        for idx in order.split(cfg.batch_size):
            if should_stop():
                return "cancelled", epoch
            run.train_step(idx, epoch)
            now = time.perf_counter()
            if run.recorder.full or now - last_flush >= cfg.flush_seconds:
                run.recorder.flush()
                last_flush = now
            run.deliver(run.recorder.ready())
            if run.diverged_at is not None:
                return "diverged", epoch
            if cfg.eval_interval and run.step % cfg.eval_interval == 0:
                run.evaluate(epoch)
        if not cfg.eval_interval:
            run.evaluate(epoch)
    if cfg.eval_interval and run.step % cfg.eval_interval != 0:
        run.evaluate(cfg.epochs - 1)
    return "completed", cfg.epochs


def _run_info(cfg: TrainConfig, run: _Run, data: SoftLabelData) -> RunInfo:
    weights = run.class_weights
    return RunInfo(
        config=cfg.to_dict(),
        device=run.devices(),
        num_classes=data.t_train.shape[1],
        columns=BATCH_COLUMNS,
        profile=data.profile,
        class_weights=weights.tolist() if weights is not None else [1.0] * data.t_train.shape[1],
        n_parameters=sum(p.numel() for p in run.model.parameters()),
        steps_per_epoch=run.steps_per_epoch,
    )
