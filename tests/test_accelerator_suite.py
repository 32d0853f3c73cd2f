"""The accelerator suite's run list applies cleanly to configs/bench_gpu.py, and a failing run is recorded, not
fatal (the suite exists to keep one broken kernel choice from costing the other measurements)."""
from __future__ import annotations

import pytest

from benchmarks import accelerator_suite
from tests.test_configs import load_config
from xalign_jax import config_validation


def _apply(flags: list[str]):
    """The config a run's ``--config=...:variant --config.a.b=v`` flags describe (values typed like the defaults)."""
    config_flag = next(f for f in flags if f.startswith("--config="))
    config = load_config("bench_gpu.py", config_flag.rsplit(":", 1)[1])
    for flag in flags:
        if flag.startswith("--config."):
            key, value = flag.removeprefix("--config.").split("=", 1)
            *parents, leaf = key.split(".")
            node = config
            for parent in parents:
                node = node[parent]
            node[leaf] = type(node[leaf])(value)
    return config


@pytest.mark.parametrize("name", sorted(accelerator_suite.RUNS))
def test_every_run_is_a_valid_bench_config(name):
    config = _apply(accelerator_suite.RUNS[name])
    config_validation.validate(config, mode="train", num_devices=1)
    assert config.model.source == "random" and config.data.synthetic_records > 0


def test_a_failing_run_is_recorded_with_its_output(tmp_path):
    result = accelerator_suite.run_one("broken", ["--config=configs/no_such_config.py"], tmp_path, steps=1,
                                       warmup=1, timeout=120)
    assert result["status"] == "exit 1" and result["report"] is None
    assert "no_such_config.py" in result["error_tail"]
    assert "| broken | exit 1 |" in accelerator_suite.table([result], measured_tflops=800.0)
