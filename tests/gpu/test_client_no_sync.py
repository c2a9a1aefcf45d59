"""On CUDA, the client's log_batch never syncs the host: statistics are computed per chunk on the device and
read back asynchronously, whatever the loop hands over (soft targets or class indices, tensors or numbers)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from factories import DIGITS_BATCH, digits_soft_targets, tiny_cnn

import collapsewatch as cw

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("labels", [False, True], ids=["soft-targets", "class-indices"])
def test_log_batch_makes_no_host_sync(tmp_path, labels: bool) -> None:
    x, t = digits_soft_targets("cuda")
    targets = t.argmax(-1) if labels else t
    model = tiny_cnn().cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    run = cw.init(
        name="gpu", config={"max_grad_norm": 5.0}, database_url=f"sqlite:///{tmp_path / 'gpu.db'}",
        steps_per_epoch=29, flush_batches=8,
    )  # fmt: skip
    logged = 0
    for epoch in range(2):
        for idx in torch.randperm(len(x), device="cuda").split(DIGITS_BATCH):
            logits = model(x[idx])
            # class indices or soft targets: F.cross_entropy takes both
            loss = F.cross_entropy(logits, targets[idx])
            optimizer.zero_grad()
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0, foreach=True)
            optimizer.step()
            # sync debug mode "error" raises on any synchronizing call: on only around the client's own work
            torch.cuda.set_sync_debug_mode("error")
            try:
                run.log_batch(logits, targets[idx], loss=loss, grad_norm=grad_norm, lr=0.01, epoch=epoch)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            logged += 1
    assert run.finish() is True  # the end is a sync point: what is still on its way is waited for
    assert logged == 2 * 29 and run.dropped_batches == 0
