"""The device a config names, checked against the machine's CUDA devices; the data seed's range."""

from __future__ import annotations

import pytest

from trainer import ConfigError, from_dict
from trainer.config import device_problem


@pytest.mark.parametrize("device", ["auto", "cpu"])
@pytest.mark.parametrize("count", [0, 1, 4])
def test_auto_and_cpu_train_anywhere(device: str, count: int) -> None:
    assert device_problem(device, cuda_devices=count) is None


@pytest.mark.parametrize("device,count", [("cuda", 1), ("cuda:0", 1), ("cuda:3", 4), ("cuda:00", 1)])
def test_an_existing_cuda_device_is_accepted(device: str, count: int) -> None:
    assert device_problem(device, cuda_devices=count) is None


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_cuda_says_so_and_offers_the_alternatives(device: str) -> None:
    problem = device_problem(device, cuda_devices=0)
    assert problem is not None and "no CUDA device" in problem and '"cpu"' in problem and '"auto"' in problem


@pytest.mark.parametrize(
    "device,count,says",
    [("cuda:1", 1, "1 CUDA device(s), cuda:0"), ("cuda:99", 2, "cuda:0 to cuda:1"), ("cuda:" + "9" * 5000, 2, "2")],
)
def test_a_missing_cuda_device_names_the_ones_there_are(device: str, count: int, says: str) -> None:
    problem = device_problem(device, cuda_devices=count)
    assert problem is not None and "does not exist" in problem and says in problem


@pytest.mark.parametrize("device", ["cuda:²", "cuda:١", "cuda:", "cuda:-1", "cuda:0 ", "CUDA", "tpu", "cuda\x00"])
def test_a_device_that_is_not_ascii_cuda_n_is_a_config_error(device: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_dict({"device": device})
    assert [field for field, _ in err.value.errors] == ["device"]


@pytest.mark.parametrize("seed", [-1, 2**32, 2**64])
def test_a_data_seed_outside_0_to_2_32_is_a_config_error_with_the_range(seed: int) -> None:
    with pytest.raises(ConfigError) as err:
        from_dict({"data": {"seed": seed}})
    assert err.value.errors == [("data.seed", f"must be in [0, 4294967295], got {seed}")]


@pytest.mark.parametrize("seed", [0, 2**32 - 1])
def test_the_data_seed_bounds_themselves_are_accepted(seed: int) -> None:
    assert from_dict({"data": {"seed": seed}}).data.seed == seed
