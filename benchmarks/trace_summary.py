"""Where a profiled train step's time goes: per-op time from a ``jax.profiler`` trace, as markdown tables.

    python benchmarks/trace_summary.py PROFILE_DIR|TRACE.json.gz [--steps 3] [--top 25] [--out summary.md]

PROFILE_DIR is what ``python -m xalign_jax.bench --profile_dir`` wrote; the newest ``*.trace.json.gz`` under it
(Chrome trace-event JSON) is read. The time of its complete events ("ph": "X") is summed per event name,
separately per kind of timeline:
  * ``device``: processes named ``/device:...`` (``/device:GPU:0``); of their threads only the streams
    (``Stream #7(Kernel,MemcpyD2D)``) when there are any, since other lines there may re-draw the same time;
    the names are kernel names;
  * ``host XLA ops``: host events that carry an ``hlo_op`` argument. With the CPU backend these are the executed
    HLO ops and fusions (threads run at once, so their sum can exceed the wall time); on a GPU, the host side.
Host ops count their self time: an event's duration less that of the counted events nested in it on the same
thread (XLA:CPU draws a ``while`` around its body's ops). Device kernels count their whole duration: they never
nest, but kernels of one CUDA graph may overlap on a stream, so the device section also gives the time the device
was busy (the union of its kernels' intervals) and the span from the first kernel's start to the last one's end.
Every thread is listed with what was counted from it. Nothing is estimated: the tables hold what the trace holds,
divided by ``--steps`` (the bench's ``--profile_steps``) for the per-step column.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib

DEVICE, HOST_OPS = "device", "host XLA ops"
# first match wins, on the lower-cased name; ynn_ fusions are XLA:CPU's YNNPACK library calls, built around dots
CATEGORIES = (
    ("attention", ("cudnn", "flash", "fmha", "sdpa")),
    ("collectives", ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective", "nccl")),
    ("memcpy", ("memcpy", "memset")),
    ("matmul", ("dot", "gemm", "matmul", "cublas", "cutlass", "nvjet", "ynn_")),
    ("elementwise/fusion", ("fusion", "loop", "reduce")),
)
NAME_WIDTH = 120
EXECUTION_WAIT = "ThunkExecutor::Execute (wait for completion)"   # XLA:CPU: one per run of a compiled program


def find_trace(path: pathlib.Path) -> pathlib.Path:
    """``path`` itself when it is a file, else the newest ``*.trace.json.gz`` under it (one per profiling session)."""
    if path.is_file():
        return path
    traces = sorted(path.rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not traces:
        raise FileNotFoundError(f"no *.trace.json.gz under {path}")
    return traces[-1]


def load_events(trace: pathlib.Path) -> list[dict]:
    with gzip.open(trace, "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def timeline_names(events: list[dict]) -> tuple[dict, dict]:
    """Process name per pid and thread name per (pid, tid), from the metadata ("ph": "M") events."""
    processes, threads = {}, {}
    for event in events:
        if event.get("ph") == "M" and event.get("name") == "process_name":
            processes[event["pid"]] = event["args"]["name"]
        elif event.get("ph") == "M" and event.get("name") == "thread_name":
            threads[event["pid"], event["tid"]] = event["args"]["name"]
    return processes, threads


def kind_of_threads(processes: dict, threads: dict, lanes: set) -> dict:
    """The kind counted from each (pid, tid) that has complete events, or None where nothing is counted."""
    streams = {pid for (pid, _), name in threads.items() if name.startswith("Stream")}
    kinds = {}
    for pid, tid in lanes:
        thread = threads.get((pid, tid), str(tid))
        if "/device:" in processes.get(pid, ""):
            kinds[pid, tid] = DEVICE if pid not in streams or thread.startswith("Stream") else None
        else:
            kinds[pid, tid] = HOST_OPS
    return kinds


def self_times(events: list[dict]) -> list[tuple[dict, float]]:
    """Each event with its duration less the durations of the events directly nested in it on its thread."""
    lanes = collections.defaultdict(list)
    for event in events:
        lanes[event["pid"], event["tid"]].append(event)
    out = []
    for lane in lanes.values():
        lane.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[list] = []
        for event in lane:
            while stack and event["ts"] >= stack[-1][0]["ts"] + stack[-1][0]["dur"]:
                out.append(tuple(stack.pop()))
            if stack:
                stack[-1][1] -= event["dur"]
            stack.append([event, event["dur"]])
        out.extend(tuple(entry) for entry in stack)
    return out


def busy_and_span(events: list[dict]) -> tuple[float, float]:
    """Microseconds covered by at least one event (the union of their intervals), and from first start to last end."""
    busy, end = 0.0, float("-inf")
    for event in sorted(events, key=lambda e: e["ts"]):
        start, stop = event["ts"], event["ts"] + event["dur"]
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    span = end - min(e["ts"] for e in events) if events else 0.0
    return busy, span


def op_times(events: list[dict]) -> tuple[dict, dict, dict]:
    """Per kind, {name: [microseconds, count]}; per thread, [complete events, counted, counted us]; per kind, the
    counted events."""
    processes, threads = timeline_names(events)
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    kinds = kind_of_threads(processes, threads, {(e["pid"], e["tid"]) for e in complete})
    per_thread = {lane: [0, 0, 0.0] for lane in kinds}
    counted = collections.defaultdict(list)
    for event in complete:
        lane = (event["pid"], event["tid"])
        per_thread[lane][0] += 1
        kind = kinds[lane]
        if kind == DEVICE or (kind == HOST_OPS and "hlo_op" in event.get("args", {})):
            counted[kind].append(event)
    per_kind = {}
    for kind, kind_events in counted.items():
        totals = per_kind.setdefault(kind, collections.defaultdict(lambda: [0.0, 0]))
        timed = self_times(kind_events) if kind == HOST_OPS else [(e, e["dur"]) for e in kind_events]
        for event, self_us in timed:
            self_us = max(self_us, 0.0)          # rounding of nested timestamps
            totals[event["name"]][0] += self_us
            totals[event["name"]][1] += 1
            per_thread[event["pid"], event["tid"]][1] += 1
            per_thread[event["pid"], event["tid"]][2] += self_us
    named = {(processes.get(pid, str(pid)), threads.get((pid, tid), str(tid)), kinds[pid, tid]): counts
             for (pid, tid), counts in per_thread.items()}
    return per_kind, named, counted


def category(name: str) -> str:
    lowered = name.lower()
    return next((label for label, keys in CATEGORIES if any(key in lowered for key in keys)), "other")


def _cell(name: str) -> str:
    name = name.replace("|", "\\|")
    return name if len(name) <= NAME_WIDTH else name[:NAME_WIDTH - 1] + "…"


def kind_tables(kind: str, totals: dict, steps: int, top: int) -> list[str]:
    """Top ops by time, then the same time grouped by category, for one kind of timeline."""
    all_us = sum(us for us, _ in totals.values())
    groups = collections.defaultdict(lambda: [0.0, 0])
    for name, (us, count) in totals.items():
        group = groups[category(name)]
        group[0] += us
        group[1] += count
    lines = [f"## {kind}: {all_us / 1e3:.1f} ms over {steps} steps = {all_us / 1e3 / steps:.2f} ms/step", "",
             f"top {min(top, len(totals))} of {len(totals)} names:", "",
             "| op | total ms | ms/step | % | count |", "|---|---|---|---|---|"]
    for name, (us, count) in sorted(totals.items(), key=lambda item: -item[1][0])[:top]:
        lines.append(f"| {_cell(name)} | {us / 1e3:.2f} | {us / 1e3 / steps:.3f} | {100 * us / all_us:.1f} "
                     f"| {count} |")
    lines += ["", "| category | total ms | ms/step | % | count |", "|---|---|---|---|---|"]
    for label, (us, count) in sorted(groups.items(), key=lambda item: -item[1][0]):
        lines.append(f"| {label} | {us / 1e3:.2f} | {us / 1e3 / steps:.3f} | {100 * us / all_us:.1f} | {count} |")
    return lines + [""]


def host_coverage(events: list[dict], host_ops: list[dict], steps: int) -> list[str]:
    """How much of the programs' run time XLA:CPU's op events cover: an Eigen dot's event ends when it hands its
    work to the thread pool, which may run on for longer than the event, under no op; a table of op times then
    under-counts dots. Both figures are read from the trace; nothing is attributed."""
    runs = [e for e in events if e.get("ph") == "X" and e.get("name") == EXECUTION_WAIT]
    if not runs or not host_ops:
        return []
    covered, ran = busy_and_span(host_ops)[0] / 1e3 / steps, sum(e["dur"] for e in runs) / 1e3 / steps
    return [f"XLA op events cover {covered:.2f} ms/step of the {ran:.2f} ms/step the programs ran "
            f"({100 * covered / ran:.1f}%); the rest is thread-pool work handed off by an op whose event had "
            f"ended (Eigen dots) or idle time", ""]


def summarize(path: pathlib.Path, steps: int = 3, top: int = 25) -> str:
    """The markdown report for the trace at (or newest under) ``path``."""
    trace = find_trace(path)
    trace_events = load_events(trace)
    per_kind, per_thread, counted_events = op_times(trace_events)
    lines = [f"# Trace summary of {trace}", "", "timelines (complete events; counted = the time summed below):", "",
             "| process | thread | events | counted as | counted events | counted ms |", "|---|---|---|---|---|---|"]
    for (process, thread, kind), (events, counted, us) in sorted(per_thread.items()):
        lines.append(f"| {process} | {_cell(thread)} | {events} | {kind if counted else '-'} | {counted} "
                     f"| {us / 1e3:.1f} |")
    lines.append("")
    if not per_kind:
        lines.append("no device or XLA-op events in this trace")
    if counted_events.get(DEVICE):
        busy, span = (us / 1e3 / steps for us in busy_and_span(counted_events[DEVICE]))
        lines += [f"device busy {busy:.2f} ms/step of a {span:.2f} ms/step span from first kernel to last "
                  f"(idle {100 * (1 - busy / span):.1f}%)", ""]
    lines += host_coverage(trace_events, counted_events.get(HOST_OPS, []), steps)
    for kind in (DEVICE, HOST_OPS):
        if kind in per_kind:
            lines += kind_tables(kind, per_kind[kind], steps, top)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile_dir", type=pathlib.Path, help="a --profile_dir, or one trace .json.gz")
    parser.add_argument("--steps", type=int, default=3, help="steps in the trace (the bench's --profile_steps)")
    parser.add_argument("--top", type=int, default=25, help="rows in the per-op table")
    parser.add_argument("--out", type=pathlib.Path, help="also write the markdown here")
    options = parser.parse_args()
    summary = summarize(options.profile_dir, options.steps, options.top)
    print(summary)
    if options.out:
        options.out.write_text(summary + "\n")


if __name__ == "__main__":
    main()
