"""Two processes x 4 CPU devices train exactly like one process x 8 devices, and share one checkpoint.

Three real runs of ``python -m xalign_jax.main`` on the demo config (same global batches, same mesh shape):
  1. reference: 1 process, 8 devices, 3 steps (it also builds the training set the other runs read);
  2. 2 processes x 4 devices on localhost (coordinator on a free port, gloo CPU collectives), 2 steps;
  3. 1 process, 8 devices, resuming the 2-process run's work directory to step 3.
Per-step losses of (2) must equal (1), there must be one checkpoint of step 2, and the resumed step 3 must equal the
reference's step 3 (train state and data position restored). All three share a compilation cache: the resumed run
must load the step the reference compiled. A constant learning rate keeps the schedule independent of
``train.steps``. A second test sends SIGTERM to one of two processes: both must stop at one step.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.test_configs import load_config
from xalign_jax import training_data

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 900
OVERRIDES = ["--config=configs/demo.py", "--config.train.schedule=constant", "--config.train.warmup_steps=0",
             "--config.train.log_every=1", "--config.train.checkpoint_every=1000", "--config.data.clm_rows=8"]
LOSS_KEYS = ("train/loss", "train/cl_loss", "train/clm_loss", "train/grad_norm")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(devices: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               HF_HUB_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE")
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    return env


def _start(workdir: pathlib.Path, args: list[str], devices: int, log_name: str) -> tuple[subprocess.Popen, pathlib.Path]:
    log = workdir.parent / f"{log_name}.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "xalign_jax.main", f"--workdir={workdir}", *OVERRIDES, *args],
                                   cwd=REPO_ROOT, env=_env(devices), stdout=out, stderr=subprocess.STDOUT)
    return process, log


def _run_all(specs: list[tuple[pathlib.Path, list[str], int, str]]) -> None:
    """Start every process, wait for all; on any failure or timeout kill the rest and show their log tails."""
    started = []
    try:
        for spec in specs:
            started.append(_start(*spec))
        for process, _ in started:
            process.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for process, _ in started:
            if process.poll() is None:
                process.kill()
                process.wait()
    failed = [(p.returncode, log) for p, log in started if p.returncode != 0]
    assert not failed, "\n\n".join(f"{log.name} exited {code}:\n" + "\n".join(log.read_text().splitlines()[-40:])
                                   for code, log in failed)


def _losses(workdir: pathlib.Path) -> dict[int, dict[str, float]]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: {k: row[k] for k in LOSS_KEYS} for row in rows if "train/loss" in row}


def _cache_args(directory: pathlib.Path | str) -> list[str]:
    return [f"--config.compilation_cache.dir={directory}", "--config.compilation_cache.min_compile_seconds=0"]


def test_two_processes_match_one_and_share_a_checkpoint(tmp_path):
    reference, multi = tmp_path / "one_process", tmp_path / "two_processes"
    cache = _cache_args(tmp_path / "xla")
    _run_all([(reference, ["--config.train.steps=3", *cache], 8, "reference")])
    train_file = reference / "data" / "train.jsonl"
    assert train_file.exists()

    coordinator = f"127.0.0.1:{_free_port()}"
    shared = ["--config.train.steps=2", f"--config.data.train_file={train_file}", f"--coordinator_address={coordinator}",
              "--num_processes=2", *cache]
    _run_all([(multi, [*shared, f"--process_id={i}"], 4, f"process{i}") for i in range(2)])
    expected = _losses(reference)
    got = _losses(multi)
    assert sorted(got) == [1, 2] and sorted(expected) == [1, 2, 3]
    for step in (1, 2):
        assert got[step] == pytest.approx(expected[step], rel=1e-5), f"step {step}"
    assert sorted(p.name for p in (multi / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
    assert "2 process(es)" in (multi / "train.log").read_text()

    _run_all([(multi, ["--config.train.steps=3", f"--config.data.train_file={train_file}", *cache], 8, "resumed")])
    resumed_log = (multi / "train.log").read_text().split("resumed from step 2", 1)
    assert len(resumed_log) == 2
    assert re.search(r"compile #1 of the train step in [\d.]+s \(loaded from the compilation cache\)", resumed_log[1])
    assert json.loads((multi / "summary.json").read_text())["compiles_loaded_from_cache"] == 1
    assert sorted(p.name.rsplit("-", 1)[1] for p in (tmp_path / "xla").iterdir()) == ["1proc", "2proc"]
    assert _losses(multi)[3] == pytest.approx(expected[3], rel=1e-5)


def test_sigterm_to_one_process_stops_both_at_one_step_with_a_checkpoint(tmp_path):
    """Preemption reaches the workers of a job at different times (or only some of them): both processes must
    stop after the same step, save it together and exit cleanly, instead of one entering the checkpoint save
    while the other runs the next step's collectives."""
    train_file = training_data.training_file(load_config("demo.py", None), tmp_path / "data")   # built here, once
    workdir = tmp_path / "two_processes"
    args = ["--config.train.steps=100000", f"--config.data.train_file={train_file}",
            f"--coordinator_address=127.0.0.1:{_free_port()}", "--num_processes=2", *_cache_args("")]
    started = [_start(workdir, [*args, f"--process_id={i}"], 4, f"process{i}") for i in range(2)]
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not (workdir / "metrics.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        started[1][0].send_signal(signal.SIGTERM)
        codes = [process.wait(timeout=RUN_TIMEOUT_S) for process, _ in started]
    finally:
        for process, _ in started:
            if process.poll() is None:
                process.kill()
    logs = [log.read_text() for _, log in started]
    assert codes == [0, 0], "\n\n".join(text[-3000:] for text in logs)
    stops = [re.search(r"every process stops after step (\d+)", text) for text in logs]
    assert all(stops) and stops[0].group(1) == stops[1].group(1), [s and s.group(0) for s in stops]
    step = int(stops[0].group(1))
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [step]
    assert json.loads((workdir / "summary.json").read_text())["preempted"] is True
