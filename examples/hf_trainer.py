"""A Hugging Face `Trainer` watched by collapsewatch: a tiny BERT built from a config (nothing downloaded)
learns whether token 7 occurs in a random sequence, its loss computed and logged by `watch_loss`.
Needs `pip install collapsewatch[transformers]`; then:

    python examples/hf_trainer.py [--server http://127.0.0.1:8000] [--steps 60] [--soft]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is built from a config: nothing to fetch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from collapsewatch.integrations.transformers import watch_loss


class Sequences(torch.utils.data.Dataset):
    """Random sequences of 12 tokens; the label says whether token 7 occurs (soft: 0.9 / 0.1)."""

    def __init__(self, n: int, soft: bool, seed: int) -> None:
        self.ids = torch.randint(1, 50, (n, 12), generator=torch.Generator().manual_seed(seed))
        hard = (self.ids == 7).any(1).long()
        self.labels = F.one_hot(hard, 2).float() * 0.8 + 0.1 if soft else hard

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--soft", action="store_true", help="soft labels instead of class indices")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        num_labels=2, max_position_embeddings=16,
    )  # fmt: skip
    loss = watch_loss(name="examples/hf_trainer", config={"lr": args.lr, "soft": args.soft}, server=args.server)
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            output_dir=out, max_steps=args.steps, per_device_train_batch_size=16, learning_rate=args.lr,
            logging_steps=10, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
        )  # fmt: skip
        trainer = Trainer(
            model=BertForSequenceClassification(config), args=training,
            train_dataset=Sequences(2048, args.soft, seed=0),
            compute_loss_func=loss, callbacks=[loss.callback],  # the callback finishes the run
        )  # fmt: skip
        trainer.train()
    assert loss.run is not None
    print(f"{trainer.state.global_step} batches logged, {len(loss.run.warnings)} warnings: {loss.run.url}")


if __name__ == "__main__":
    main()
