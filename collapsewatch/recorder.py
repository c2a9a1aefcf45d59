"""A user's batches as statistics chunks, computed by trainer/monitor.py from the logits and targets alone.

`record()` keeps detached views of the tensors the loop made anyway (no copy, no kernel, no sync). A chunk
stacks them and computes every statistic at once (`trainer.monitor.rows_from_logits`: what a loss would
have held, its soft cross-entropy included), and `trainer.host_copies` ships it to the host without
waiting on CUDA. A batch of another shape or settings flushes first, so a chunk always stacks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import torch

from trainer.host_copies import HostCopies
from trainer.monitor import ChunkMeta, as_distributions, chunk_from_rows, rows_from_logits
from trainer.records import BATCH_COLUMNS, BatchChunk

# what a user's loop does not hand over: never recorded, left out of its chunks
NEVER_MEASURED = frozenset({"loss_entropy", "loss_final_l2", "head_weight_norm"})
_LOSS, _GRAD, _CLIPPED = (BATCH_COLUMNS.index(n) for n in ("loss", "grad_norm", "clipped"))
_LOSS_CE = BATCH_COLUMNS.index("loss_ce")


@dataclass
class Recorded:
    """One chunk read back: what is stored, what the detector reads, and the first chunk's raw targets."""

    chunk: BatchChunk  # the statistics recorded; columns the loop never gave are left out
    detector_view: BatchChunk  # every column: the loss is the computed soft CE where none was given, grad 0
    targets: np.ndarray | None  # (N, C) raw targets as distributions, with the first chunk only
    temperature: float
    label_smoothing: float
    batch_size: int
    device: str


class _Key(NamedTuple):
    """What every batch of one chunk shares, so that they stack and are read alike."""

    logits_shape: tuple[int, ...]
    targets_shape: tuple[int, ...]
    logits_dtype: torch.dtype
    targets_dtype: torch.dtype
    device: torch.device
    temperature: float
    label_smoothing: float
    loss_kind: str  # "tensor" | "float" | "none"
    grad_kind: str
    lr_given: bool


@dataclass
class _Meta:
    chunk: ChunkMeta
    key: _Key
    losses: list[float] | None  # host values when the loop passed Python numbers
    grads: list[float] | None
    with_targets: bool


def _kind(value: Any) -> str:
    return "none" if value is None else ("tensor" if isinstance(value, torch.Tensor) else "float")


# a chunk also ends when the tensors it keeps alive reach this many bytes (many classes, large batches)
MAX_CHUNK_BYTES = 64 * 2**20


def signature(logits: torch.Tensor, targets: torch.Tensor) -> tuple[Any, ...]:
    """What a batch's tensors share with the batches they may stack with (shapes, dtypes, device): a few
    attribute reads, so a loop's batch is checked only when it changes."""
    return (logits.shape, targets.shape, logits.dtype, targets.dtype, logits.device)


class LogitsRecorder:
    """Per-batch references in, `Recorded` chunks out (`ready()`), in step order."""

    def __init__(self, capacity: int, *, deploy_temperature: float = 1.0, max_grad_norm: float | None = None) -> None:
        self.capacity, self.deploy_temperature, self.max_grad_norm = capacity, deploy_temperature, max_grad_norm
        self._batches: list[tuple[torch.Tensor, torch.Tensor, Any, Any]] = []  # logits, targets, loss, grad
        self._steps: list[int] = []
        self._epochs: list[int] = []
        self._lrs: list[float] = []
        self._key: _Key | None = None
        self._same: tuple[Any, ...] | None = None  # what the batches of the chunk share (cheap to compare)
        self._limit = capacity  # batches in this chunk: the capacity, or fewer for large tensors
        self._since = time.perf_counter()
        self._first = True
        self._copies: HostCopies[_Meta] = HostCopies()

    @property
    def full(self) -> bool:
        return len(self._steps) >= self._limit

    @property
    def flushed(self) -> bool:
        """Whether a chunk has been flushed (the first carries the targets the detector's profile comes from)."""
        return not self._first

    @property
    def pending(self) -> bool:
        """Whether flushed chunks wait for `ready()`."""
        return len(self._copies) > 0

    def __len__(self) -> int:
        """Batches recorded since the last flush."""
        return len(self._steps)

    def record(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        *,
        loss: Any,
        grad_norm: Any,
        lr: float | None,
        step: int,
        epoch: int,
        temperature: float,
        label_smoothing: float,
        tensors: tuple[Any, ...] | None = None,
    ) -> None:
        """One batch: raw logits (B, C), targets (B, C) or (B,) class indices, loss and grad norm as 0-d
        tensors, numbers or None. References only: detach() is a view, no kernel runs. `tensors`: the
        batch's `signature`, when the caller has it."""
        same = (tensors or signature(logits, targets), temperature, label_smoothing, type(loss), type(grad_norm),
                lr is None)  # fmt: skip
        if same != self._same:
            self._new_chunk(same, logits, targets, loss, grad_norm, lr, temperature, label_smoothing)
        if isinstance(loss, torch.Tensor):
            loss = loss.detach()
        if isinstance(grad_norm, torch.Tensor):
            grad_norm = grad_norm.detach()
        self._batches.append((logits.detach(), targets.detach() if targets.requires_grad else targets, loss, grad_norm))
        self._steps.append(step)
        self._epochs.append(epoch)
        self._lrs.append(math.nan if lr is None else float(lr))

    def _new_chunk(self, same: tuple[Any, ...], logits: torch.Tensor, targets: torch.Tensor, loss: Any,
                   grad_norm: Any, lr: float | None, temperature: float, label_smoothing: float) -> None:  # fmt: skip
        """A batch unlike the chunk's: the chunk is flushed and the next one keyed by this batch."""
        self.flush()
        self._same = same
        self._key = _Key(
            tuple(logits.shape), tuple(targets.shape), logits.dtype, targets.dtype, logits.device,
            temperature, label_smoothing, _kind(loss), _kind(grad_norm), lr is not None,
        )  # fmt: skip
        held = logits.element_size() * logits.numel() + targets.element_size() * targets.numel()
        self._limit = max(1, min(self.capacity, MAX_CHUNK_BYTES // max(1, held)))

    def flush(self) -> None:
        n = len(self._steps)
        if n == 0 or self._key is None:
            return
        now = time.perf_counter()
        key, batches, with_targets = self._key, self._batches, self._first
        _, _, losses, grads = zip(*batches, strict=True)
        compute = partial(
            _chunk_rows, batches, key,
            max_grad_norm=self.max_grad_norm, deploy_temperature=self.deploy_temperature, with_targets=with_targets,
        )  # fmt: skip
        meta = _Meta(
            chunk=ChunkMeta(self._steps, self._epochs, self._lrs, n * key.logits_shape[0], now - self._since),
            key=key,
            losses=[float(v) for v in losses] if key.loss_kind == "float" else None,
            grads=[float(v) for v in grads] if key.grad_kind == "float" else None,
            with_targets=with_targets,
        )
        self._copies.submit(compute, meta)
        self._first = False
        self._batches, self._steps, self._epochs, self._lrs, self._since = [], [], [], [], now

    def ready(self, wait: bool = False) -> list[Recorded]:
        """Chunks whose copy has landed; with `wait`, all of them (a sync point, used at the end)."""
        return [self._recorded(arrays, meta) for arrays, meta in self._copies.ready(wait)]

    def _recorded(self, arrays: tuple[np.ndarray, ...], meta: _Meta) -> Recorded:
        full = chunk_from_rows(arrays[0], meta.chunk)
        values = full.values
        if meta.losses is not None:
            values[:, _LOSS] = meta.losses
        if meta.grads is not None:
            grads = np.asarray(meta.grads, dtype=np.float64)
            values[:, _GRAD] = grads
            values[:, _CLIPPED] = grads > self.max_grad_norm if self.max_grad_norm is not None else 0.0
        key = meta.key
        left_out = set(NEVER_MEASURED)
        if key.loss_kind == "none":
            left_out.add("loss")
        if key.grad_kind == "none" or self.max_grad_norm is None:
            left_out.add("clipped")  # without the loop's clipping threshold, unknown
        if key.grad_kind == "none":
            left_out.add("grad_norm")
        if not key.lr_given:
            left_out.add("lr")
        keep = [j for j, name in enumerate(BATCH_COLUMNS) if name not in left_out]
        chunk = BatchChunk(
            steps=full.steps,
            epochs=full.epochs,
            values=np.ascontiguousarray(values[:, keep]),
            class_hist=full.class_hist,
            columns=tuple(BATCH_COLUMNS[j] for j in keep),
        )
        view = values.copy()
        if key.loss_kind == "none":  # a non-finite soft CE still raises nonfinite_loss
            view[:, _LOSS] = view[:, _LOSS_CE]
        if key.grad_kind == "none":  # no gradient rule can fire on a norm never measured
            view[:, _GRAD] = 0.0
        return Recorded(
            chunk=chunk,
            detector_view=BatchChunk(full.steps, full.epochs, view, full.class_hist),
            targets=arrays[1] if meta.with_targets else None,
            temperature=key.temperature,
            label_smoothing=key.label_smoothing,
            batch_size=key.logits_shape[0],
            device=str(key.device),
        )


def _chunk_rows(
    batches: list[tuple[torch.Tensor, torch.Tensor, Any, Any]],
    key: _Key,
    *,
    max_grad_norm: float | None,
    deploy_temperature: float,
    with_targets: bool,
) -> tuple[torch.Tensor, ...]:
    """A chunk's statistics rows (and its raw targets (n * B, C) when `with_targets`), from its batches."""
    logits_list, targets_list, losses, grads = zip(*batches, strict=True)
    logits = torch.stack(logits_list)
    if logits.dtype not in (torch.float32, torch.float64):  # half-precision logits: statistics in float32
        logits = logits.float()
    raw = as_distributions(torch.stack(targets_list), logits.shape[-1], logits.dtype)  # (n, B, C)
    zeros = logits.new_zeros(len(batches))
    columns = [
        _stacked(losses, logits) if key.loss_kind == "tensor" else zeros,
        torch.full_like(zeros, math.nan),  # loss_ce: computed from the logits
        zeros,
        zeros,
        _stacked(grads, logits) if key.grad_kind == "tensor" else zeros,
        zeros,
    ]
    rows = rows_from_logits(
        logits,
        raw,
        torch.stack(columns, dim=1),
        temperature=key.temperature,
        label_smoothing=key.label_smoothing,
        max_grad_norm=max_grad_norm,
        deploy_temperature=deploy_temperature,
    )
    return (rows, raw.reshape(-1, raw.shape[-1])) if with_targets else (rows,)


def _stacked(values: tuple[torch.Tensor, ...], like: torch.Tensor) -> torch.Tensor:
    """The batches' 0-d tensors as one (n,) tensor on the logits' device, in their dtype."""
    return torch.stack([v.reshape(()) for v in values]).to(device=like.device, dtype=like.dtype)
