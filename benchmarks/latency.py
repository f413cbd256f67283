"""End-to-end latency: from the last instance of a study received by `plvi serve` to its SR stored in the PACS
(Orthanc), minus the settle time the study must stay quiet before it counts as complete.

Phantom studies are sent one at a time with dcmtk's storescu; the next is sent once the previous one's SR is in
Orthanc, so each figure is one study's path through an idle service. The service runs with its default settings
except the settle time (short, and subtracted) and PLVI_PACS. Where the time goes comes from the database's own
timestamps (outbox rows, the analysis' timings). Figures are printed, never asserted.

    python -m benchmarks.latency --studies 20
    python -m benchmarks.latency --studies 5 --tracker-interval 0.2     # the same with a faster scheduler
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pydicom
from sqlalchemy import func
from sqlmodel import Session, select

from plvi.db import make_engine
from plvi.models import Analysis, Instance, OutboxMessage
from plvi.settings import Settings
from reports.objects import build_result_objects
from tests.peers.dcmtk import storescu
from tests.peers.orthanc import Orthanc, run_orthanc
from tests.serve_process import Serve, running_serve, wait_for
from workers.phantom import PhantomOptions, generate_study
from workers.pipeline import ALGORITHM_VERSION, analyze_paths
from workers.study_files import read_dataset

SR_STORAGE_PREFIX = "1.2.840.10008.5.1.4.1.1.88."  # every SR storage SOP class (PS3.4 B.5)
FIRST_SEED = 5000


@dataclass(frozen=True)
class StudyTimes:
    """Seconds after the last instance was received (wall clock, one machine), for one study."""

    instances: int
    status: str
    queued: float  # analysis outbox row written (settle time + tracker delay)
    published: float  # handed to the broker
    objects_queued: float  # worker done: analysis stored, SR/SEG/key image queued for the PACS
    analysis: float  # the pipeline's own total (part of the worker's share)
    sr_sent: float  # Orthanc answered the SR's C-STORE with success
    sr_seen: float  # the SR visible through Orthanc's REST API


def phantom_folders(count: int, scratch: Path) -> list[Path]:
    """Ordinary phantom studies (the default protocol, localizer included), distinct seeds."""
    folders = []
    for seed in range(FIRST_SEED, FIRST_SEED + count):
        folder = scratch / f"phantom-{seed}"
        generate_study(seed, folder, PhantomOptions())
        folders.append(folder)
    return folders


def sr_in_orthanc(orthanc: Orthanc, study_uid: str) -> bool:
    found = orthanc.post("/tools/lookup", study_uid.encode())
    studies = [item["ID"] for item in found if item["Type"] == "Study"]
    return bool(studies) and any(
        series["MainDicomTags"].get("Modality") == "SR"
        for series in orthanc.get(f"/studies/{studies[0]}/series")
    )


def seconds(moment: datetime) -> float:
    """A database timestamp (UTC; naive from SQLite) as a POSIX time."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def study_times(database_url: str, study_uid: str, seen_at: float) -> StudyTimes | None:
    """The study's timestamps, or None while the sender has not yet recorded the SR as sent (Orthanc stores the
    object before it answers, and we commit after the answer)."""
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            count, last = session.exec(
                select(func.count(), func.max(Instance.received_at)).where(
                    Instance.study_instance_uid == study_uid
                )
            ).one()
            rows = session.exec(
                select(OutboxMessage).where(OutboxMessage.key.startswith(f"analyze_study:{study_uid}:"))
            ).all()
            stores = [
                row
                for row in session.exec(select(OutboxMessage).where(OutboxMessage.kind == "store")).all()
                if row.payload["study_instance_uid"] == study_uid
            ]
            analysis = session.exec(select(Analysis).where(Analysis.study_instance_uid == study_uid)).one()
    finally:
        engine.dispose()
    [queued] = rows
    [sr] = [row for row in stores if row.payload["sop_class_uid"].startswith(SR_STORAGE_PREFIX)]
    if sr.published_at is None:
        return None
    start = seconds(last)
    return StudyTimes(
        instances=count,
        status=analysis.status,
        queued=seconds(queued.created_at) - start,
        published=seconds(queued.published_at) - start,
        objects_queued=min(seconds(row.created_at) for row in stores) - start,
        analysis=analysis.result["timings_ms"]["total"] / 1000,
        sr_sent=seconds(sr.published_at) - start,
        sr_seen=seen_at - start,
    )


def send_and_time(serve: Serve, orthanc: Orthanc, database_url: str, folder: Path) -> StudyTimes:
    """Send one study and wait until its SR is in Orthanc (polled every 20 ms) and recorded as sent."""
    study_uid = str(pydicom.dcmread(next(folder.rglob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)
    sent = storescu(serve.port, [folder])
    if sent.returncode != 0:
        raise RuntimeError(f"storescu failed: {sent.stderr}; see {serve.output_path}")
    wait_for(lambda: sr_in_orthanc(orthanc, study_uid), timeout=120, poll=0.02, what=f"the SR of {study_uid}")
    seen_at = time.time()
    return wait_for(
        lambda: study_times(database_url, study_uid, seen_at), timeout=30, what="the SR recorded as sent"
    )


def object_building_seconds(folder: Path) -> tuple[float, float]:
    """(first, later): building the SR, SEG and key image for one study, timed here (the worker does not time it).

    The first build in a process also pays for loading highdicom's machinery; a worker pays that once."""
    analysis = analyze_paths(sorted(folder.rglob("*.dcm")), 0.79)
    source = read_dataset(analysis.source_path or analysis.study_image_path)
    durations = []
    for _ in range(4):
        started = time.perf_counter()
        build_result_objects(analysis.result, analysis.masks, source, algorithm_version=ALGORITHM_VERSION,
                             instance_set_hash="0" * 64, analysed_at=datetime.now(UTC))  # fmt: skip
        durations.append(time.perf_counter() - started)
    return durations[0], statistics.median(durations[1:])


def report(
    times: list[StudyTimes], settle: float, interval: float, building: tuple[float, float], context: str
) -> str:
    def row(label: str, values: list[float]) -> str:
        ordered = sorted(values)
        p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
        return (
            f"| {label} | {statistics.median(values):.2f} | {p90:.2f} | {min(values):.2f}–{max(values):.2f} |"
        )

    latency = [t.sr_seen - settle for t in times]
    lines = [
        f"### End-to-end latency, last instance received to SR stored in Orthanc, minus the settle time ({context})",
        "",
        "| seconds | median | p90 | min–max |",
        "|---|---:|---:|---:|",
        row("**latency (SR visible in Orthanc) − settle**", latency),
        row("latency (SR C-STORE answered) − settle", [t.sr_sent - settle for t in times]),
        "",
        "Where the time goes (each step's share of the latency):",
        "",
        "| step | median | p90 | min–max |",
        "|---|---:|---:|---:|",
        row(f"tracker notices the quiet study (settle {settle:g} s subtracted; pass every {interval:g} s)",
            [t.queued - settle for t in times]),
        row("outbox row published to the queue", [t.published - t.queued for t in times]),
        row("worker picks the task up, reads the study, builds and stores the objects (beside the analysis)",
            [t.objects_queued - t.published - t.analysis for t in times]),
        row("analysis (pipeline's own total)", [t.analysis for t in times]),
        row(f"sender's next pass (every {interval:g} s) and the SR's C-STORE", [t.sr_sent - t.objects_queued for t in times]),
        row("SR visible over REST after the sender recorded it sent (below 0: Orthanc shows it first)", [t.sr_seen - t.sr_sent for t in times]),
        "",
        (f"Building SR, SEG and key image for one study, timed apart (inside the worker's share): {building[1]:.2f} s, "
         f"{building[0]:.2f} s the first time in a process."),
        f"Statuses: {', '.join(f'{s} {sum(t.status == s for t in times)}' for s in sorted({t.status for t in times}))}.",
        f"Instances per study: {min(t.instances for t in times)}–{max(t.instances for t in times)}.",
    ]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--studies", type=int, default=20, help="phantom studies, sent one after the other")
    parser.add_argument(
        "--settle", type=float, default=1.0, help="PLVI_SETTLE_SECONDS (subtracted from the figures)"
    )
    defaults = Settings(_env_file=None)
    parser.add_argument("--tracker-interval", type=float, default=defaults.tracker_interval_seconds,
                        help="PLVI_TRACKER_INTERVAL_SECONDS (default: the service's)")  # fmt: skip
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="plvi-latency-") as scratch_name:
        scratch = Path(scratch_name)
        folders = phantom_folders(args.studies, scratch / "phantoms")
        building = object_building_seconds(folders[0])
        database_url = f"sqlite:///{scratch / 'plvi.db'}"
        times = []
        with (
            run_orthanc(scratch / "orthanc") as orthanc,
            running_serve(
                scratch,
                database_url,
                pacs=f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
                settle_seconds=args.settle,
                tracker_interval_seconds=args.tracker_interval,
                serve_workers=defaults.serve_workers,
            ) as serve,  # fmt: skip
        ):
            for number, folder in enumerate(folders, start=1):
                times.append(send_and_time(serve, orthanc, database_url, folder))
                print(f"study {number}/{len(folders)}: {times[-1].sr_seen - args.settle:.2f} s ({times[-1].status})",
                      file=sys.stderr, flush=True)  # fmt: skip
    context = (
        f"{len(times)} phantom studies, one at a time, plvi serve with embedded SQLite and queue, "
        f"{defaults.serve_workers} worker process(es); {os.cpu_count()} cores, load average {load_before:.1f} at "
        f"start and {os.getloadavg()[0]:.1f} at end"
    )
    print(report(times, args.settle, args.tracker_interval, building, context))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
