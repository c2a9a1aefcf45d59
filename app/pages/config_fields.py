"""The meaning and allowed range of every TrainConfig / DataSpec field, as the new-run form shows them.

Ranges here are documentation; trainer.from_dict stays the one validator (tests/api/test_config_form.py
checks that the two agree at every documented bound).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FormField:
    name: str  # dotted config path, e.g. "data.n_samples"; also the form input's name
    label: str
    kind: str  # "float" | "int" | "choice" | "bool" | "optional_float" | "int_list" | "class_weights" | "text"
    allowed: str  # the allowed range or values, shown beside the input
    help: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class FieldGroup:
    title: str
    note: str
    fields: tuple[FormField, ...]
    synthetic_only: bool = False  # hidden and ignored when an uploaded dataset is chosen
    advanced: bool = False  # folded away: how statistics are recorded and handed on, not what is trained


F = FormField

# A table: one field per entry, so formatting stays by hand.
# fmt: off
FIELD_GROUPS: tuple[FieldGroup, ...] = (
    FieldGroup("Anti-collapse regularizers",
               "The knobs the collapse advice turns. H is each sample's prediction entropy, in nats.", (
        F("label_smoothing", "Label smoothing ε", "float", "[0, 1)",
          "target' = (1−ε)·target + ε/C, applied to soft targets too. 0 = off."),
        F("temperature", "Temperature T", "float", "[0.05, 100]",
          "Predictions are softmax(logits / T), in training and evaluation alike. Higher T = softer."),
        F("deploy_temperature", "Deployment temperature", "float", "[0.05, 100]",
          "The temperature the model is used at after training (1 = plain softmax). Every statistic is also "
          "reported there, and a collapse that only shows there is raised."),
        F("entropy_weight", "Entropy penalty weight", "float", "[0, 1000]",
          "Weight of the entropy penalty in the loss. 0 = no penalty."),
        F("min_entropy", "Minimum entropy h_min", "float", "[0, ln C] nats",
          "Predictions whose entropy falls below h_min are penalized. The most possible is ln C "
          "(ln 8 ≈ 2.08 nats for 8 classes)."),
        F("entropy_penalty", "Entropy penalty shape", "choice", "linear | quadratic",
          "linear: max(0, h_min − H); quadratic: max(0, h_min − H)², computed per sample and averaged.",
          ("linear", "quadratic")),
        F("cap_entropy_at_target", "Cap h_min at the target's entropy", "bool", "on | off",
          "Each sample's threshold becomes min(h_min, entropy of its own smoothed target), so peaky "
          "targets are not pushed towards uniform."),
        F("class_weights", "Class weights", "class_weights", "empty | balanced | C numbers > 0",
          "Per-class weights in the soft cross-entropy. Empty = uniform; balanced = from each class's "
          "share of target mass; or C positive numbers separated by commas."),
        F("max_grad_norm", "Max grad norm", "optional_float", "(0, 1e6] or empty",
          "Clip the global gradient norm to this value. Empty = no clipping."),
        F("weight_decay", "Weight decay", "float", "[0, 1]", "Base weight decay for every layer."),
        F("final_layer_weight_decay", "Final-layer L2", "float", "[0, 10]",
          "Extra decay on the classifier weight only, on top of the base decay, decoupled by the optimiser "
          "(its L2 value is logged as its own loss term)."),
    )),
    FieldGroup("Optimisation",
               "Both collapse presets share the learning rate, so they differ in the regularizers alone.", (
        F("lr", "Learning rate", "float", "(0, 10]", "Step size of the optimizer."),
        F("optimizer", "Optimizer", "choice", "adamw | sgd",
          "AdamW (decoupled weight decay) or SGD with momentum.", ("adamw", "sgd")),
        F("momentum", "Momentum", "float", "[0, 1)", "SGD only; a value other than 0.9 with AdamW is refused."),
        F("lr_schedule", "LR schedule", "choice", "constant | cosine",
          "constant, or cosine decay to 0 over all steps.", ("constant", "cosine")),
        F("epochs", "Epochs", "int", "[1, 10000]", "Passes over the training split."),
        F("batch_size", "Batch size", "int", "[1, 65536]", "Samples per step (one step = one batch)."),
        F("seed", "Seed", "int", "[0, 2³²)", "Seeds the weights and the shuffling."),
        F("device", "Device", "text", "auto | cpu | cuda | cuda:N",
          "Where the worker trains: auto picks CUDA when available."),
        F("processes", "Processes", "int", "[1, 64]",
          "One run on this many processes (torch.distributed): gloo on the CPU, one CUDA device each on CUDA. "
          "batch_size must be divisible by it."),
    )),
    FieldGroup("Model", "A multilayer perceptron from the features to C logits.", (
        F("hidden_sizes", "Hidden layer sizes", "int_list", "integers in [1, 65536]",
          "Width of each hidden layer, comma-separated. Empty = a linear classifier."),
        F("dropout", "Dropout", "float", "[0, 1)", "Dropout probability after each hidden layer."),
        F("activation", "Activation", "choice", "relu | gelu | tanh | silu",
          "Non-linearity of the hidden layers.", ("relu", "gelu", "tanh", "silu")),
    )),
    FieldGroup("Synthetic data",
               "The built-in generator: clusters whose posterior class probabilities, as seen by noisy "
               "annotators, are the soft targets.", (
        F("data.n_samples", "Samples", "int", "[16, 10000000]", "Rows generated (training plus validation)."),
        F("data.n_features", "Features", "int", "[1, 100000]", "Input dimensions."),
        F("data.num_classes", "Classes C", "int", "[2, 1000]", "Number of classes."),
        F("data.imbalance", "Class imbalance", "float", "[1, 1000]",
          "Ratio of the most to the least frequent class prior. 1 = balanced."),
        F("data.cluster_std", "Cluster spread", "float", "[0.01, 100]", "Standard deviation of each class cluster."),
        F("data.class_separation", "Class separation", "float", "[0, 100]",
          "Distance between cluster centres. Lower = more overlap = softer targets."),
        F("data.n_annotators", "Annotators", "int", "[1, 1000]", "Simulated annotators averaged into each target."),
        F("data.biased_annotator_rate", "Biased annotator rate", "float", "[0, 1]",
          "How often the biased annotator votes for its favourite class."),
        F("data.seed", "Data seed", "int", "[0, 4294967295]", "Seeds the generator."),
    ), synthetic_only=True),
    FieldGroup("Evaluation", "How much is held out, and how often it is evaluated.", (
        F("data.val_fraction", "Validation fraction", "float", "(0, 0.9]", "Share of rows held out for evaluation."),
        F("eval_interval", "Eval interval", "int", "[0, 10000000] batches",
          "Batches between evaluations; 0 = at the end of each epoch."),
    )),
    FieldGroup("Advanced: recording",
               "How often statistics are recorded and handed to the database; the defaults suit almost every run.", (
        F("stats_interval", "Stats interval", "int", "[1, 1000000]", "Record statistics every N batches."),
        F("flush_batches", "Flush every N batches", "int", "[1, 100000]",
          "Hand statistics to the database at least every N recorded batches…"),
        F("flush_seconds", "… or every S seconds", "float", "[0, 3600] s", "…or when this much time has passed."),
    ), advanced=True),
)
# fmt: on

ALL_FIELDS: tuple[FormField, ...] = tuple(f for g in FIELD_GROUPS for f in g.fields)
SYNTHETIC_FIELDS: frozenset[str] = frozenset(f.name for g in FIELD_GROUPS if g.synthetic_only for f in g.fields)
# The dataset choice (synthetic or an uploaded table) sets these; they have no input of their own.
DATASET_FIELDS: tuple[str, ...] = ("data.kind", "data.path", "data.label_column")
