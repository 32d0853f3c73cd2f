"""Multi-process start-up: decide how this process joins the job, then call ``jax.distributed.initialize`` once.

Every host runs the same program. Before any other JAX call, ``maybe_initialize`` picks one of four set-ups:

  * ``explicit``: ``--coordinator_address/--num_processes/--process_id`` were given (any launcher, or two local
    processes on one machine for tests);
  * ``slurm``: ``srun`` started more than one task (``SLURM_NTASKS`` > 1). We read the SLURM variables ourselves
    instead of relying on JAX's detector because that detector pins every process to ONE local GPU
    (``SLURM_LOCALID``), which is wrong for our default of one task per node driving all of its GPUs;
  * ``tpu``: a Cloud TPU VM (TPU variables in the environment or TPU chips on the PCI bus). There
    ``jax.distributed.initialize()`` with no arguments reads the slice layout from the TPU metadata itself;
  * ``single``: nothing to join; no initialisation (a plain one-process run).

``plan`` is a pure function of its arguments and an environment mapping, so the detection is unit-tested without
starting anything.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import re
from typing import Mapping

log = logging.getLogger(__name__)

DEFAULT_CPU_COLLECTIVES = "gloo"    # jax_cpu_collectives_implementation: gloo | mpi (CPU needs one to go multi-process)
SLURM_PORT_BASE = 61440             # coordinator port = base + job id % 4096, the range JAX's own detector uses
TPU_ENV_VARS = ("TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE", "TPU_PROCESS_ADDRESSES")
PCI_DEVICES = "/sys/bus/pci/devices"
GOOGLE_PCI_VENDOR = "0x1ae0"
# PCI device ids of TPU chips v3 .. v7x (Google's vendor id alone also matches the gVNIC network card)
TPU_PCI_DEVICE_IDS = frozenset({"0x0027", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"})


@dataclasses.dataclass(frozen=True)
class ProcessPlan:
    """How this process joins the job; ``kind == "single"`` means no ``jax.distributed.initialize`` call."""
    kind: str                                   # explicit | slurm | tpu | single
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None   # None: every device this host can see

    @property
    def initializes(self) -> bool:
        return self.kind != "single"


def plan(coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None,
         env: Mapping[str, str] | None = None, pci_devices: str = PCI_DEVICES) -> ProcessPlan:
    """The set-up for the given flags and environment: explicit flags, else SLURM, else Cloud TPU, else single."""
    env = os.environ if env is None else env
    if any(value is not None for value in (coordinator_address, num_processes, process_id)):
        return _explicit_plan(coordinator_address, num_processes, process_id)
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in env:
        return slurm_plan(env)
    if any(env.get(name) for name in TPU_ENV_VARS) or tpu_chips_present(pci_devices):
        return ProcessPlan("tpu")
    return ProcessPlan("single")


def tpu_chips_present(pci_devices: str = PCI_DEVICES) -> bool:
    """Whether this host has TPU chips, read from the PCI ids in sysfs (what libtpu checks; no network)."""
    for device in pathlib.Path(pci_devices).glob("*"):
        try:
            vendor, model = (device / "vendor").read_text().strip(), (device / "device").read_text().strip()
        except OSError:
            continue
        if vendor == GOOGLE_PCI_VENDOR and model in TPU_PCI_DEVICE_IDS:
            return True
    return False


def _explicit_plan(coordinator_address: str | None, num_processes: int | None,
                   process_id: int | None) -> ProcessPlan:
    missing = [name for name, value in (("--coordinator_address", coordinator_address),
                                        ("--num_processes", num_processes), ("--process_id", process_id))
               if value is None]
    if missing:
        raise ValueError(f"multi-process flags: {', '.join(missing)} missing; give all three of "
                         "--coordinator_address=HOST:PORT --num_processes=N --process_id=I, or none")
    if not re.fullmatch(r"\[?[\w.\-:]+\]?:\d+", coordinator_address):
        raise ValueError(f"--coordinator_address={coordinator_address!r}: expected HOST:PORT")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id={process_id} must lie in [0, --num_processes={num_processes})")
    if num_processes == 1:
        return ProcessPlan("single")
    return ProcessPlan("explicit", coordinator_address, num_processes, process_id)


def slurm_plan(env: Mapping[str, str]) -> ProcessPlan:
    """Coordinator on the job's first node; all local devices with one task per node, else the task's own GPU."""
    try:
        num_processes, process_id = int(env["SLURM_NTASKS"]), int(env["SLURM_PROCID"])
        nodelist = env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"]
        port = env.get("JAX_COORDINATOR_PORT") or str(SLURM_PORT_BASE + int(env["SLURM_JOB_ID"]) % 4096)
    except KeyError as error:
        raise ValueError(f"SLURM environment: variable {error.args[0]} is not set (start the job with srun)") from None
    except ValueError as error:
        raise ValueError(f"SLURM environment: {error}") from None
    tasks_per_node = max(expand_tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE")
                                               or env.get("SLURM_TASKS_PER_NODE") or "1"))
    local_ids = None if tasks_per_node == 1 else (int(env.get("SLURM_LOCALID", "0")),)
    return ProcessPlan("slurm", f"{first_slurm_host(nodelist)}:{port}", num_processes, process_id, local_ids)


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[003-010,012],cpu1`` -> ``gpu003``; ``a1,b2`` -> ``a1``."""
    match = re.match(r"([^,\[]+)(?:\[([^\],\-]+))?", nodelist.strip())
    if not match:
        raise ValueError(f"SLURM node list {nodelist!r}: cannot read the first host")
    return match.group(1) + (match.group(2) or "")


def expand_tasks_per_node(spec: str) -> list[int]:
    """SLURM's compressed tasks-per-node list, one entry per node: ``2(x3),1`` -> ``[2, 2, 2, 1]``."""
    counts = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not match:
            raise ValueError(f"SLURM tasks-per-node {spec!r}: cannot read {part!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, *, cpu_collectives: str | None = DEFAULT_CPU_COLLECTIVES,
                     initialization_timeout: int = 300) -> ProcessPlan:
    """Join the multi-process job this process belongs to (if any). Call before any other JAX use.

    Calling it again after a successful initialisation is a no-op, so tests and notebooks can run ``main`` twice.
    """
    import jax

    chosen = plan(coordinator_address, num_processes, process_id)
    if not chosen.initializes or jax.distributed.is_initialized():
        return chosen
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if chosen.kind == "tpu":
        jax.distributed.initialize(initialization_timeout=initialization_timeout)
    else:
        jax.distributed.initialize(chosen.coordinator_address, chosen.num_processes, chosen.process_id,
                                   local_device_ids=chosen.local_device_ids, cluster_detection_method="deactivate",
                                   initialization_timeout=initialization_timeout)
    log.info("joined the job as %s (%s set-up)", process_info(), chosen.kind)
    return chosen


def is_main_process() -> bool:
    """Process 0 writes logs, summaries and exports; every process takes part in checkpoints and steps."""
    import jax
    return jax.process_index() == 0


def process_info() -> str:
    """``process 1/4 on host-b, 8 local of 32 tpu devices`` for the first log line of every process."""
    import socket

    import jax
    return (f"process {jax.process_index()}/{jax.process_count()} on {socket.gethostname()}, "
            f"{jax.local_device_count()} local of {jax.device_count()} {jax.default_backend()} devices")
