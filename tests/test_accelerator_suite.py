"""The accelerator suite's run list applies cleanly to configs/bench_gpu.py, a failing run is recorded, not fatal
(the suite exists to keep one broken kernel choice from costing the other measurements), and a profiled run brings
back its summary, not the raw profile."""
from __future__ import annotations

import pytest

from benchmarks import accelerator_suite
from tests.test_configs import load_config
from tests.test_trace_summary import write_trace
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


def test_a_profiled_run_brings_back_its_summary_and_perfetto_trace(tmp_path):
    write_trace(tmp_path / "profile")
    out = tmp_path / "out"
    out.mkdir()
    accelerator_suite.write_profile("gemma3-cudnn", tmp_path / "profile", steps=2, out=out)
    assert sorted(p.name for p in out.iterdir()) == ["profile_gemma3-cudnn.md",
                                                    "profile_gemma3-cudnn.perfetto_trace.json.gz"]
    assert "## device: 10.0 ms over 2 steps" in (out / "profile_gemma3-cudnn.md").read_text()


def test_the_matmul_ceiling_is_measured_in_a_child_process():
    """The suite's own process must not hold the accelerator (JAX reserves 75% of its memory in the first process
    that uses it); the child reports the rate and the device it measured."""
    rate, devices = accelerator_suite.matmul_tflops_in_child(64)
    assert rate > 0 and devices.startswith("jax ") and "devices [" in devices
