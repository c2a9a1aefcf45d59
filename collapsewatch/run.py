"""`init()` and the `Run` a user's loop logs to: batches, evaluations, warnings, the end.

Per batch the loop pays a few list appends: statistics are computed per chunk on the tensors' device and
read back without waiting (no host sync on CUDA), the detector reads each chunk as it lands, and a
background thread sends everything (collapsewatch/transport.py). `log_eval` is a sync point, once per
evaluation. The run ends with `finish()`, when a `with` block exits (failed, with the exception's type,
if it raised; cancelled on Ctrl-C), or at interpreter exit (failed if an uncaught exception ends it).
"""

from __future__ import annotations

import atexit
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from collapsewatch.detection import Watch
from collapsewatch.recorder import LogitsRecorder, Recorded, signature
from collapsewatch.scalars import ScalarChunk, ScalarRecorder, check_names
from trainer.evaluation import evaluate_predictions, soft_cross_entropy
from trainer.monitor import as_distributions
from trainer.records import BatchChunk, CollapseWarning, EvalRecord

log = logging.getLogger("collapsewatch")
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
MAX_FLUSH_BATCHES = 1024  # a chunk is one request of the ingest API, which takes up to this many batches
FIRST_CHUNK_BATCHES = 8  # the first chunk holds at least this many (or flush_batches): its targets are the profile


class Transport(Protocol):
    run_id: int | None
    cancel_requested: bool
    dropped_batches: int
    failure: str | None

    @property
    def url(self) -> str | None: ...
    def start(self, info: dict[str, Any]) -> None: ...
    def send_chunk(self, chunk: BatchChunk) -> None: ...
    def send_eval(self, record: EvalRecord) -> None: ...
    def send_warning(self, warning: CollapseWarning) -> None: ...
    def send_scalars(self, chunk: ScalarChunk) -> None: ...
    def finish(self, status: str, error: str | None, duration_s: float, timeout: float) -> bool: ...


class CollapseDetected(Exception):
    """Raised by `log_batch` after the detector raised a warning at or above `init(stop_on=...)`."""

    def __init__(self, warning: CollapseWarning) -> None:
        self.warning = warning
        advice = f" Advice: {warning.advice.message}" if warning.advice else ""
        super().__init__(f"{warning.severity} {warning.kind} since step {warning.step}: {warning.message}{advice}")


class Run:
    """One run of a user's loop. Made by `collapsewatch.init`; see the module docstring."""

    def __init__(
        self,
        *,
        name: str | None,
        config: Mapping[str, Any],
        transport: Transport,
        steps_per_epoch: int | None,
        stop_on: str | None,
        on_warning: Callable[[CollapseWarning], Any] | None,
        flush_batches: int,
        flush_seconds: float,
        flush_timeout: float,
    ) -> None:
        self.name, self.config = name, dict(config)
        self.warnings: list[CollapseWarning] = []
        self._transport, self._on_warning = transport, on_warning
        self._stop_rank = SEVERITY_RANK[stop_on] if stop_on else None
        self._flush_seconds, self._flush_timeout = flush_seconds, flush_timeout
        self._temperature = _number(self.config, "temperature", 1.0)
        self._smoothing = _number(self.config, "label_smoothing", 0.0)
        self._deploy = _number(self.config, "deploy_temperature", 1.0)
        self._recorder = LogitsRecorder(
            min(flush_batches, MAX_FLUSH_BATCHES),
            deploy_temperature=self._deploy,
            max_grad_norm=_number(self.config, "max_grad_norm", None),
        )
        self._watch = Watch(self.config, steps_per_epoch)
        self._scalars = ScalarRecorder()
        self._num_classes: int | None = None
        self._checked: tuple[Any, ...] | None = None  # the signature of the last batch _check passed
        self._next_step, self._epoch = 0, 0
        self._last_flush = self._started = time.perf_counter()
        self._stop: CollapseWarning | None = None
        self._started_sent = False
        self.finished = False
        _watch_uncaught_exceptions()
        atexit.register(self._at_exit)

    @property
    def id(self) -> int | None:
        """The run's id on the server; None until the sender has created it."""
        return self._transport.run_id

    @property
    def url(self) -> str | None:
        """The run's page (server mode, once created)."""
        return self._transport.url

    @property
    def dropped_batches(self) -> int:
        """Batches that never reached the server (its buffer overflowed, or it refused them)."""
        return self._transport.dropped_batches

    @property
    def cancel_requested(self) -> bool:
        """Someone pressed Cancel on the run's page: the loop may stop (nothing stops it for you)."""
        return self._transport.cancel_requested

    # --- logging --------------------------------------------------------------------------------
    def log_batch(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        *,
        loss: torch.Tensor | float | None = None,
        temperature: float | None = None,
        label_smoothing: float | None = None,
        grad_norm: torch.Tensor | float | None = None,
        lr: float | None = None,
        step: int | None = None,
        epoch: int | None = None,
        **scalars: torch.Tensor | float,
    ) -> None:
        """One batch: raw logits (B, C) and its targets, soft (B, C) or class indices (B,), kept by reference
        (do not overwrite them in place afterwards). `temperature` and `label_smoothing` are those the loss
        used (default: the run config's, else 1 and 0); `loss` and `grad_norm` as 0-d tensors or numbers.
        `step` defaults to the count of logged batches. Any other `name=value` (a number or a 1-element tensor,
        kept by reference) is a scalar of your own, stored and charted beside the statistics. Raises
        CollapseDetected once `stop_on` is reached."""
        if self.finished:
            raise RuntimeError(f"run {self.name!r} is finished: start another with collapsewatch.init()")
        if self._stop is not None:
            warning, self._stop = self._stop, None
            raise CollapseDetected(warning)
        try:
            tensors = signature(logits, targets)
        except AttributeError:  # not tensors: _check says what is wrong
            tensors = None
        if tensors is None or tensors != self._checked:  # checked once per shape, dtype and device
            self._check(logits, targets)
            self._checked = tensors
        if scalars:
            check_names(scalars, self._scalars.names)
        step = self._next_step if step is None else int(step)
        if step < self._next_step:
            raise ValueError(f"steps must increase: step {step} after step {self._next_step - 1}")
        self._next_step, self._epoch = step + 1, self._epoch if epoch is None else int(epoch)
        self._recorder.record(
            logits,
            targets,
            loss=loss,
            grad_norm=grad_norm,
            lr=lr,
            step=step,
            epoch=self._epoch,
            temperature=self._temperature if temperature is None else float(temperature),
            label_smoothing=self._smoothing if label_smoothing is None else float(label_smoothing),
            tensors=tensors,
        )
        if scalars:
            self._scalars.record(step, scalars)
        now = time.perf_counter()
        if not self._recorder.flushed and len(self._recorder) == 1:
            self._last_flush = now  # the clock starts at the first batch, not at init
        # the first chunk's targets are the detector's reference: it waits for a few batches of them
        due = now - self._last_flush >= self._flush_seconds
        if self._recorder.full or (due and (self._recorder.flushed or len(self._recorder) >= FIRST_CHUNK_BATCHES)):
            self._recorder.flush()
            self._scalars.flush()
            self._last_flush = now
        if self._recorder.pending:
            self._deliver(self._recorder.ready())
        if self._scalars.names:
            for chunk in self._scalars.ready():
                self._transport.send_scalars(chunk)

    def log_eval(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        *,
        step: int | None = None,
        epoch: int | None = None,
        temperature: float | None = None,
        objective: float | None = None,
    ) -> EvalRecord:
        """A full evaluation of held-out predictions (logits (N, C), targets soft or class indices):
        trainer.evaluation's metrics, as trained (at `temperature`) and as deployed (the config's
        `deploy_temperature`, default 1). `objective` defaults to the soft cross-entropy. A sync point."""
        self._check(logits, targets)
        t_eval = self._temperature if temperature is None else float(temperature)
        with torch.no_grad():  # a sync point, once per evaluation: the metrics are computed on the host
            z = logits.detach().double()
            probs = F.softmax(z / t_eval, dim=-1).cpu().numpy()
            deployed = F.softmax(z / self._deploy, dim=-1).cpu().numpy()
            t = as_distributions(targets.detach(), z.shape[-1], torch.float64).cpu().numpy()
        value = soft_cross_entropy(probs, t) if objective is None else float(objective)
        step = self._next_step - 1 if step is None else int(step)
        record = evaluate_predictions(
            probs, t, value, max(step, 0), self._epoch if epoch is None else int(epoch), deployed_probs=deployed
        )
        if not self.finished:
            self._transport.send_eval(record)
            for warning in self._watch.observe_eval(record):
                self._warn(warning)
        return record

    def _check(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Shapes only: nothing is read from the device."""
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[1] < 2:
            raise ValueError(f"logits must be a (batch, classes) tensor with 2 classes or more, got {_shape(logits)}")
        soft = isinstance(targets, torch.Tensor) and targets.dtype.is_floating_point
        if soft and targets.shape != logits.shape:
            raise ValueError(f"soft targets must have the logits' shape {tuple(logits.shape)}, got {_shape(targets)}")
        if not soft and (not isinstance(targets, torch.Tensor) or targets.shape != logits.shape[:1]):
            raise ValueError(f"class-index targets must have shape ({logits.shape[0]},), got {_shape(targets)}")
        if self._num_classes is None:
            self._num_classes = int(logits.shape[1])
        elif logits.shape[1] != self._num_classes:
            raise ValueError(f"this run has {self._num_classes} classes; these logits have {logits.shape[1]}")

    def _deliver(self, recorded: list[Recorded]) -> None:
        for rec in recorded:
            warnings = self._watch.observe(rec)
            if not self._started_sent and self._watch.detector is not None:
                self._transport.start({"profile": self._watch.detector.profile, "device": rec.device})
                self._started_sent = True
            self._transport.send_chunk(rec.chunk)
            for warning in warnings:
                self._warn(warning)

    def _warn(self, warning: CollapseWarning) -> None:
        self.warnings.append(warning)
        self._transport.send_warning(warning)
        rank = SEVERITY_RANK.get(warning.severity, 0)
        if self._stop_rank is not None and rank >= self._stop_rank and self._stop is None:
            self._stop = warning
        if self._on_warning is not None:
            self._on_warning(warning)

    # --- the end --------------------------------------------------------------------------------
    def finish(self, status: str = "completed", error: str | None = None) -> bool:
        """Flush what is recorded and end the run (waiting up to `flush_timeout` for the sender). A run whose
        loss went non-finite ends "diverged" rather than "completed", as built-in runs do. Returns whether
        everything reached the server; a second call does nothing."""
        if self.finished:
            return True
        self.finished = True
        atexit.unregister(self._at_exit)
        try:
            self._recorder.flush()
            self._scalars.flush()
            self._deliver(self._recorder.ready(wait=True))  # a sync point, at the end
            for chunk in self._scalars.ready(wait=True):
                self._transport.send_scalars(chunk)
        except Exception:
            log.exception("collapsewatch: the last statistics of run %s could not be computed", self.id)
        if status == "completed" and any(w.kind == "nonfinite_loss" for w in self.warnings):
            status = "diverged"
        duration = time.perf_counter() - self._started
        return self._transport.finish(status, error, duration, self._flush_timeout)

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.finish()
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("cancelled", "KeyboardInterrupt")
        else:
            self.finish("failed", f"{exc_type.__name__}: {exc}")

    def _at_exit(self) -> None:
        exc = _uncaught[0]
        if exc is None:
            self.finish()
        else:
            self.finish("failed", f"{type(exc).__name__}: {exc}")


def _number(config: Mapping[str, Any], key: str, default: float | None) -> float | None:
    """A setting of the loop from its config: a finite number (a temperature above 0), else `default`."""
    value = config.get(key, default)
    if value is None or value is default:
        return default
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (key.endswith("temperature") and value <= 0):
        log.warning("collapsewatch: config %s=%r is not a usable number; statistics use %r", key, value, default)
        return default
    return float(value)


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


# The exception that ends the interpreter, if one does: sys.excepthook runs before atexit handlers.
_uncaught: list[BaseException | None] = [None]


def _watch_uncaught_exceptions() -> None:
    previous = sys.excepthook
    if getattr(previous, "_collapsewatch", False):
        return

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        _uncaught[0] = exc
        previous(exc_type, exc, tb)

    hook._collapsewatch = True  # type: ignore[attr-defined]
    sys.excepthook = hook
