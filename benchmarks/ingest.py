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
import importlib.util
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

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from tests.conftest import free_port
from tests.peers.dcmtk import dcmtk_environment, run_storescp, storescu
from tests.peers.processes import stop_process, wait_for_port
from tests.peers.orthanc import run_orthanc

# `plvi serve` exists once the service lands; until then the listener alone, started the way the service starts it.
LISTENER_ONLY = """
import threading, signal
from plvi.db import make_engine, upgrade_database
from plvi.logs import configure_logging
from plvi.settings import load_settings
from listener.scp import start_listener
configure_logging()
settings = load_settings()
upgrade_database(settings.effective_database_url)
listener = start_listener(settings, make_engine(settings.effective_database_url))
stopping = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stopping.set())
while not stopping.wait(0.5):
    pass
listener.shutdown()
"""


# ---------------------------------------------------------------------------------------------------- the study


def write_study(out_dir: Path, instances: int, *, size: int = 512, seed: int = 0) -> list[Path]:
    """One axial MR series of `instances` slices of `size`x`size` 12-bit noise, as Explicit VR Little Endian files.

    Noise rather than a constant image so that nothing on the way can shortcut the pixel data.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MRImageStorage
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "BENCH-INGEST"
    ds.PatientName = "Bench^Ingest"
    ds.StudyDate = "20260101"
    ds.Modality = "MR"
    ds.SeriesNumber = 1
    ds.SeriesDescription = "t2_tse_tra"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 4.0
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    paths = []
    for number in range(1, instances + 1):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [-180.0, -180.0, 4.0 * number]
        ds.PixelData = rng.integers(0, 4096, size * size, dtype=np.uint16).tobytes()
        path = out_dir / f"{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


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


def plvi_command() -> tuple[list[str], str]:
    """`plvi serve` when the service exists, else the listener alone; the second item names which one runs."""
    if importlib.util.find_spec("plvi.service") is not None:
        return [str(Path(sys.executable).parent / "plvi"), "serve"], "plvi serve"
    return [sys.executable, "-c", LISTENER_ONLY], "listener.scp only (plvi.service not landed)"


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
    command, _ = plvi_command()
    with (work_dir / "plvi.log").open("wb") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work_dir, start_new_session=True
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


def split(paths: list[Path], senders: int) -> list[list[Path]]:
    """Contiguous shares, as a PACS forwarding series in parallel would send them."""
    share = -(-len(paths) // senders)
    return [paths[start : start + share] for start in range(0, len(paths), share)]


def send(receiver: Receiver, batches: list[list[Path]]) -> float:
    """Seconds from launching the storescu processes (one per batch, concurrently) until the last one exits."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(batches)) as pool:
        results = list(
            pool.map(lambda batch: storescu(receiver.port, batch, called_ae=receiver.called_ae, timeout=900), batches)
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


def memory_kib(pid: int, field_name: str) -> int:
    """A field of /proc/<pid>/status in KiB (VmRSS now, VmHWM the peak); 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class MemorySampler:
    """Samples the summed RSS of a process tree every 50 ms in a thread; keeps the peak and each process's VmHWM."""

    root: int
    peak_total_kib: int = 0
    peak_process_kib: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            pids = process_tree(self.root)
            self.peak_total_kib = max(self.peak_total_kib, sum(memory_kib(pid, "VmRSS") for pid in pids))
            self.peak_process_kib = max([self.peak_process_kib, *(memory_kib(pid, "VmHWM") for pid in pids)])
            if self._stop.wait(0.05):
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Run:
    receiver: str
    senders: int
    seconds: float
    instances: int
    megabytes: float

    @property
    def instances_per_second(self) -> float:
        return self.instances / self.seconds

    @property
    def megabytes_per_second(self) -> float:
        return self.megabytes / self.seconds


def measure(name: str, paths: list[Path], senders: int, scratch: Path) -> Run:
    """One run against a fresh receiver; fails loudly if any instance is missing afterwards."""
    work_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=scratch))
    try:
        with RECEIVERS[name](work_dir) as receiver:
            seconds = send(receiver, split(paths, senders))
            stored = receiver.stored()
        if stored != len(paths):
            raise RuntimeError(f"{name} stored {stored} of {len(paths)} instances; see {work_dir}")
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    megabytes = sum(path.stat().st_size for path in paths) / 1e6
    return Run(name, senders, seconds, len(paths), megabytes)


def measure_memory(paths: list[Path], senders: int, scratch: Path) -> tuple[int, int, int]:
    """Idle and peak summed RSS of the service's process tree and the largest single process's peak, in KiB."""
    work_dir = Path(tempfile.mkdtemp(prefix="plvi-memory-", dir=scratch))
    try:
        with run_plvi(work_dir) as receiver:
            idle = sum(memory_kib(pid, "VmRSS") for pid in process_tree(receiver.pid))
            with MemorySampler(receiver.pid) as sampler:
                send(receiver, split(paths, senders))
            if receiver.stored() != len(paths):
                raise RuntimeError(f"plvi stored {receiver.stored()} of {len(paths)} instances; see {work_dir}")
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return idle, sampler.peak_total_kib, sampler.peak_process_kib


# ---------------------------------------------------------------------------------------------------- reporting


def median(runs: list[Run], receiver: str, senders: int, metric: str) -> float:
    return statistics.median(getattr(run, metric) for run in runs if run.receiver == receiver and run.senders == senders)


def report(
    runs: list[Run], senders_options: list[int], memory: tuple[int, int, int], memory_load: str, context: str
) -> str:
    names = {"plvi": "plvi (a)", "storescp": "dcmtk storescp (b)", "orthanc": "Orthanc (c)"}
    lines = [
        f"### Ingest over loopback ({context})",
        "",
        "| receiver | senders | instances/s (median) | MB/s (median) | runs | instances/s min–max |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for senders in senders_options:
        for name, label in names.items():
            rates = [run.instances_per_second for run in runs if run.receiver == name and run.senders == senders]
            lines.append(
                f"| {label} | {senders} | {median(runs, name, senders, 'instances_per_second'):.1f} "
                f"| {median(runs, name, senders, 'megabytes_per_second'):.1f} | {len(rates)} "
                f"| {min(rates):.1f}–{max(rates):.1f} |"
            )
    lines += ["", "| senders | plvi / storescp | plvi / Orthanc |", "|---:|---:|---:|"]
    for senders in senders_options:
        ours = median(runs, "plvi", senders, "instances_per_second")
        lines.append(
            f"| {senders} | {ours / median(runs, 'storescp', senders, 'instances_per_second'):.2f} "
            f"| {ours / median(runs, 'orthanc', senders, 'instances_per_second'):.2f} |"
        )
    idle, peak_total, peak_process = memory
    lines += [
        "",
        f"plvi memory: idle {idle / 1024:.0f} MiB for the whole process tree; peak {peak_total / 1024:.0f} MiB "
        f"(tree, sampled every 50 ms) and {peak_process / 1024:.0f} MiB (largest single process, VmHWM) "
        f"while receiving {memory_load}.",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="alternating repetitions per receiver (default 5)")
    parser.add_argument("--instances", type=int, default=300, help="instances in the study (default 300)")
    parser.add_argument("--senders", type=int, default=8, help="parallel storescu processes (default 8)")
    parser.add_argument("--memory-instances", type=int, default=1000, help="instances for peak RSS (default 1000)")
    parser.add_argument("--quick", action="store_true", help="60 instances, 2 repetitions, 200 for memory")
    args = parser.parse_args(argv)
    if args.quick:
        args.instances, args.repeat, args.memory_instances = 60, 2, 200
    for tool in ("storescu", "storescp", "Orthanc"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed; run `make system-deps`")

    senders_options = [1, args.senders]
    with tempfile.TemporaryDirectory(prefix="plvi-bench-ingest-") as scratch_name:
        scratch = Path(scratch_name)
        paths = write_study(scratch / "study", args.instances)
        runs = []
        order = list(RECEIVERS)
        for repetition in range(args.repeat):
            rotated = order[repetition % len(order) :] + order[: repetition % len(order)]
            for name in rotated:
                for senders in senders_options:
                    run = measure(name, paths, senders, scratch)
                    runs.append(run)
                    print(
                        f"repetition {repetition + 1}/{args.repeat} {name:8} senders={senders}: "
                        f"{run.instances_per_second:7.1f} instances/s {run.megabytes_per_second:6.1f} MB/s",
                        file=sys.stderr,
                        flush=True,
                    )
        shutil.rmtree(scratch / "study")
        memory_paths = write_study(scratch / "memory-study", args.memory_instances, seed=1)
        memory = measure_memory(memory_paths, args.senders, scratch)
    _, variant = plvi_command()
    context = (
        f"{args.instances} MR instances of 512x512 ({runs[0].megabytes / args.instances:.2f} MB each), "
        f"{args.repeat} alternating repetitions, fresh receivers, TCP_NODELAY=1, {os.cpu_count()} cores; "
        f"plvi = {variant}"
    )
    memory_load = f"{args.memory_instances} instances from {args.senders} senders"
    print(report(runs, senders_options, memory, memory_load, context))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
