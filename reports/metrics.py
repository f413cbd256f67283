"""Prometheus metrics read from the database at scrape time.

The listener, the workers and the senders are separate processes (often on separate hosts), so counters kept in
one process's memory would show only that process. The database holds every instance, analysis and outbox row,
so one query per scrape gives the service-wide figures, and they survive restarts."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import case, func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from plvi.models import Analysis, Hl7Message, Instance, OutboxMessage
from reports.sender import STORE

# Seconds; one analysis should take about one second on one core (issue 3), so the buckets straddle that.
ANALYSIS_SECONDS_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class DatabaseCollector:
    """Collects the service's figures with a handful of aggregate queries."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        with Session(self.engine) as session:
            yield CounterMetricFamily(
                "plvi_instances_received", "DICOM instances stored (a replaced duplicate counts once)",
                value=session.exec(select(func.count()).select_from(Instance)).one(),
            )
            yield from self._analyses(session)
            yield self._analysis_seconds(session)
            yield from self._queue(session)
            yield from self._hl7(session)

    def _analyses(self, session: Session) -> Iterator[Metric]:
        total = CounterMetricFamily("plvi_studies_analysed", "analyses stored, by status", labels=["status"])
        current = GaugeMetricFamily("plvi_current_results", "current (not superseded) results, by status",
                                    labels=["status"])
        totals: dict[str, int] = {}
        for status, superseded, count in session.exec(
            select(Analysis.status, Analysis.superseded, func.count()).group_by(Analysis.status, Analysis.superseded)
        ).all():
            totals[status] = totals.get(status, 0) + count
            if not superseded:
                current.add_metric([status], count)
        for status, count in sorted(totals.items()):
            total.add_metric([status], count)
        flagged = session.exec(
            select(func.count()).where(Analysis.superseded.is_(False), Analysis.low_psoas_mass.is_(True))  # type: ignore[union-attr, attr-defined]
        ).one()
        yield total
        yield current
        yield GaugeMetricFamily("plvi_low_psoas_mass_current", "current results flagged low psoas mass", value=flagged)

    def _analysis_seconds(self, session: Session) -> Metric:
        """Histogram of result.timings_ms.total, the analysis time the worker records."""
        seconds = Analysis.result["timings_ms"]["total"].as_float() / 1000.0
        columns = [func.sum(case((seconds <= bound, 1), else_=0)) for bound in ANALYSIS_SECONDS_BUCKETS]
        row = session.exec(
            select(func.count(seconds), func.coalesce(func.sum(seconds), 0.0), *columns)  # type: ignore[call-overload]
        ).one()
        count, total, cumulative = int(row[0] or 0), float(row[1] or 0.0), [int(v or 0) for v in row[2:]]
        buckets = [(str(bound), value) for bound, value in zip(ANALYSIS_SECONDS_BUCKETS, cumulative)]
        return HistogramMetricFamily(
            "plvi_analysis_seconds", "time to analyse one study", buckets=[*buckets, ("+Inf", count)], sum_value=total
        )

    def _queue(self, session: Session) -> Iterator[Metric]:
        depth = GaugeMetricFamily("plvi_queue_depth", "hand-offs waiting (outbox pending or published)",
                                  labels=["kind"])
        failed = GaugeMetricFamily("plvi_outbox_failed", "hand-offs given up after their retries", labels=["kind"])
        for kind, state, count in session.exec(
            select(OutboxMessage.kind, OutboxMessage.state, func.count()).group_by(OutboxMessage.kind,
                                                                                     OutboxMessage.state)
        ).all():
            if state in ("pending", "published"):
                depth.add_metric([kind], count)
            elif state == "failed":
                failed.add_metric([kind], count)
        yield depth
        yield failed

    def _hl7(self, session: Session) -> Iterator[Metric]:
        messages = GaugeMetricFamily("plvi_hl7_messages", "ORU^R01 messages to the RIS, by state", labels=["state"])
        for state, count in session.exec(
            select(Hl7Message.state, func.count()).group_by(Hl7Message.state)
        ).all():
            messages.add_metric([state], count)
        yield messages
        failures = CounterMetricFamily(
            "plvi_send_failures", "failed send attempts (refused, no answer, or a negative ACK), by channel",
            labels=["channel"],
        )
        failures.add_metric(["hl7"], session.exec(select(func.coalesce(func.sum(Hl7Message.attempts), 0))).one())
        # The DICOM sender counts every attempt, the successful one included (reports/sender.py).
        stores = select(
            func.coalesce(func.sum(OutboxMessage.attempts), 0),
            func.coalesce(func.sum(case((OutboxMessage.state == "done", 1), else_=0)), 0),
        ).where(OutboxMessage.kind == STORE)
        attempts, delivered = session.exec(stores).one()
        failures.add_metric(["dicom"], attempts - delivered)
        yield failures

    def describe(self) -> Iterator[Metric]:
        return iter(())


def metrics_response(engine: Engine) -> tuple[bytes, str]:
    """The text exposition format body and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(engine))
    return generate_latest(registry), CONTENT_TYPE_LATEST
