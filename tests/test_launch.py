"""Multi-process start-up detection (no real initialisation), the launch scripts against stand-in gcloud/sbatch/srun,
and the memory plan against transformers parameter counts, JAX shard shapes and the compiled train step."""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from xalign_jax import distributed

NO_PCI_DEVICES = "/nonexistent/pci/devices"

SLURM_TWO_NODES = {
    "SLURM_JOB_ID": "123456", "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0",
    "SLURM_STEP_NODELIST": "gpu[007-008]", "SLURM_JOB_NODELIST": "gpu[007-008]",
    "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
}


def _plan(env: dict, **flags) -> distributed.ProcessPlan:
    return distributed.plan(env=env, pci_devices=NO_PCI_DEVICES, **flags)


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


def _pci_device(root: pathlib.Path, slot: str, vendor: str, device: str) -> None:
    (root / slot).mkdir(parents=True)
    (root / slot / "vendor").write_text(vendor + "\n")
    (root / slot / "device").write_text(device + "\n")


def test_cloud_tpu_detected_from_pci_ids_not_from_google_network_cards(tmp_path):
    _pci_device(tmp_path, "0000:00:04.0", "0x1ae0", "0x0042")   # gVNIC: Google's vendor id, not a TPU
    _pci_device(tmp_path, "0000:00:05.0", "0x10de", "0x2330")   # an NVIDIA H100
    assert distributed.plan(env={}, pci_devices=str(tmp_path)).kind == "single"
    _pci_device(tmp_path, "0000:00:06.0", "0x1ae0", "0x0063")   # a TPU v5e chip
    assert distributed.plan(env={}, pci_devices=str(tmp_path)).kind == "tpu"


def test_single_process_helpers_in_this_process():
    plan = distributed.maybe_initialize()
    assert plan.kind == "single" and distributed.is_main_process()
    assert distributed.process_info().startswith("process 0/1 on ") and "8 local of 8 cpu devices" in \
        distributed.process_info()


# ---------------------------------------------------------------------------------------------- launch scripts

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
GCP = REPO_ROOT / "launch" / "gcp.sh"
SLURM = REPO_ROOT / "launch" / "slurm.sh"
LOCATION = ["--project=proj", "--zone=us-central2-b"]
TPU_VM = ["compute", "tpus", "tpu-vm"]

# A stand-in for gcloud / sbatch / srun / curl / python3: appends [name, argv...] as one JSON line to $FAKE_LOG.
FAKE_TOOL = """#!{python}
import json, os, pathlib, sys
name = pathlib.Path(sys.argv[0]).name
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps([name] + sys.argv[1:]) + "\\n")
if name == "curl":
    print(os.environ.get("FAKE_WORKER", "0"))
"""


@pytest.fixture
def fake_bin(tmp_path):
    """A PATH directory whose gcloud/sbatch/srun/curl only record their arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("gcloud", "sbatch", "srun", "curl"):
        path = bin_dir / tool
        path.write_text(FAKE_TOOL.format(python=sys.executable))
        path.chmod(0o755)
    return bin_dir


def _env(tmp_path, fake_bin, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XALIGN_")}
    env.update({"PATH": f"{fake_bin}:{os.environ['PATH']}", "FAKE_LOG": str(tmp_path / "calls.jsonl"),
                "TMPDIR": str(tmp_path), "HOME": str(tmp_path / "home"), **extra})
    return env


def _launch(script, args, tmp_path, fake_bin, **env) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """Run a launch script; return the process and the commands the fake tools received."""
    done = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=60,
                          env=_env(tmp_path, fake_bin, **env))
    log = tmp_path / "calls.jsonl"
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    log.unlink(missing_ok=True)
    return done, calls


def _printed_commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def _gcp(args, tmp_path, fake_bin, **env):
    done, calls = _launch(GCP, ["--project", "proj", "--zone=us-central2-b", *args], tmp_path, fake_bin, **env)
    assert done.returncode == 0, done.stderr
    return calls


def _ssh(worker: str, command: str) -> list[str]:
    return ["gcloud", *TPU_VM, "ssh", "xalign", f"--worker={worker}", f"--command={command}", *LOCATION]


def test_gcp_create_tpu_vm(tmp_path, fake_bin):
    assert _gcp(["create"], tmp_path, fake_bin) == [
        ["gcloud", *TPU_VM, "create", "xalign", "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base",
         *LOCATION]]


def test_gcp_create_queued_spot_v5e_from_environment(tmp_path, fake_bin):
    calls = _gcp(["create"], tmp_path, fake_bin, XALIGN_QUEUED="1", XALIGN_SPOT="1",
                 XALIGN_TPU_TYPE="v5litepod-64", XALIGN_TPU_NAME="afp-v5e")
    assert calls == [["gcloud", "compute", "tpus", "queued-resources", "create", "afp-v5e", "--node-id=afp-v5e",
                      "--accelerator-type=v5litepod-64", "--runtime-version=v2-alpha-tpuv5-lite", "--spot",
                      *LOCATION]]


def test_gcp_setup_from_git_ref_clones_on_every_worker_then_installs(tmp_path, fake_bin):
    calls = _gcp(["--repo", "https://example.org/xalign-jax.git", "--ref", "v0.1", "setup"], tmp_path, fake_bin)
    assert calls == [
        _ssh("all", "if [ -d xalign-jax/.git ]; then :; else git clone --quiet https://example.org/xalign-jax.git "
                    "xalign-jax; fi && git -C xalign-jax fetch --quiet origin v0.1 "
                    "&& git -C xalign-jax checkout --quiet --detach FETCH_HEAD"),
        _ssh("all", "cd xalign-jax && python3 -m pip install --quiet --upgrade 'jax[tpu]' -e .\\[models\\]"),
    ]


def test_gcp_setup_copies_this_checkout_head(tmp_path, fake_bin):
    calls = _gcp(["setup"], tmp_path, fake_bin)
    archive = tmp_path / "xalign-src-xalign.tar.gz"
    assert calls[0] == ["gcloud", *TPU_VM, "scp", str(archive), "xalign:xalign-src.tar.gz", "--worker=all",
                        *LOCATION]
    assert calls[1] == _ssh("all", "mkdir -p xalign-jax && tar -xzf xalign-src.tar.gz -C xalign-jax")
    assert calls[2][-3].startswith("--command=cd xalign-jax && python3 -m pip install")
    with tarfile.open(archive) as tar:
        assert {"setup.py", "xalign_jax/main.py", "launch/gcp.sh"} <= set(tar.getnames())


def test_gcp_tail_stop_status_delete(tmp_path, fake_bin):
    assert _gcp(["--worker", "3", "tail"], tmp_path, fake_bin) == [
        _ssh("3", "tail -n 200 -F xalign_logs/worker-3.log")]
    assert _gcp(["stop"], tmp_path, fake_bin) == [
        _ssh("all", "[ -f xalign_logs/main.pid ] && kill -TERM $(cat xalign_logs/main.pid) 2>/dev/null || true")]
    status = _gcp(["status"], tmp_path, fake_bin)
    assert status[0] == ["gcloud", *TPU_VM, "describe", "xalign", *LOCATION] and status[1][6] == "--worker=all"
    assert _gcp(["delete"], tmp_path, fake_bin) == [["gcloud", *TPU_VM, "delete", "xalign", "--quiet", *LOCATION]]
    assert _gcp(["--queued", "delete"], tmp_path, fake_bin) == [
        ["gcloud", "compute", "tpus", "queued-resources", "delete", "xalign", "--force", "--quiet", *LOCATION]]


def _remote(call: list[str], home: pathlib.Path, fake_bin, tmp_path, worker: str) -> subprocess.CompletedProcess:
    """Execute an ssh --command string the way a worker's login shell would, in a scratch home directory."""
    command = next(arg for arg in call if arg.startswith("--command="))[len("--command="):]
    return subprocess.run(["bash", "-c", command], cwd=home, capture_output=True, text=True, timeout=30,
                          env=_env(tmp_path, fake_bin, FAKE_WORKER=worker, FAKE_LOG=str(tmp_path / "remote.jsonl")))


def test_gcp_run_stop_status_commands_work_in_a_worker_shell(tmp_path, fake_bin):
    """The remote run command starts main.py in the background with a per-worker log; stop delivers SIGTERM."""
    home = tmp_path / "home"
    (home / "xalign-jax").mkdir(parents=True)
    python3 = fake_bin / "python3"   # stands in for the trainer: logs its argv, checkpoints on SIGTERM
    python3.write_text("#!/bin/bash\ntrap 'echo checkpoint-and-exit; exit 0' TERM\necho \"main $*\"\n"
                       "while true; do sleep 0.1; done\n")
    python3.chmod(0o755)
    run = _gcp(["--config", "configs/bloom.py:7b1", "--workdir", "/mnt/runs/b 7", "run", "--",
                "--config.train.steps=10"], tmp_path, fake_bin)
    assert len(run) == 1 and run[0][:7] == ["gcloud", *TPU_VM, "ssh", "xalign", "--worker=all"]
    assert _remote(run[0], home, fake_bin, tmp_path, "5").returncode == 0
    pid_file = home / "xalign_logs" / "main.pid"
    try:
        _check_run_then_stop(run[0], home, fake_bin, tmp_path)
    finally:   # never leave the stand-in trainer running
        with contextlib.suppress(ProcessLookupError, ValueError, FileNotFoundError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def _check_run_then_stop(run: list[str], home: pathlib.Path, fake_bin, tmp_path) -> None:
    log = home / "xalign_logs" / "worker-5.log"
    _wait_for(lambda: log.exists() and "main" in log.read_text())
    assert log.read_text().splitlines()[0] == \
        "main -m xalign_jax.main --config=configs/bloom.py:7b1 --workdir=/mnt/runs/b 7 --config.train.steps=10"
    again = _remote(run, home, fake_bin, tmp_path, "5")
    assert again.returncode == 1 and "worker 5: already running" in again.stderr
    status = _remote(_gcp(["status"], tmp_path, fake_bin)[1], home, fake_bin, tmp_path, "5")
    assert status.stdout.startswith("worker 5: running")
    assert _remote(_gcp(["stop"], tmp_path, fake_bin)[0], home, fake_bin, tmp_path, "5").returncode == 0
    status_call = _gcp(["status"], tmp_path, fake_bin)[1]
    _wait_for(lambda: _remote(status_call, home, fake_bin, tmp_path, "5").stdout.splitlines() ==
              ["worker 5: not running", "checkpoint-and-exit"])


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("args", [
    ["create"], ["--queued", "--spot", "create"], ["setup"], ["--repo", "r", "setup"], ["tail"], ["stop"],
    ["status"], ["delete"], ["--config", "c.py", "--workdir", "/w", "run", "--", "--config.x='a b'"],
])
def test_gcp_dry_run_prints_exactly_what_it_would_run_and_calls_nothing(tmp_path, fake_bin, args):
    expected = _gcp(args, tmp_path, fake_bin)
    dry, calls = _launch(GCP, ["--dry-run", "--project=proj", "--zone", "us-central2-b", *args], tmp_path, fake_bin)
    assert dry.returncode == 0 and calls == []
    printed = [c for c in _printed_commands(dry.stdout) if c[0] != "git"]   # setup also shows the archive step
    assert printed == expected


@pytest.mark.parametrize("args, env, message", [
    (["create"], {}, "missing setting: give --project or set XALIGN_PROJECT"),
    (["--project", "p", "--zone", "z", "run"], {}, "missing setting: give --config or set XALIGN_CONFIG"),
    (["--project", "p", "--zone", "z", "--config", "c", "run"], {}, "give --workdir or set XALIGN_WORKDIR"),
    (["--project", "p", "--zone", "z", "--tpu-type", "v4", "create"], {}, "--tpu-type=v4: expected e.g."),
    (["--project", "p", "--zone", "z", "launch"], {}, "command=launch: expected one of: create setup"),
    (["--project", "p", "--zone", "z"], {}, "missing command"),
    (["--project", "p", "--zone", "z", "--bogus", "create"], {}, "unknown option --bogus"),
    (["--project", "p", "--zone", "z", "create", "run"], {}, "one command at a time (got create run)"),
    (["--project", "--zone", "z", "create"], {}, "--project needs a value"),
    (["--project", "p", "--zone", "z", "create"], {"XALIGN_SPOT": "yes"}, "XALIGN_SPOT)=yes: expected one of: 0 1"),
])
def test_gcp_bad_settings_are_named_and_nothing_runs(tmp_path, fake_bin, args, env, message):
    done, calls = _launch(GCP, args, tmp_path, fake_bin, **env)
    assert done.returncode == 2 and message in done.stderr and calls == []


def test_gcp_help(tmp_path, fake_bin):
    done, calls = _launch(GCP, ["--help"], tmp_path, fake_bin)
    assert done.returncode == 0 and "create | setup" not in done.stdout and "XALIGN_PROJECT" in done.stdout
    assert calls == []


SLURM_ARGS = ["--nodes", "2", "--partition", "h100", "--account", "afp", "--config", "configs/xglm.py:7.5b",
              "--workdir", "/shared/runs/xglm"]


def test_slurm_submits_the_script_and_srun_starts_main_with_every_argument(tmp_path, fake_bin):
    log_dir = tmp_path / "logs"
    done, calls = _launch(SLURM, [*SLURM_ARGS, "--log-dir", str(log_dir), "--", "--config.mesh.fsdp=16"],
                          tmp_path, fake_bin)
    assert done.returncode == 0, done.stderr
    script = log_dir / "xalign.sbatch"
    assert calls == [["sbatch", str(script)]]
    lines = script.read_text().splitlines()
    for directive in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "--partition=h100", "--account=afp",
                      "--time=24:00:00", "--signal=TERM@300", "--requeue", f"--output={log_dir}/%x-%j.out"):
        assert f"#SBATCH {directive}" in lines
    # run the generated script as the batch node would, with srun recording what it was asked to start
    ran = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30,
                         env=_env(tmp_path, fake_bin))
    assert ran.returncode == 0, ran.stderr
    srun = json.loads((tmp_path / "calls.jsonl").read_text())
    assert srun == ["srun", "--kill-on-bad-exit=1", f"--output={log_dir}/%x-%j-task%t.log", "python3", "-m",
                    "xalign_jax.main", "--config=configs/xglm.py:7.5b", "--workdir=/shared/runs/xglm",
                    "--config.mesh.fsdp=16"]


@pytest.mark.parametrize("extra", [["--extra", "--config.train.steps=100 --config.mesh.fsdp=16"],
                                   ["--extra=--config.train.steps=100 --config.mesh.fsdp=16"]])
def test_slurm_extra_passes_main_flags(tmp_path, fake_bin, extra):
    """``--extra`` carries main's own flags, which all start with "--"."""
    done, _ = _launch(SLURM, [*SLURM_ARGS, *extra, "--dry-run"], tmp_path, fake_bin)
    assert done.returncode == 0, done.stderr
    assert "--config.train.steps=100 --config.mesh.fsdp=16" in done.stdout


def test_slurm_one_task_per_gpu_and_no_requeue(tmp_path, fake_bin):
    done, _ = _launch(SLURM, [*SLURM_ARGS, "--task-per", "gpu", "--gpus-per-node=4", "--no-requeue", "--dry-run"],
                      tmp_path, fake_bin)
    assert "#SBATCH --ntasks-per-node=4" in done.stdout and "#SBATCH --gpus-per-node=4" in done.stdout
    assert "--requeue" not in done.stdout


def test_slurm_dry_run_prints_the_script_it_would_submit(tmp_path, fake_bin):
    done, calls = _launch(SLURM, [*SLURM_ARGS, "--log-dir", str(tmp_path / "l")], tmp_path, fake_bin)
    submitted = (tmp_path / "l" / "xalign.sbatch").read_text()
    dry, dry_calls = _launch(SLURM, [*SLURM_ARGS, "--log-dir", str(tmp_path / "dry"), "--dry-run"], tmp_path,
                             fake_bin)
    assert dry.returncode == 0 and dry_calls == [] and not (tmp_path / "dry").exists()
    assert submitted.replace(str(tmp_path / "l"), str(tmp_path / "dry")) in dry.stdout
    assert _printed_commands(dry.stdout) == [["mkdir", "-p", str(tmp_path / "dry")],
                                             ["sbatch", str(tmp_path / "dry" / "xalign.sbatch")]]


@pytest.mark.parametrize("args, message", [
    (["--workdir", "/w"], "missing setting: give --config or set XALIGN_CONFIG"),
    (["--config", "c"], "missing setting: give --workdir or set XALIGN_WORKDIR"),
    (["--config", "c", "--workdir", "runs/x"], "--workdir=runs/x: give an absolute path"),
    (["--config", "c", "--workdir", "/w", "--nodes", "two"], "--nodes=two: expected a positive integer"),
    (["--config", "c", "--workdir", "/w", "--task-per", "core"], "--task-per=core: expected one of: node gpu"),
    (["--config", "c", "--workdir", "/w", "--time", "1h"], "--time=1h: expected [D-]HH:MM:SS"),
    (["--config", "c", "--workdir", "/w", "--log-dir", "/a b"], "--log-dir=/a b: give an absolute path without"),
    (["--config", "c", "--workdir", "/w", "resubmit"], "unknown argument resubmit"),
])
def test_slurm_bad_settings_are_named_and_nothing_is_submitted(tmp_path, fake_bin, args, message):
    done, calls = _launch(SLURM, args, tmp_path, fake_bin)
    assert done.returncode == 2 and message in done.stderr and calls == []


# ---------------------------------------------------------------------------------------------- memory plan

@pytest.fixture(scope="module")
def memory_plan():
    spec = importlib.util.spec_from_file_location("memory_plan", REPO_ROOT / "launch" / "memory_plan.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, hf_class, config_class, kwargs", [
    ("bloom-7b1", "BloomForCausalLM", "BloomConfig",
     dict(n_layer=30, hidden_size=4096, n_head=32, vocab_size=250880)),
    ("xglm-7.5b", "XGLMForCausalLM", "XGLMConfig",
     dict(num_layers=32, d_model=4096, attention_heads=32, ffn_dim=16384, vocab_size=256008)),
])
def test_parameter_counts_equal_the_transformers_models(memory_plan, name, hf_class, config_class, kwargs):
    import torch
    import transformers
    with torch.device("meta"):   # shapes only, no memory
        model = getattr(transformers, hf_class)(getattr(transformers, config_class)(**kwargs))
    expected = sum(p.numel() for p in model.parameters())   # tied head counted once
    assert memory_plan.total_params(memory_plan.model_config(name)) == expected
    assert expected == {"bloom-7b1": 7_069_016_064, "xglm-7.5b": 7_492_771_840}[name]


@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (2, 2, 2), (1, 2, 4)])
def test_params_per_device_equal_jax_shard_shapes(memory_plan, mesh_shape):
    import jax

    from xalign_jax import sharding
    from xalign_jax.models import decoder
    cfg = memory_plan.model_config("bloom-7b1")
    mesh = sharding.make_mesh(*mesh_shape)
    shards = sharding.param_shardings(decoder.param_specs(cfg), mesh)
    held = sum(math.prod(shards[name].shard_shape(spec.shape)) for name, spec in decoder.param_specs(cfg).items())
    assert memory_plan.params_per_device(cfg, mesh_shape) == held
    assert len(jax.devices()) == 8


def test_readme_table_is_the_printed_plan_and_every_plan_fits(memory_plan):
    readme = (REPO_ROOT / "launch" / "README.md").read_text()
    assert memory_plan.table() in readme and memory_plan.parameter_summary() in readme
    for run in memory_plan.PLANS:
        assert memory_plan.fits(run) and memory_plan.max_rows_per_device(run) >= run.rows_per_device
    full = dataclasses.replace(memory_plan.PLANS[0], remat_policy="none")
    assert memory_plan.max_rows_per_device(full) < memory_plan.max_rows_per_device(memory_plan.PLANS[0])


def _abstract_train_state(cfg, mesh, tx):
    """The train state as sharded ShapeDtypeStructs: parameters by the rules, Adam moments like their parameters."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    from xalign_jax import sharding
    from xalign_jax.models import decoder
    shards = sharding.param_shardings(decoder.param_specs(cfg), mesh)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: decoder.init_model(cfg)), nnx.Param)

    def sharded(path, leaf):
        keys = [str(getattr(p, "key", p)) for p in path]
        name = (decoder.BLOCK_PREFIX if keys[0] == "blocks" else "") + keys[1]
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=shards[name])

    params = jax.tree_util.tree_map_with_path(sharded, params)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_state = optax.tree_map_params(
        tx, lambda s, p: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=p.sharding), jax.eval_shape(tx.init, params),
        params, transform_non_params=lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated))
    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
    return graphdef, {"params": params, "opt_state": opt_state, "step": scalar,
                      "rng": jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated)}


@pytest.mark.slow
def test_plan_against_the_compiled_train_step(memory_plan):
    """Compile the real AFP step for a 2-layer, full-width, full-vocabulary BLOOM-7b1 with FSDP over 8 devices.

    XLA's argument size must equal the plan's state exactly; the plan's total must bound XLA's argument + temp
    from above without being absurdly loose (XLA:CPU measured 8.1 GiB against the plan's 11.0 GiB).
    """
    import jax
    import jax.numpy as jnp

    from xalign_jax import config_defaults, sharding, train_step
    from xalign_jax.models.config import ModelConfig
    mesh_shape, rows, seq_len, records, cl_len = (1, 8, 1), 2, 512, 32, 128
    cfg = ModelConfig.from_hf(dict(memory_plan.HF_CONFIGS["bloom-7b1"], n_layer=2), dtype="bfloat16",
                              remat_policy="full")
    mesh = sharding.make_mesh(*mesh_shape)
    tx, schedule = train_step.make_optimizer(config_defaults.train_config())
    graphdef, state = _abstract_train_state(cfg, mesh, tx)
    batch_sharding = sharding.batch_sharding(mesh)
    shapes = {**{k: ((records, cl_len), jnp.int32) for k in train_step.CL_KEYS},
              **{k: ((rows * 8, seq_len), jnp.int32) for k in train_step.CLM_KEYS},
              "clm_weights": ((rows * 8, seq_len), jnp.float32)}
    batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding) for k, (shape, dtype) in shapes.items()}
    step = train_step.make_train_step(graphdef, tx, schedule, config_defaults.objective_config(), 1)
    state_shardings = jax.tree.map(lambda s: s.sharding, state)
    with jax.set_mesh(mesh):
        compiled = jax.jit(step, in_shardings=(state_shardings, batch_sharding),
                           out_shardings=(state_shardings, None), donate_argnums=0).lower(state, batch).compile()
    memory = compiled.memory_analysis()
    run = memory_plan.Run("bloom-7b1", "v4-32", mesh_shape, rows_per_device=rows, seq_len=seq_len,
                          cl_sentences_per_device=2 * records // 8, cl_len=cl_len)
    plan = memory_plan.breakdown(run, cfg)
    batch_bytes = sum(math.prod(s.shape) * 4 for s in batch.values()) / 8
    assert memory.argument_size_in_bytes - batch_bytes == pytest.approx(plan["state"] * memory_plan.GIB, rel=1e-6)
    measured = (memory.argument_size_in_bytes + memory.temp_size_in_bytes) / memory_plan.GIB
    assert measured <= sum(plan.values()) <= 1.6 * measured
