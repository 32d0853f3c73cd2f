"""Every shipped config and variant passes the pre-flight checks on the device counts it is meant for."""
from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import REPO_ROOT
from xalign_jax import config_validation

# (config file, variant or None, device counts it must run on: the CPU, the 8-device test mesh, the launch meshes)
CASES = [
    ("demo.py", None, (1, 8)),
    ("gemma3.py", "270m", (1, 2)),
    ("gemma3.py", "270m-sweep", (1, 2)),
    ("gemma3.py", "270m-long", (1, 2)),
    ("gemma3.py", "270m-full", (1, 8)),
    ("bloom.py", "560m", (1, 8)),
    ("bloom.py", "7b1", (16, 32)),
    ("xglm.py", "564m", (1, 2)),
    ("xglm.py", "7.5b", (16, 32)),
    ("llama.py", "smollm2-135m", (1, 8)),
    ("llama.py", "7b", (16, 32)),
    ("bench_bloom.py", None, (1,)),
    ("bench_gpu.py", "gemma3-270m", (1, 8)),
    ("bench_gpu.py", "bloom-560m", (1, 8)),
]


def load_config(name: str, variant: str | None):
    spec = importlib.util.spec_from_file_location(f"config_{name[:-3]}", REPO_ROOT / "configs" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


@pytest.mark.parametrize("name,variant,device_counts", CASES)
def test_shipped_config_validates(name, variant, device_counts, tmp_path):
    config = load_config(name, variant)
    if "/" in str(config.model.source):      # weights the user points at: stand in an existing directory
        config.model.source = str(tmp_path)
    for devices in device_counts:
        config_validation.validate(config, mode="train", num_devices=devices)


def test_a_clm_row_count_the_mesh_cannot_split_is_refused():
    config = load_config("demo.py", None)
    config.data.clm_rows = 4
    with pytest.raises(config_validation.ConfigError, match="config data.clm_rows: 4 is not divisible"):
        config_validation.validate(config, mode="train", num_devices=8)
