"""Multi-process start-up detection (no real initialisation) and the launch scripts against fake gcloud/sbatch."""
from __future__ import annotations

import pytest

from xalign_jax import distributed

NO_DEVICE_FILES: tuple[str, ...] = ()

SLURM_TWO_NODES = {
    "SLURM_JOB_ID": "123456", "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0",
    "SLURM_STEP_NODELIST": "gpu[007-008]", "SLURM_JOB_NODELIST": "gpu[007-008]",
    "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
}


def _plan(env: dict, **flags) -> distributed.ProcessPlan:
    return distributed.plan(env=env, device_files=NO_DEVICE_FILES, **flags)


# ---------------------------------------------------------------------------------------------- detection


def test_plain_process_does_not_initialize():
    assert _plan({}) == distributed.ProcessPlan("single")
    assert not _plan({}).initializes


def test_explicit_flags_win_over_the_environment():
    chosen = _plan(SLURM_TWO_NODES, coordinator_address="127.0.0.1:1234", num_processes=2, process_id=0)
    assert chosen == distributed.ProcessPlan("explicit", "127.0.0.1:1234", 2, 0, None)


def test_explicit_single_process_needs_no_initialisation():
    assert _plan({}, coordinator_address="localhost:1", num_processes=1, process_id=0).kind == "single"


@pytest.mark.parametrize("flags, message", [
    (dict(coordinator_address="h:1"), "--num_processes, --process_id missing"),
    (dict(num_processes=2, process_id=0), "--coordinator_address missing"),
    (dict(coordinator_address="no-port", num_processes=2, process_id=0), "expected HOST:PORT"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), r"--process_id=2 must lie in \[0, "),
])
def test_incomplete_or_bad_flags_are_named(flags, message):
    with pytest.raises(ValueError, match=message):
        _plan({}, **flags)


def test_slurm_one_task_per_node_uses_all_local_devices_and_the_first_node():
    chosen = _plan(SLURM_TWO_NODES)
    assert chosen == distributed.ProcessPlan("slurm", "gpu007:62016", 2, 1, None)   # 61440 + 123456 % 4096


@pytest.mark.parametrize("nodelist", ["gpu007", "gpu007,cpu1", "gpu[007-008],cpu1", "gpu[007,009-015]"])
def test_slurm_coordinator_matches_jax_own_detector(monkeypatch, nodelist):
    from jax._src.clusters.slurm_cluster import SlurmCluster
    env = dict(SLURM_TWO_NODES, SLURM_STEP_NODELIST=nodelist)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _plan(env).coordinator_address == SlurmCluster.get_coordinator_address(None, None)


def test_slurm_one_task_per_gpu_pins_the_local_gpu():
    env = dict(SLURM_TWO_NODES, SLURM_NTASKS="16", SLURM_PROCID="11", SLURM_LOCALID="3",
               SLURM_STEP_TASKS_PER_NODE="8(x2)", JAX_COORDINATOR_PORT="5000")
    assert _plan(env) == distributed.ProcessPlan("slurm", "gpu007:5000", 16, 11, (3,))


def test_slurm_single_task_is_a_plain_run():
    assert _plan(dict(SLURM_TWO_NODES, SLURM_NTASKS="1", SLURM_PROCID="0")).kind == "single"


def test_slurm_missing_variable_is_named():
    env = {k: v for k, v in SLURM_TWO_NODES.items() if k != "SLURM_JOB_ID"}
    with pytest.raises(ValueError, match="SLURM_JOB_ID is not set"):
        _plan(env)


@pytest.mark.parametrize("nodelist, first", [
    ("node001", "node001"), ("node001,host2", "node001"), ("node[001-015],host2", "node001"),
    ("node[007,009-015]", "node007"), ("a-b-c[12]", "a-b-c12"),
])
def test_first_slurm_host(nodelist, first):
    assert distributed.first_slurm_host(nodelist) == first


def test_tasks_per_node_expansion():
    assert distributed.expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    with pytest.raises(ValueError, match="cannot read 'x'"):
        distributed.expand_tasks_per_node("2,x")


@pytest.mark.parametrize("env", [{"TPU_WORKER_ID": "3"}, {"TPU_ACCELERATOR_TYPE": "v4-32"}])
def test_cloud_tpu_lets_jax_read_the_slice_layout(env):
    assert _plan(env) == distributed.ProcessPlan("tpu")


def test_cloud_tpu_detected_from_device_files(tmp_path):
    accel = tmp_path / "accel0"
    accel.touch()
    assert distributed.plan(env={}, device_files=(str(accel),)).kind == "tpu"


def test_single_process_helpers_in_this_process():
    plan = distributed.maybe_initialize()
    assert plan.kind == "single" and distributed.is_main_process()
    assert distributed.process_info().startswith("process 0/1 on ") and "8 local of 8 cpu devices" in \
        distributed.process_info()
