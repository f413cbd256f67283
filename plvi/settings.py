"""One settings object, read once at start from `PLVI_*` variables (or a settings file) and passed down."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]


def _split_commas(value: object) -> object:
    """Let operators write `PLVI_ALLOWED_CALLING_AES=MODALITY1,PACS` instead of JSON."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of the service. Environment variables use the prefix `PLVI_`; a settings file
    (`PLVI_SETTINGS_FILE`, default `plvi.env`) may hold the same names."""

    model_config = SettingsConfigDict(env_prefix="PLVI_", env_file="plvi.env", extra="ignore")

    data_dir: Path = Path("var")
    database_url: str = ""
    broker_url: str = ""

    # DICOM listener
    ae_title: str = "PLVI"
    host: str = "0.0.0.0"
    port: int = 11112
    allowed_calling_aes: CommaList = Field(default_factory=list)
    allowed_networks: CommaList = Field(default_factory=list)
    max_associations: int = 32
    free_space_reserve_mb: int = 1024
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None

    # Study tracking
    settle_seconds: float = 60.0
    tracker_interval_seconds: float = 0.25

    # Queue
    serve_workers: int = 1
    publish_retry_max_seconds: float = 300.0
    redeliver_after_seconds: float = 3600.0

    # Analysis
    cutoff: float = 0.79

    # Results
    pacs: CommaList = Field(default_factory=list)
    pacs_max_attempts: int = 10
    pacs_retry_base_seconds: float = 10.0
    pacs_retry_max_seconds: float = 900.0
    pacs_timeout_seconds: float = 30.0
    http_port: int = 8080
    http_host: str = "0.0.0.0"
    session_hours: float = 12.0

    # Worklist flag to the RIS (HL7 v2 ORU^R01 over MLLP); empty host: no messages
    hl7_host: str = ""
    hl7_port: int = 2575
    hl7_sending_application: str = "PLVI"
    hl7_sending_facility: str = ""
    hl7_receiving_application: str = "RIS"
    hl7_receiving_facility: str = ""
    hl7_timeout_seconds: float = 10.0
    hl7_max_attempts: int = 20

    # Cohort export
    export_key: SecretStr = SecretStr("")
    export_dir: Path | None = None
    export_cron: str = "30 2 * * *"

    @field_validator("allowed_calling_aes", "allowed_networks", "pacs", mode="before")
    @classmethod
    def _lists_from_commas(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("allowed_networks")
    @classmethod
    def _networks_are_valid(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as error:
                raise ValueError(
                    f"PLVI_ALLOWED_NETWORKS: {network!r} is not an IP network; write e.g. 10.0.0.0/8"
                ) from error
        return value

    @field_validator("export_cron")
    @classmethod
    def _cron_has_five_fields(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(
                f"PLVI_EXPORT_CRON: {value!r} needs five fields, minute hour day-of-month month day-of-week,"
                " e.g. '30 2 * * *' for 02:30 every night"
            )
        return value

    @field_validator("ae_title")
    @classmethod
    def _ae_title_is_valid(cls, value: str) -> str:
        if not 0 < len(value.strip()) <= 16:
            raise ValueError("PLVI_AE_TITLE must be 1 to 16 characters (PS3.5 AE value representation)")
        return value.strip()

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def effective_export_dir(self) -> Path:
        return self.export_dir or self.data_dir / "exports"

    @property
    def effective_database_url(self) -> str:
        """SQLite file under the data folder unless a database URL is configured."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'plvi.db').resolve()}"

    @property
    def effective_broker_url(self) -> str:
        """Redis in production; without it an embedded, durable SQLite queue that real Celery workers consume."""
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.db').resolve()}"

    @property
    def broker_is_embedded(self) -> bool:
        return not self.broker_url


def load_settings(**overrides: object) -> Settings:
    """Read the settings once at start; tests pass overrides instead of touching the environment."""
    return Settings(**overrides)
