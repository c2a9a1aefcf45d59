"""Config validation, presets and round trips."""

import json
import math

import pytest

from trainer.config import ConfigError, TrainConfig, from_dict, load_config, preset, preset_names


def _fields(exc: ConfigError) -> list[str]:
    return [f for f, _ in exc.errors]


def test_presets_hold_the_design_values():
    fixed, prone = preset("fixed"), preset("collapse-prone")
    assert (fixed.label_smoothing, fixed.temperature, fixed.entropy_weight, fixed.min_entropy) == (0.15, 4.0, 5.0, 1.5)
    assert (fixed.entropy_penalty, fixed.max_grad_norm, fixed.final_layer_weight_decay) == ("quadratic", 1.0, 0.01)
    assert (prone.label_smoothing, prone.temperature, prone.entropy_weight, prone.min_entropy) == (0.0, 2.0, 2.0, 1.0)
    assert (prone.entropy_penalty, prone.max_grad_norm, prone.final_layer_weight_decay) == ("linear", None, 0.0)
    assert fixed.lr == prone.lr, "the presets share the learning rate so only the regularizers differ"
    assert {"fixed", "collapse-prone", "healthy"} <= set(preset_names())


@pytest.mark.parametrize(
    ("values", "field", "fragment"),
    [
        ({"temperature": 0}, "temperature", "[0.05, 100.0]"),
        ({"label_smoothing": 1.0}, "label_smoothing", "[0.0, 1.0)"),
        ({"lr": 0}, "lr", "(0.0, 10.0]"),
        ({"min_entropy": 2.5}, "min_entropy", "ln(8)"),
        ({"entropy_penalty": "cubic"}, "entropy_penalty", "linear"),
        ({"epochs": 2.5}, "epochs", "integer"),
        ({"batch_size": "64"}, "batch_size", "integer"),
        ({"class_weights": [1, 2]}, "class_weights", "8"),
        ({"class_weights": [1, 1, 1, 1, 1, 1, 1, -1]}, "class_weights", "positive"),
        ({"max_grad_norm": 0}, "max_grad_norm", "(0.0"),
        ({"weight_decay": math.nan}, "weight_decay", "finite"),
        ({"data": {"n_samples": 3}}, "data.n_samples", "[16,"),
        ({"data": {"colour": 3}}, "data.colour", "unknown"),
        ({"hidden_sizes": [0]}, "hidden_sizes", "[1, 65536]"),
        ({"learning_rate": 0.1}, "learning_rate", "unknown field"),
        ({"device": "tpu"}, "device", "cuda"),
        ({"data": {"kind": "table"}}, "data.path", "required"),
    ],
)
def test_bad_values_name_the_field_and_the_allowed_range(values, field, fragment):
    with pytest.raises(ConfigError) as info:
        from_dict(values)
    assert field in _fields(info.value)
    message = dict(info.value.errors)[field]
    assert fragment in message


def test_every_error_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        from_dict({"temperature": -1, "nonsense": 1, "epochs": 0})
    assert set(_fields(info.value)) == {"temperature", "nonsense", "epochs"}


def test_min_entropy_bound_follows_the_class_count():
    assert from_dict({"data": {"num_classes": 4}, "min_entropy": 1.3}).min_entropy == 1.3
    with pytest.raises(ConfigError, match="ln\\(4\\)"):
        from_dict({"data": {"num_classes": 4}, "min_entropy": 1.5})


def test_overrides_apply_on_top_of_a_preset_and_round_trip():
    cfg = from_dict({"temperature": 5, "data": {"n_samples": 300}}, base="collapse-prone")
    assert cfg.temperature == 5.0 and cfg.label_smoothing == 0.0 and cfg.data.n_samples == 300
    assert cfg.data.num_classes == 8, "a partial data table keeps the other data fields"
    again = from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_load_from_toml_and_json_files(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "collapse-prone"\ntemperature = 3.0\n[data]\nn_samples = 500\n')
    cfg = load_config(toml)
    assert (cfg.temperature, cfg.entropy_penalty, cfg.data.n_samples) == (3.0, "linear", 500)
    js = tmp_path / "run.json"
    js.write_text(json.dumps(cfg.to_dict()))
    assert load_config(js) == cfg
    bad = tmp_path / "bad.toml"
    bad.write_text("temperature = = 3")
    with pytest.raises(ConfigError, match=r"bad\.toml is not valid TOML"):
        load_config(bad)


def test_unknown_preset_is_named():
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        preset("nope")


def test_replace_keeps_validation():
    with pytest.raises(ConfigError):
        TrainConfig().replace(temperature=0)
