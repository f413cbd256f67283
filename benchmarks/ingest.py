"""Ingest throughput: the same MR study sent with dcmtk's storescu over loopback to our listener, to dcmtk's storescp
writing to disk, and to Orthanc; then the listener's peak memory over 1,000 instances.

Each measurement starts a fresh receiver with empty storage, sends the study (one association, then split over
parallel senders), checks that every instance was stored, and stops it. Repetitions alternate the receivers so that
a busy moment on the machine does not fall on one of them only. Figures are printed, never asserted.

    python -m benchmarks.ingest --repeat 5
    python -m benchmarks.ingest --quick        # 60 instances, 2 repetitions: checks that it works
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from tests.conftest import free_port
from tests.dicom_factory import write_mr_study
from tests.peers.dcmtk import dcmtk_environment, run_storescp, storescu
from tests.peers.orthanc import run_orthanc
from tests.peers.processes import stop_process, wait_for_port

# ---------------------------------------------------------------------------------------------------- receivers


@dataclass
class Receiver:
    """A running receiver: where to send, which process tree holds it, and how many instances it has stored."""

    port: int
    called_ae: str
    pid: int
    stored: Callable[[], int]


def count_files(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("*.dcm"))


@contextmanager
def run_plvi(work_dir: Path) -> Iterator[Receiver]:
    """Our service with private data and ports, and a settle time long enough that no analysis runs meanwhile."""
    port = free_port()
    env = {
        **dcmtk_environment(),
        "PLVI_DATA_DIR": str(work_dir / "var"),
        "PLVI_PORT": str(port),
        "PLVI_HTTP_PORT": str(free_port()),
        "PLVI_SETTLE_SECONDS": "86400",
        "PLVI_FREE_SPACE_RESERVE_MB": "0",
    }
    for inherited in ("PLVI_DATABASE_URL", "PLVI_BROKER_URL", "PLVI_SETTINGS_FILE"):
        env.pop(inherited, None)
    with (work_dir / "plvi.log").open("wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "plvi"), "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=work_dir,
            start_new_session=True,
        )
    try:
        wait_for_port(port, process, timeout=60)
        time.sleep(2.0)  # let the worker processes finish starting before the clock runs
        yield Receiver(port, "PLVI", process.pid, lambda: count_files(work_dir / "var" / "spool"))
    finally:
        stop_process(process, timeout=30, group=True)


@contextmanager
def run_storescp_receiver(work_dir: Path) -> Iterator[Receiver]:
    """dcmtk's storescp writing each instance to disk (no fsync), one forked process per association."""
    port = free_port()
    out_dir = work_dir / "received"
    with run_storescp(port, out_dir, extra_args=["--fork"]) as process:
        yield Receiver(port, "STORESCP", process.pid, lambda: count_files(out_dir))


@contextmanager
def run_orthanc_receiver(work_dir: Path) -> Iterator[Receiver]:
    """Orthanc with its defaults (SQLite index, fsynced storage area, 4 DICOM threads)."""
    with run_orthanc(work_dir) as orthanc:
        yield Receiver(
            orthanc.dicom_port, orthanc.aet, orthanc.process.pid,
            lambda: orthanc.get("/statistics")["CountInstances"],
        )  # fmt: skip


RECEIVERS: dict[str, Callable[[Path], AbstractContextManager[Receiver]]] = {
    "plvi": run_plvi,
    "storescp": run_storescp_receiver,
    "orthanc": run_orthanc_receiver,
}


# ---------------------------------------------------------------------------------------------------- measuring


def write_study(out_dir: Path, instances: int, *, seed: int) -> list[Path]:
    """One axial MR series of 512x512 16-bit slices, Explicit VR Little Endian; another seed, other UIDs."""
    return write_mr_study(out_dir, series=1, instances_per_series=instances, rows=512, cols=512, seed=seed)


def split(paths: list[Path], senders: int) -> list[list[Path]]:
    """Contiguous shares, as a PACS forwarding series in parallel would send them."""
    share = -(-len(paths) // senders)
    return [paths[start : start + share] for start in range(0, len(paths), share)]


def send(receiver: Receiver, batches: list[list[Path]]) -> float:
    """Seconds from launching the storescu processes (one per batch, concurrently) until the last one exits."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(batches)) as pool:
        results = list(
            pool.map(
                lambda batch: storescu(receiver.port, batch, called_ae=receiver.called_ae, timeout=900),
                batches,
            )
        )
    elapsed = time.perf_counter() - started
    for result in results:
        if result.returncode != 0:
            raise RuntimeError(f"storescu failed ({result.returncode}): {result.stderr[-2000:]}")
    return elapsed


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def memory_kib(pid: int, field_name: str, source: str = "status") -> int:
    """A KiB field of /proc/<pid>/status (VmRSS now, VmHWM the peak) or of /proc/<pid>/smaps_rollup (Pss: shared
    pages divided among the processes sharing them, so forked workers are not counted twice); 0 once gone."""
    try:
        for line in Path(f"/proc/{pid}/{source}").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of a process tree, including children it has reaped (and zombies not yet reaped).

    CPU per instance stays meaningful on a loaded machine, where wall-clock rates swing from run to run.
    """
    ticks = 0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(
            int(value) for value in fields[11:15]
        )  # utime, stime, cutime, cstime (proc(5) fields 14-17)
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class MemorySampler:
    """Samples the summed RSS and PSS of a process tree every 50 ms in a thread and keeps the peaks."""

    root: int
    peak_tree_kib: int = 0
    peak_tree_pss_kib: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            pids = process_tree(self.root)
            self.peak_tree_kib = max(self.peak_tree_kib, sum(memory_kib(pid, "VmRSS") for pid in pids))
            self.peak_tree_pss_kib = max(
                self.peak_tree_pss_kib, sum(memory_kib(pid, "Pss", "smaps_rollup") for pid in pids)
            )
            if self._stop.wait(0.05):
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class Run:
    receiver: str
    senders: int
    repetition: int
    seconds: float
    cpu_seconds: float
    instances: int
    megabytes: float

    @property
    def instances_per_second(self) -> float:
        return self.instances / self.seconds

    @property
    def megabytes_per_second(self) -> float:
        return self.megabytes / self.seconds

    @property
    def cpu_ms_per_instance(self) -> float:
        return 1000 * self.cpu_seconds / self.instances


@dataclass(frozen=True)
class Footprint:
    instances: int
    senders: int
    idle_cpu_percent: float  # of one core, the whole tree, with no association open
    idle_tree_kib: int
    peak_tree_kib: int
    peak_tree_pss_kib: int
    processes: int
    peak_main_kib: int  # VmHWM of the main `plvi serve` process, where the listener runs; workers excluded


def measure(name: str, paths: list[Path], senders: int, repetition: int, scratch: Path) -> Run:
    """One run against a fresh receiver; fails loudly if any instance is missing afterwards."""
    work_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=scratch))
    try:
        with RECEIVERS[name](work_dir) as receiver:
            cpu_before = tree_cpu_seconds(receiver.pid)
            seconds = send(receiver, split(paths, senders))
            cpu_seconds = tree_cpu_seconds(receiver.pid) - cpu_before
            stored = receiver.stored()
        if stored != len(paths):
            raise RuntimeError(f"{name} stored {stored} of {len(paths)} instances; see {work_dir}")
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    megabytes = sum(path.stat().st_size for path in paths) / 1e6
    return Run(name, senders, repetition, seconds, cpu_seconds, len(paths), megabytes)


def measure_footprint(paths: list[Path], senders: int, scratch: Path, idle_seconds: float = 5.0) -> Footprint:
    """`plvi serve` at rest (CPU and memory), then its peak memory while it receives `paths` from `senders`
    parallel storescu."""
    work_dir = Path(tempfile.mkdtemp(prefix="plvi-footprint-", dir=scratch))
    try:
        with run_plvi(work_dir) as receiver:
            cpu_before = tree_cpu_seconds(receiver.pid)
            time.sleep(idle_seconds)
            idle_cpu_percent = 100 * (tree_cpu_seconds(receiver.pid) - cpu_before) / idle_seconds
            idle = sum(memory_kib(pid, "VmRSS") for pid in process_tree(receiver.pid))
            with MemorySampler(receiver.pid) as sampler:
                send(receiver, split(paths, senders))
            peak_main = memory_kib(receiver.pid, "VmHWM")
            processes = len(process_tree(receiver.pid))
            if receiver.stored() != len(paths):
                raise RuntimeError(
                    f"plvi stored {receiver.stored()} of {len(paths)} instances; see {work_dir}"
                )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return Footprint(
        len(paths), senders, idle_cpu_percent, idle, sampler.peak_tree_kib, sampler.peak_tree_pss_kib, processes,
        peak_main,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------- reporting

LABELS = {"plvi": "plvi (a)", "storescp": "dcmtk storescp (b)", "orthanc": "Orthanc (c)"}


def report(runs: list[Run], footprint: Footprint, context: str) -> str:
    """Markdown: medians per receiver and sender count, plvi's rate relative to each peer, plvi's footprint."""

    def select(name: str, senders: int) -> list[Run]:
        return [run for run in runs if run.receiver == name and run.senders == senders]

    senders_options = sorted({run.senders for run in runs})
    lines = [
        f"### Ingest over loopback ({context})",
        "",
        "| receiver | senders | instances/s | MB/s | receiver CPU ms/instance | instances/s min–max |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for senders in senders_options:
        for name, label in LABELS.items():
            chosen = select(name, senders)
            rates = [run.instances_per_second for run in chosen]
            lines.append(
                f"| {label} | {senders} | {statistics.median(rates):.1f} "
                f"| {statistics.median(run.megabytes_per_second for run in chosen):.1f} "
                f"| {statistics.median(run.cpu_ms_per_instance for run in chosen):.1f} "
                f"| {min(rates):.1f}–{max(rates):.1f} |"
            )
    lines += [
        "",
        (
            "plvi's rate over each peer's, the median of the ratios within each repetition (runs minutes apart share "
            "the machine's load less than runs seconds apart):"
        ),
        "",
        "| senders | plvi / storescp | plvi / Orthanc |",
        "|---:|---:|---:|",
    ]
    for senders in senders_options:
        ours = {run.repetition: run.instances_per_second for run in select("plvi", senders)}
        ratios = [
            statistics.median(
                ours[run.repetition] / run.instances_per_second for run in select(peer, senders)
            )
            for peer in ("storescp", "orthanc")
        ]
        lines.append(f"| {senders} | {ratios[0]:.2f} | {ratios[1]:.2f} |")
    lines += [
        "",
        (
            "Durability differs: storescp writes without flushing; Orthanc (SyncStorageArea) flushes each file but not "
            "its index per instance (strace: about 1 fdatasync per instance); plvi flushes the file, its folder and "
            "the database row before it answers success."
        ),
        "",
        (
            f"plvi memory while receiving {footprint.instances} instances from {footprint.senders} parallel senders: "
            f"the main `plvi serve` process, where the listener runs, peaked at "
            f"{footprint.peak_main_kib / 1024:.0f} MiB (VmHWM); "
            f"its whole process tree ({footprint.processes} processes, workers included) at "
            f"{footprint.peak_tree_kib / 1024:.0f} MiB summed RSS ({footprint.idle_tree_kib / 1024:.0f} MiB at rest) "
            f"and {footprint.peak_tree_pss_kib / 1024:.0f} MiB summed PSS (pages shared by forked workers counted "
            f"once), sampled every 50 ms. At rest the tree "
            f"uses {footprint.idle_cpu_percent:.1f} % of one core, which the CPU column above includes."
        ),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeat", type=int, default=5, help="alternating repetitions per receiver (default 5)"
    )
    parser.add_argument("--instances", type=int, default=300, help="instances in the study (default 300)")
    parser.add_argument("--senders", type=int, default=8, help="parallel storescu processes (default 8)")
    parser.add_argument(
        "--memory-instances", type=int, default=1000, help="instances for peak RSS (default 1000)"
    )
    parser.add_argument("--quick", action="store_true", help="60 instances, 2 repetitions, 200 for memory")
    args = parser.parse_args(argv)
    if args.quick:
        args.instances, args.repeat, args.memory_instances = 60, 2, 200
    for tool in ("storescu", "storescp", "Orthanc"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed; run `make system-deps`")

    senders_options = [1, args.senders]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="plvi-bench-ingest-") as scratch_name:
        scratch = Path(scratch_name)
        paths = write_study(scratch / "study", args.instances, seed=1)
        runs = []
        order = list(RECEIVERS)
        for repetition in range(args.repeat):
            rotated = order[repetition % len(order) :] + order[: repetition % len(order)]
            for name in rotated:
                for senders in senders_options:
                    run = measure(name, paths, senders, repetition, scratch)
                    runs.append(run)
                    print(
                        f"repetition {repetition + 1}/{args.repeat} {name:8} senders={senders}: "
                        f"{run.instances_per_second:7.1f} instances/s {run.megabytes_per_second:6.1f} MB/s "
                        f"{run.cpu_ms_per_instance:5.1f} CPU ms/instance",
                        file=sys.stderr,
                        flush=True,
                    )
        shutil.rmtree(scratch / "study")
        memory_paths = write_study(scratch / "memory-study", args.memory_instances, seed=2)
        footprint = measure_footprint(memory_paths, args.senders, scratch)
    context = (
        f"{args.instances} MR instances of 512x512 ({runs[0].megabytes / args.instances:.2f} MB each), "
        f"{args.repeat} alternating repetitions, medians, fresh receivers, TCP_NODELAY=1; plvi = `plvi serve`; "
        f"{os.cpu_count()} cores, load average {load_before:.1f} at start and {os.getloadavg()[0]:.1f} at end"
    )
    print(report(runs, footprint, context))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
