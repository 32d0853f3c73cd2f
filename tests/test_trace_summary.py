"""trace_summary on a small hand-written trace shaped like jax.profiler's: host self times and device durations
per name, device busy time, the stream-only rule on device processes, the categories, and the markdown's figures."""
from __future__ import annotations

import gzip
import json
import os
import pathlib

import pytest

from benchmarks import trace_summary
from tests.train_fixtures import tiny_train_config, train_tiny_tokenizer
from xalign_jax import bench


def _complete(pid: int, tid: int, name: str, ts: float, dur: float, **args) -> dict:
    return {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": ts, "dur": dur, "args": args}


def _metadata(pid: int, process: str, threads: dict[int, str]) -> list[dict]:
    events = [{"ph": "M", "pid": pid, "name": "process_name", "args": {"name": process}}]
    return events + [{"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": name}}
                     for tid, name in threads.items()]


# microseconds, over 2 steps. Host (as XLA:CPU draws it): a while op around two body ops on one thread, and a
# host event without hlo_op; device: one stream of kernels (two overlap, as kernels of one CUDA graph may) and a
# derived "XLA Ops" line re-drawing a kernel.
EVENTS = [
    *_metadata(1, "/host:CPU", {10: "python", 11: "tf_XLAEigen/1"}),
    _complete(1, 10, "PjitFunction(step)", 0, 5000),
    _complete(1, 11, "while.1", 0, 1000, hlo_op="while.1"),
    _complete(1, 11, "dot.2", 100, 300, hlo_op="dot.2"),
    _complete(1, 11, "add_fusion.3", 500, 200, hlo_op="add_fusion.3"),
    _complete(1, 11, "dot.2", 2000, 300, hlo_op="dot.2"),
    *_metadata(1, "/host:CPU", {12: "tf_XLAPjRtCpuClient/1"}),
    _complete(1, 12, "ThunkExecutor::Execute (wait for completion)", 0, 1500),
    _complete(1, 12, "ThunkExecutor::Execute (wait for completion)", 2000, 1500),
    *_metadata(2, "/device:GPU:0", {7: "Stream #7(Kernel,MemcpyD2D)", 99: "XLA Ops"}),
    _complete(2, 7, "nvjet_tst_128x256_64x4_2x1_v_bz_TNN", 0, 3000),
    _complete(2, 7, "nvjet_tst_128x256_64x4_2x1_v_bz_TNN", 4000, 3000),
    _complete(2, 7, "loop_add_fusion", 4500, 1000),
    _complete(2, 7, "loop_multiply_fusion", 3000, 500),
    _complete(2, 7, "cudnn_generated_fort_native_sdpa_sm90_flash_fprop", 8000, 1000),
    _complete(2, 7, "ncclDevKernel_AllReduce_Sum_f32_RING_LL", 9000, 250),
    _complete(2, 7, "MemcpyD2D", 9500, 250),
    _complete(2, 7, "triton_softmax_kernel", 9800, 1000),
    _complete(2, 99, "dot.7", 0, 3000, hlo_op="dot.7"),
]


def write_trace(directory: pathlib.Path, session: str = "2026_01_01_00_00_00") -> pathlib.Path:
    """The files jax.profiler.trace(create_perfetto_trace=True) leaves for one session; returns the trace JSON."""
    folder = directory / "plugins" / "profile" / session
    folder.mkdir(parents=True)
    for name, data in (("host.trace.json.gz", {"metadata": {}, "traceEvents": EVENTS}),
                       ("perfetto_trace.json.gz", {"traceEvents": EVENTS})):
        with gzip.open(folder / name, "wt") as f:
            json.dump(data, f)
    return folder / "host.trace.json.gz"


def test_host_self_time_and_device_duration_per_name():
    per_kind, per_thread, counted = trace_summary.op_times(EVENTS)
    host = per_kind[trace_summary.HOST_OPS]
    assert host == {"while.1": [500.0, 1], "dot.2": [600.0, 2], "add_fusion.3": [200.0, 1]}
    device = per_kind[trace_summary.DEVICE]
    assert device["nvjet_tst_128x256_64x4_2x1_v_bz_TNN"] == [6000.0, 2]
    assert device["loop_add_fusion"] == [1000.0, 1]          # whole duration, though it overlaps a matmul
    assert "dot.7" not in device and sum(us for us, _ in device.values()) == 10000.0
    assert trace_summary.busy_and_span(counted[trace_summary.DEVICE]) == (9000.0, 10800.0)
    assert per_thread["/device:GPU:0", "XLA Ops", None] == [1, 0, 0.0]
    assert per_thread["/host:CPU", "python", trace_summary.HOST_OPS] == [1, 0, 0.0]


def test_device_threads_all_count_when_there_are_no_streams():
    events = [*_metadata(3, "/device:TPU:0", {1: "XLA Ops"}), _complete(3, 1, "fusion.1", 0, 10)]
    per_kind, _, _ = trace_summary.op_times(events)
    assert per_kind == {trace_summary.DEVICE: {"fusion.1": [10.0, 1]}}


@pytest.mark.parametrize("name, expected", [
    ("nvjet_tst_128x256_64x4_2x1_v_bz_TNN", "matmul"), ("sm90_xmma_gemm_bf16bf16_bf16f32", "matmul"),
    ("cutlass_80_tensorop_bf16_s16816gemm", "matmul"), ("ynn_fusion.47", "matmul"), ("dot.2", "matmul"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop", "attention"),
    ("ncclDevKernel_AllReduce_Sum_f32_RING_LL", "collectives"), ("all-reduce.3", "collectives"),
    ("MemcpyD2D", "memcpy"), ("loop_multiply_fusion", "elementwise/fusion"),
    ("input_reduce_fusion", "elementwise/fusion"),
    ("triton_softmax_kernel", "other"),
])
def test_categories(name, expected):
    assert trace_summary.category(name) == expected


def test_summary_tables(tmp_path):
    write_trace(tmp_path)
    text = trace_summary.summarize(tmp_path, steps=2, top=3)
    assert "| /device:GPU:0 | XLA Ops | 1 | - | 0 | 0.0 |" in text
    assert "| /device:GPU:0 | Stream #7(Kernel,MemcpyD2D) | 8 | device | 8 | 10.0 |" in text
    assert "device busy 4.50 ms/step of a 5.40 ms/step span from first kernel to last (idle 16.7%)" in text
    assert "## device: 10.0 ms over 2 steps = 5.00 ms/step" in text
    assert "top 3 of 7 names:" in text
    assert "| nvjet_tst_128x256_64x4_2x1_v_bz_TNN | 6.00 | 3.000 | 60.0 | 2 |" in text
    assert "| matmul | 6.00 | 3.000 | 60.0 | 2 |" in text
    assert "| other | 1.00 | 0.500 | 10.0 | 1 |" in text
    assert "## host XLA ops: 1.3 ms over 2 steps = 0.65 ms/step" in text
    # op events cover 0-1000 and 2000-2300 us of the two 1500 us program runs
    assert "XLA op events cover 0.65 ms/step of the 1.50 ms/step the programs ran (43.3%)" in text
    assert "| matmul | 0.60 | 0.300 | 46.2 | 2 |" in text


def test_find_trace_takes_the_newest_session_or_a_file(tmp_path):
    old = write_trace(tmp_path, "2026_01_01_00_00_00")
    new = write_trace(tmp_path, "2026_01_02_00_00_00")
    os.utime(old, (1, 1))
    assert trace_summary.find_trace(tmp_path) == new
    assert trace_summary.find_trace(old) == old
    with pytest.raises(FileNotFoundError):
        trace_summary.find_trace(tmp_path / "plugins" / "profile" / "nothing_here")


def test_bench_profiles_untimed_steps(tmp_path, shared_data):
    """The bench's --profile_dir path end to end on the tiny config: the timed steps stay as asked, and the trace of
    the profiled steps holds XLA ops that each ran a multiple of profile_steps times."""
    config = tiny_train_config(train_tiny_tokenizer(shared_data, tmp_path / "tok"), shared_data)
    config.data.cl_buckets = (64,)
    report = bench.run_benchmark(config, steps=2, warmup=1, workdir=tmp_path / "bench", measure_load=False,
                                 profile_dir=tmp_path / "profile", profile_steps=3)
    assert len(report["jax"]["step_s"]["all"]) == 2
    assert report["profile"] == {"dir": str(tmp_path / "profile"), "steps": 3}
    per_kind, _, _ = trace_summary.op_times(trace_summary.load_events(trace_summary.find_trace(tmp_path / "profile")))
    ops = per_kind[trace_summary.HOST_OPS]
    assert ops and all(count % 3 == 0 for _, count in ops.values())
    assert "XLA op events cover" in trace_summary.summarize(tmp_path / "profile", steps=3)
