"""Every regularizer and optimiser field trains the model the way its value says, checked against a
reference written here from the design's formulas, not from trainer/ code.

The reference rebuilds the model from the seed, trains the same batches with plain torch (its own
loss, its own optimiser groups), and predicts what `train()` must record: the loss terms, grad norm
and logits of the second step (which see the parameters after the first update) and the validation
pass after the epoch. A field that is ignored, clamped or reaches only the log breaks the match.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer import ListSink, from_dict, train
from trainer.data import load_data

# Every term active from the first step: T = 0.2 sharpens the untrained output below h_min = 2.0,
# clipping at 0.05 scales every step's gradient, imbalanced data makes the balanced weights unequal.
BASE = {
    "label_smoothing": 0.1,
    "temperature": 0.2,
    "deploy_temperature": 1.0,
    "entropy_weight": 3.0,
    "min_entropy": 2.0,
    "entropy_penalty": "quadratic",
    "class_weights": "balanced",
    "max_grad_norm": 0.05,
    "weight_decay": 0.05,
    "final_layer_weight_decay": 2.0,
    "lr": 0.02,
    "hidden_sizes": [12],
    "batch_size": 40,
    "epochs": 1,
    "device": "cpu",
    "data": {"n_samples": 100, "n_features": 5, "imbalance": 4.0},
}
# field -> a value other than BASE's; each must change what is recorded and match the reference
VARIANTS: dict[str, dict] = {
    "label_smoothing": {"label_smoothing": 0.3},
    "temperature": {"temperature": 3.0},
    "deploy_temperature": {"deploy_temperature": 2.5},
    "entropy_weight": {"entropy_weight": 9.0},
    "min_entropy": {"min_entropy": 1.2},
    "entropy_penalty": {"entropy_penalty": "linear"},
    "cap_entropy_at_target": {"cap_entropy_at_target": True},
    "class_weights (none)": {"class_weights": None},
    "class_weights (list)": {"class_weights": [1.0, 2.0, 0.5, 1.0, 3.0, 1.0, 1.0, 0.2]},
    "max_grad_norm": {"max_grad_norm": None},
    "weight_decay": {"weight_decay": 0.5},
    "final_layer_weight_decay": {"final_layer_weight_decay": 0.0},
    "lr": {"lr": 0.05},
    "optimizer": {"optimizer": "sgd", "lr": 0.5},
    "momentum": {"optimizer": "sgd", "lr": 0.5, "momentum": 0.5},
    "lr_schedule": {"lr_schedule": "cosine", "epochs": 2},
    "seed": {"seed": 5},
    "hidden_sizes": {"hidden_sizes": [7, 9]},
    "activation": {"activation": "tanh"},
    "batch_size": {"batch_size": 16},
}
_ACT = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def _config(overrides: dict):
    return from_dict({**BASE, **overrides, "data": {**BASE["data"], **overrides.get("data", {})}})


def reference(cfg) -> dict[str, float]:
    """What one epoch of training must record, from the design's formulas; keys as in `recorded`."""
    data = load_data(cfg.data)  # the data fields have probes of their own (test_config_reaches_step)
    x, t_raw = torch.from_numpy(data.x_train), torch.from_numpy(data.t_train).double()
    x_val, t_val = torch.from_numpy(data.x_val), torch.from_numpy(data.t_val).double()
    c, eps, temp = t_raw.shape[1], cfg.label_smoothing, cfg.temperature
    torch.manual_seed(cfg.seed)
    layers, width = [], x.shape[1]
    for h in cfg.hidden_sizes:
        layers += [nn.Linear(width, h), _ACT[cfg.activation]()]
        width = h
    body, head = nn.Sequential(*layers), nn.Linear(width, c)
    groups = [
        {"params": [*body.parameters(), head.bias], "weight_decay": cfg.weight_decay},
        {"params": [head.weight], "weight_decay": cfg.weight_decay + cfg.final_layer_weight_decay},
    ]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr)

    def smooth(t):
        return (1 - eps) * t + eps / c

    if cfg.class_weights == "balanced":
        mass = smooth(t_raw).mean(0)
        w = torch.clamp(1 / (c * mass), max=10.0)
        weights = w / (mass * w).sum()
    elif cfg.class_weights is None:
        weights = torch.ones(c, dtype=torch.float64)
    else:
        weights = torch.tensor(cfg.class_weights, dtype=torch.float64)

    def loss_terms(z, t):
        t = smooth(t)
        log_p = F.log_softmax(z.double() / temp, -1)
        h = -(log_p.exp() * log_p).sum(-1)
        ce = -(weights * t * log_p).sum() / (weights * t).sum()
        h_min = (
            torch.clamp(-torch.special.xlogy(t, t).sum(-1), max=cfg.min_entropy)
            if cfg.cap_entropy_at_target
            else cfg.min_entropy
        )
        short = (h_min - h).clamp_min(0)
        ent = cfg.entropy_weight * (short if cfg.entropy_penalty == "linear" else short**2).mean()
        return ce, ent, h

    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    total_steps, out, step = steps_per_epoch * cfg.epochs, {}, 0
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(x), generator=gen).split(cfg.batch_size):
            lr = (
                cfg.lr if cfg.lr_schedule == "constant" else cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            )
            for g in opt.param_groups:
                g["lr"] = lr
            z = head(body(x[idx]))
            ce, ent, h = loss_terms(z, t_raw[idx])
            head_sq = float(head.weight.detach().square().sum())
            opt.zero_grad()
            (ce + ent).backward()
            params = [*body.parameters(), *head.parameters()]
            norm = float(torch.sqrt(sum(p.grad.double().square().sum() for p in params)))
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            if step == 1:
                z_d = z.detach().double()
                out.update(
                    loss_ce=ce.item(),
                    loss_entropy=ent.item(),
                    loss_final_l2=cfg.final_layer_weight_decay * head_sq,
                    head_weight_norm=math.sqrt(head_sq),
                    grad_norm=norm,
                    logit_max=float(z_d.max()),
                    logit_min=float(z_d.min()),
                    entropy_mean=h.mean().item(),
                    deploy_entropy_mean=_entropy(z_d / cfg.deploy_temperature).mean().item(),
                    lr=lr,
                )
            step += 1
    with torch.no_grad():
        z = head(body(x_val)).double()
        ce, ent, _ = loss_terms(z, t_val)
        l2 = cfg.final_layer_weight_decay * float(head.weight.square().sum())
        for name, temperature in (("eval", temp), ("eval_deploy", cfg.deploy_temperature)):
            p = torch.softmax(z / temperature, -1)
            kl = (torch.special.xlogy(t_val, t_val) - t_val * torch.log(p.clamp_min(1e-12))).sum(-1).mean()
            out[f"{name}_kl"] = float(kl)
            out[f"{name}_entropy"] = _entropy(z / temperature).mean().item()
        out["eval_objective"] = float(ce + ent) + l2
    out["class_weights"] = weights.tolist()
    return out


def _entropy(z: torch.Tensor) -> torch.Tensor:
    log_p = F.log_softmax(z, -1)
    return -(log_p.exp() * log_p).sum(-1)


def recorded(cfg) -> dict[str, float]:
    sink = ListSink()
    result = train(cfg, sink)
    assert result.status == "completed", result.error
    row = list(sink.steps).index(1)
    out = {name: float(sink.column(name)[row]) for name in reference_keys_batch}
    ev = sink.evals[-1].metrics
    out.update(
        eval_kl=ev["kl"],
        eval_entropy=ev["entropy_mean"],
        eval_deploy_kl=ev["deploy_kl"],
        eval_deploy_entropy=ev["deploy_entropy_mean"],
        eval_objective=ev["objective"],
        class_weights=sink.info.class_weights,
    )
    return out


reference_keys_batch = (
    "loss_ce", "loss_entropy", "loss_final_l2", "head_weight_norm", "grad_norm", "logit_max", "logit_min",
    "entropy_mean", "deploy_entropy_mean", "lr",
)  # fmt: skip


def _close(a: dict, b: dict) -> list[str]:
    return [k for k in b if not np.allclose(a[k], b[k], rtol=2e-4, atol=1e-6)]


def test_the_base_config_exercises_every_term():
    ref = reference(_config({}))
    assert ref["loss_entropy"] > 0.01, "the entropy penalty is active"
    assert ref["grad_norm"] > BASE["max_grad_norm"] * 2, "clipping scales the step"
    assert ref["loss_final_l2"] > 0.01, "the head decay term is logged"
    assert max(ref["class_weights"]) / min(ref["class_weights"]) > 1.5, "the balanced weights are unequal"


@pytest.mark.parametrize("variant", ["base", *VARIANTS])
def test_training_matches_the_reference(variant):
    cfg = _config(VARIANTS.get(variant, {}))
    got, want = recorded(cfg), reference(cfg)
    assert not _close(got, want), {k: (got[k], want[k]) for k in _close(got, want)}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_field_changes_what_is_trained(variant):
    # the reference itself moves with the field, so a match above is not a match of two constants
    base, changed = reference(_config({})), reference(_config(VARIANTS[variant]))
    assert _close(changed, base), f"{variant} changes nothing in the reference"


def test_final_layer_decay_rungs_give_different_heads():
    # decoupled from Adam's normalisation, each rung of the ladder shrinks the head by its own amount
    norms = []
    for decay in (0.01, 0.02, 0.05):
        cfg = _config({"final_layer_weight_decay": decay, "lr": 0.1, "epochs": 10, "max_grad_norm": 1.0})
        sink = ListSink()
        train(cfg, sink)
        norms.append(float(sink.column("head_weight_norm")[-1]))
    assert norms[0] > norms[1] > norms[2], norms
    assert norms[0] - norms[2] > 1e-3 * norms[0], norms
