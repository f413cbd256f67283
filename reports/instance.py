"""What every new object of an analysis shares: its UIDs, the algorithm that made it and the analysis time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time


@dataclass(frozen=True)
class NewInstance:
    """Identity and provenance of one new SR, SEG or key image (UIDs derived by reports/objects.py)."""

    series_instance_uid: str
    sop_instance_uid: str
    algorithm_name: str
    algorithm_version: str
    manufacturer: str
    content_datetime: datetime

    def dates(self) -> dict[str, date | time]:
        """Content and series date/time keywords for highdicom: the analysis time, so a retry is byte-identical."""
        day, moment = self.content_datetime.date(), self.content_datetime.time()
        return dict(content_date=day, content_time=moment, series_date=day, series_time=moment)
