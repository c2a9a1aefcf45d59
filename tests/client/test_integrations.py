"""The framework adapters against a real server: a Lightning module (the tiny digits CNN) with
CollapseWatchCallback, and a tiny BERT built from a config, trained by transformers.Trainer through
watch_loss. Each skips when its extra is not installed."""

from __future__ import annotations

import math
import os
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from factories import DIGITS_BATCH, DIGITS_STEPS_PER_EPOCH, api_get, digits_soft_targets, tiny_cnn

from collapsewatch.recorder import NEVER_MEASURED
from trainer import BATCH_COLUMNS

HEALTHY_LR, COLLAPSING_LR = 0.01, 0.3  # Adam on the tiny CNN, as in test_client.py


# --- Lightning ----------------------------------------------------------------------------------------
def _fit_digits(callback: Any, lr: float, epochs: int = 2, fail_at: int | None = None) -> Any:
    pl = pytest.importorskip("pytorch_lightning", reason="the lightning extra is not installed")

    class Digits(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_cnn()

        def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
            if batch_idx == fail_at:
                raise RuntimeError(f"bad batch {batch_idx}")
            x, t = batch
            logits = self.net(x)
            loss = -(t * F.log_softmax(logits, -1)).sum(-1).mean()
            return {"loss": loss, "logits": logits, "targets": t}

        def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
            x, t = batch
            return {"logits": self.net(x), "targets": t}

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=lr)

    torch.manual_seed(0)
    x, t = digits_soft_targets()
    data = torch.utils.data.TensorDataset(x, t)
    train = torch.utils.data.DataLoader(data, batch_size=DIGITS_BATCH, shuffle=True)
    val = torch.utils.data.DataLoader(torch.utils.data.Subset(data, range(256)), batch_size=128)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", callbacks=[callback], enable_checkpointing=False, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(Digits(), train, val)
    return trainer


def test_a_lightning_module_streams_every_training_step(server_url: str) -> None:
    lightning = pytest.importorskip("collapsewatch.integrations.lightning", reason="the lightning extra is absent")
    callback = lightning.CollapseWatchCallback(
        name="lightning digits", config={"lr": HEALTHY_LR}, server=server_url, heartbeat_seconds=0.2
    )
    trainer = _fit_digits(callback, HEALTHY_LR)
    run = callback.run
    assert run is not None and run.finished and trainer.global_step == 2 * DIGITS_STEPS_PER_EPOCH
    stored = api_get(server_url, f"/runs/{run.id}")
    assert (stored["status"], stored["steps"], stored["last_step"]) == (
        "completed", trainer.global_step, trainer.global_step - 1,
    )  # fmt: skip
    assert stored["external"] is True and stored["num_classes"] == 10
    stats = api_get(server_url, f"/runs/{run.id}/stats")
    assert stats["steps"] == list(range(trainer.global_step)) and stats["epochs"][-1] == 1
    for name in set(BATCH_COLUMNS) - NEVER_MEASURED - {"clipped", "grad_norm"}:
        assert all(v is not None and math.isfinite(v) for v in stats["columns"][name]), name
    assert stats["columns"]["lr"] == [HEALTHY_LR] * trainer.global_step, "the optimizer's learning rate"
    assert stats["columns"]["loss"][-1] < stats["columns"]["loss"][0], "the CNN learns"
    evals = api_get(server_url, f"/runs/{run.id}/evals")
    assert len(evals) == 2, "one evaluation per validation epoch"
    assert run.warnings == []


def test_a_collapsing_lightning_module_gets_its_warning(server_url: str) -> None:
    lightning = pytest.importorskip("collapsewatch.integrations.lightning", reason="the lightning extra is absent")
    callback = lightning.CollapseWatchCallback(
        name="lightning too hot", config={"lr": COLLAPSING_LR}, server=server_url, heartbeat_seconds=0.2
    )
    _fit_digits(callback, COLLAPSING_LR, epochs=3)  # the detector waits out its warm-up
    run = callback.run
    assert run is not None and any(w.severity == "critical" for w in run.warnings), run.warnings
    stored = api_get(server_url, f"/runs/{run.id}")
    assert stored["status"] == "completed" and stored["max_severity"] == "critical"
    server_warnings = api_get(server_url, f"/runs/{run.id}/warnings")
    assert [(w["kind"], w["step"]) for w in server_warnings] == [(w.kind, w.step) for w in run.warnings]


def test_a_training_step_that_raises_ends_the_run_failed(server_url: str) -> None:
    lightning = pytest.importorskip("collapsewatch.integrations.lightning", reason="the lightning extra is absent")
    callback = lightning.CollapseWatchCallback(name="lightning fails", server=server_url, heartbeat_seconds=0.2)
    with pytest.raises(RuntimeError, match="bad batch 12"):
        _fit_digits(callback, HEALTHY_LR, epochs=1, fail_at=12)
    run = callback.run
    assert run is not None and run.finished, "on_exception finishes the run"
    stored = api_get(server_url, f"/runs/{run.id}")
    assert (stored["status"], stored["error"], stored["steps"]) == ("failed", "RuntimeError: bad batch 12", 12)


def test_the_callback_names_the_keys_a_training_step_must_return() -> None:
    lightning = pytest.importorskip("collapsewatch.integrations.lightning", reason="the lightning extra is absent")
    callback = lightning.CollapseWatchCallback(mode="offline")
    with pytest.raises(ValueError, match="'logits' and 'targets'"):
        callback._pair({"loss": torch.tensor(1.0)}, "training_step")
    with pytest.raises(ValueError, match="either run= or"):
        lightning.CollapseWatchCallback(run=object(), name="x")  # type: ignore[arg-type]


# --- Hugging Face Trainer -------------------------------------------------------------------------------
class _Tokens(torch.utils.data.Dataset):
    """Random token sequences whose label is whether token 7 occurs: a task a tiny BERT can start on."""

    def __init__(self, n: int, soft: bool) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 50, (n, 12), generator=g)
        hard = (self.ids == 7).any(1).long()
        self.labels = F.one_hot(hard, 2).float() * 0.8 + 0.1 if soft else hard

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


@pytest.mark.parametrize("soft", [False, True], ids=["class indices", "soft labels"])
def test_a_tiny_bert_trained_by_the_hf_trainer_logs_every_step(
    server_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, soft: bool
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers", reason="the transformers extra is not installed")
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    from collapsewatch.integrations.transformers import watch_loss

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        num_labels=2, max_position_embeddings=16,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(config)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), per_device_train_batch_size=8, per_device_eval_batch_size=16,
        num_train_epochs=2, learning_rate=1e-3, logging_steps=1, eval_strategy="epoch", save_strategy="no",
        report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=0,
    )  # fmt: skip
    loss = watch_loss(name="tiny bert", config={"lr": 1e-3}, server=server_url, heartbeat_seconds=0.2)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=_Tokens(48, soft), eval_dataset=_Tokens(16, soft),
        compute_loss_func=loss, callbacks=[loss.callback],
    )  # fmt: skip
    trainer.train()
    steps = trainer.state.global_step
    run = loss.run
    assert steps == 12 and run is not None and run.finished, "the callback finishes the run at on_train_end"
    stored = api_get(server_url, f"/runs/{run.id}")
    assert (stored["status"], stored["steps"], stored["num_classes"]) == ("completed", steps, 2)
    stats = api_get(server_url, f"/runs/{run.id}/stats")
    assert stats["steps"] == list(range(steps)), "every training batch, none of the evaluation's"
    reported = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert stats["columns"]["loss"] == pytest.approx(reported, rel=1e-5, abs=1e-6), "the loss Trainer reports"
    assert stats["columns"]["lr"][0] == pytest.approx(1e-3) and stats["columns"]["lr"][-1] < 1e-3, "linear decay"
    assert stats["epochs"][0] == 0 and stats["epochs"][-1] == 1
    assert all(v is not None and math.isfinite(v) for v in stats["columns"]["entropy_mean"])
    # the default loss, given the item count Trainer itself passes, is the plain mean cross-entropy
    batch = {k: torch.stack([_Tokens(8, soft)[i][k] for i in range(8)]) for k in ("input_ids", "labels")}
    with torch.no_grad():
        outputs = model(input_ids=batch["input_ids"])
    counted = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
    expected = F.cross_entropy(outputs.logits, batch["labels"])  # probabilities or class indices
    assert loss.loss_fn(outputs, batch["labels"], num_items_in_batch=counted) == pytest.approx(expected.item())
    assert "HF_HUB_OFFLINE" in os.environ
