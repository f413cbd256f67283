"""The DICOM listener: C-ECHO and C-STORE over pynetdicom, writing each instance durably before it answers.

The C-STORE handler is the hot path and does the least that is safe: check the header, write the bytes exactly as
received (never decoded, never transcoded), record the rows, answer. Everything else happens in workers.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import weakref
from dataclasses import dataclass, field, replace
from typing import Any

from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    MRImageStorage,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.engine import Engine

from listener.access import (
    DIAGNOSTIC_NO_REASON_GIVEN,
    REJECTED_PERMANENT,
    SOURCE_SERVICE_USER,
    AccessPolicy,
    Rejection,
)
from listener.file_meta import file_meta_bytes
from listener.received import (
    CANNOT_PARSE,
    OUT_OF_RESOURCES,
    SUCCESS,
    BadInstance,
    read_header,
    record_for,
)
from listener.records import RecordWriter
from listener.spool import Spool
from plvi.logs import kv
from plvi.settings import Settings

log = logging.getLogger(__name__)

STORAGE_SOP_CLASSES = (MRImageStorage, EnhancedMRImageStorage, CTImageStorage, EnhancedCTImageStorage)
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]


@dataclass(frozen=True)
class Peer:
    """Who is sending, for the log and the quarantine notes."""

    calling_ae: str
    address: str
    port: int

    @classmethod
    def of(cls, event: Event) -> Peer:
        return cls(event.assoc.requestor.ae_title.strip(), *_requestor_address(event))


@dataclass
class Traffic:
    """What one association brought, for the INFO line logged when it ends. Per-instance lines are DEBUG: at
    hundreds of instances per second a line each costs CPU and buries everything else in the log."""

    peer: Peer
    started: float = field(default_factory=time.monotonic)
    instances: int = 0
    bytes: int = 0
    refused: int = 0
    failed: int = 0


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server with two changes on accepted sockets:

    - TCP_NODELAY: without it each C-STORE response waits for the peer's delayed ACK (~40 ms on Linux), which caps a
      sender near 22 instances/s (DESIGN.md);
    - the TLS handshake runs in the connection's own thread, so a slow or hostile TLS peer cannot stall accept().
    """

    daemon_threads = True

    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = self.socket.accept()  # type: ignore[union-attr]
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(self.ae.acse_timeout)
                request.do_handshake()
                request.settimeout(None)
            except (OSError, ssl.SSLError) as error:
                log.warning(kv("tls_handshake_failed", peer=client_address[0], error=error))
                self.shutdown_request(request)
                return
        super().finish_request(request, client_address)


class Listener:
    """A running listener. `shutdown()` stops accepting, ends associations and commits what is queued."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.spool = Spool(settings.data_dir, free_space_reserve_mb=settings.free_space_reserve_mb)
        self.writer = RecordWriter(engine)
        self.policy = AccessPolicy.from_settings(settings)
        self.ae = AE(ae_title=settings.ae_title)
        self.ae.maximum_associations = settings.max_associations
        # Large PDUs mean fewer Python round trips per instance; bounded, because peers send up to this size.
        self.ae.maximum_pdu_size = 1024 * 1024
        self.ae.add_supported_context(Verification)
        for sop_class in STORAGE_SOP_CLASSES:
            self.ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        self._server: _Server | None = None
        # Keyed by pynetdicom's Association: one that dies without release or abort leaves no entry behind.
        self._traffic: weakref.WeakKeyDictionary[Any, Traffic] = weakref.WeakKeyDictionary()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> None:
        removed = self.spool.prepare()
        if removed:
            log.info(kv("spool_leftovers_removed", count=removed))
        self.writer.start()
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_ended),
            (evt.EVT_ABORTED, self._on_ended),
        ]
        # AE.start_server(block=False) with our server class (it offers no way to pass one).
        try:
            self._server = self.ae.make_server(
                (self.settings.host, self.settings.port),
                evt_handlers=handlers,
                ssl_context=_ssl_context(self.settings),
                server_class=_Server,
            )
        except OSError as error:
            self.writer.stop()
            raise RuntimeError(
                f"cannot listen for DICOM on {self.settings.host}:{self.settings.port}: {error}. Is another listener "
                "running there? Stop it or choose another PLVI_PORT"
            ) from error
        self.ae._servers.append(self._server)
        if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
            # pynetdicom's standard PDU/DIMSE log handlers run under a lock shared by all associations and copy each
            # received data set just to log "Present"; with their output filtered away they are pure cost.
            for event_type in (evt.EVT_PDU_RECV, evt.EVT_PDU_SENT, evt.EVT_DIMSE_RECV, evt.EVT_DIMSE_SENT):
                for handler, _args in list(self._server.get_handlers(event_type)):  # type: ignore[misc]
                    self._server.unbind(event_type, handler)
        threading.Thread(target=self._server.serve_forever, name="plvi-dicom-accept", daemon=True).start()
        log.info(
            kv(
                "listener_started",
                ae_title=self.settings.ae_title,
                host=self.settings.host,
                port=self.port,
                tls=self._server.ssl_context is not None,
                max_associations=self.settings.max_associations,
                spool=self.spool.root,
            )
        )
        log.info(kv("listener_accepts", peers=self.policy.describe()))

    def shutdown(self) -> None:
        self.ae.shutdown()
        self.writer.stop()
        log.info(kv("listener_stopped", port=self.settings.port))

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.shutdown()

    # Event handlers. pynetdicom runs them in the association's thread.

    def _on_requested(self, event: Event) -> None:
        try:
            peer = Peer(event.assoc.requestor.primitive.calling_ae_title.strip(), *_requestor_address(event))
            rejection = self.policy.check(peer.calling_ae, peer.address)
        except Exception as error:  # pynetdicom would log and accept: fail closed instead
            peer = Peer("?", "?", 0)
            rejection = Rejection(
                REJECTED_PERMANENT, SOURCE_SERVICE_USER, DIAGNOSTIC_NO_REASON_GIVEN, f"cannot check: {_first_line(error)}"
            )
        if rejection is None:
            return
        log.warning(kv("association_rejected", calling_ae=peer.calling_ae, peer=peer.address, reason=rejection.reason))
        event.assoc.acse.send_reject(rejection.result, rejection.source, rejection.diagnostic)
        event.assoc.kill()

    def _on_accepted(self, event: Event) -> None:
        peer = Peer.of(event)
        refused = sorted({str(context.abstract_syntax.name) for context in event.assoc.rejected_contexts})
        self._traffic[event.assoc] = Traffic(peer)
        log.info(kv("association_accepted", calling_ae=peer.calling_ae, peer=peer.address))
        if refused:
            # Not negotiated, so never received: a PACS autorouting everything cannot fill our disk. A warning when
            # nothing the peer proposed was acceptable: then it is surely misconfigured.
            log.log(
                logging.INFO if event.assoc.accepted_contexts else logging.WARNING,
                kv(
                    "sop_classes_not_accepted",
                    calling_ae=peer.calling_ae,
                    peer=peer.address,
                    sop_classes=";".join(refused),
                    accepted=";".join(uid.name for uid in STORAGE_SOP_CLASSES),
                ),
            )

    def _on_ended(self, event: Event) -> None:
        traffic = self._traffic.pop(event.assoc, None)
        if traffic is None:
            return
        log.info(
            kv(
                "association_released" if event.event is evt.EVT_RELEASED else "association_aborted",
                calling_ae=traffic.peer.calling_ae,
                peer=traffic.peer.address,
                instances=traffic.instances,
                bytes=traffic.bytes,
                refused=traffic.refused,
                failed=traffic.failed,
                seconds=round(time.monotonic() - traffic.started, 1),
            )
        )

    def _on_echo(self, event: Event) -> int:
        peer = Peer.of(event)
        log.info(kv("echo", calling_ae=peer.calling_ae, peer=peer.address))
        return SUCCESS

    def _on_store(self, event: Event) -> int:
        # A view of pynetdicom's receive buffer: the data set is never copied, decoded or re-encoded.
        with event.request.DataSet.getbuffer() as dataset_bytes:
            status = self._store(event, dataset_bytes)
            size = len(dataset_bytes)
        traffic = self._traffic.get(event.assoc)
        if traffic is not None:
            if status == SUCCESS:
                traffic.instances += 1
                traffic.bytes += size
            elif status == OUT_OF_RESOURCES:
                traffic.failed += 1
            else:
                traffic.refused += 1
        return status

    def _store(self, event: Event, dataset_bytes: memoryview) -> int:
        started = time.perf_counter()
        peer = Peer.of(event)
        transfer_syntax = str(event.context.transfer_syntax)
        try:
            record = record_for(
                read_header(dataset_bytes, transfer_syntax),
                affected_sop_class_uid=str(event.request.AffectedSOPClassUID),
                affected_sop_instance_uid=str(event.request.AffectedSOPInstanceUID),
                calling_ae=peer.calling_ae,
                transfer_syntax=transfer_syntax,
            )
        except BadInstance as bad:
            self._quarantine(bad, peer, event, dataset_bytes)
            return bad.status
        except Exception as error:  # a value pydicom cannot convert, or worse: still the peer's data, not our fault
            bad = BadInstance(CANNOT_PARSE, f"data set cannot be understood: {_first_line(error)}")
            self._quarantine(bad, peer, event, dataset_bytes)
            return bad.status
        try:
            with self.spool.instance_lock(record.sop_instance_uid):
                stored = self.spool.store(
                    record.study_instance_uid,
                    record.series_instance_uid,
                    record.sop_instance_uid,
                    (
                        file_meta_bytes(record.sop_class_uid, record.sop_instance_uid, transfer_syntax),
                        dataset_bytes,
                    ),
                )
                try:
                    self.writer.record(
                        replace(record, path=stored.relative_path, size_bytes=stored.size_bytes, sha256=stored.sha256)
                    )
                except Exception:
                    self.spool.undo(stored)  # keep the spool and the database telling the same story
                    raise
                self.spool.keep(stored)
        except Exception as error:  # PS3.4 B.2.3: A700 out of resources; never success without the file and row
            log.error(
                kv(
                    "instance_not_stored",
                    status="0xA700",
                    sop_instance_uid=record.sop_instance_uid,
                    study_uid=record.study_instance_uid,
                    calling_ae=peer.calling_ae,
                    peer=peer.address,
                    error=_first_line(error),
                )
            )
            return OUT_OF_RESOURCES
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                kv(
                    "instance_stored",
                    study_uid=record.study_instance_uid,
                    series_uid=record.series_instance_uid,
                    sop_instance_uid=record.sop_instance_uid,
                    outcome=stored.outcome,
                    bytes=stored.size_bytes,
                    calling_ae=peer.calling_ae,
                    ms=round((time.perf_counter() - started) * 1000, 1),
                )
            )
        return SUCCESS

    def _quarantine(self, bad: BadInstance, peer: Peer, event: Event, dataset_bytes: memoryview) -> None:
        details = {
            "status": f"0x{bad.status:04X}",
            "calling_ae": peer.calling_ae,
            "peer_address": peer.address,
            "peer_port": peer.port,
            "affected_sop_class_uid": str(event.request.AffectedSOPClassUID),
            "affected_sop_instance_uid": str(event.request.AffectedSOPInstanceUID),
            "transfer_syntax_uid": str(event.context.transfer_syntax),
        }
        try:
            kept = self.spool.quarantine([dataset_bytes], reason=bad.reason, details=details)
        except OSError as error:
            kept = f"not kept: {error}"
        log.warning(
            kv(
                "instance_refused",
                status=details["status"],
                reason=bad.reason,
                calling_ae=peer.calling_ae,
                peer=peer.address,
                sop_instance_uid=details["affected_sop_instance_uid"],
                quarantine=kept,
            )
        )


def _first_line(error: BaseException) -> str:
    """The cause in one line (SQLAlchemy appends the whole statement and its parameters)."""
    cause = getattr(error, "orig", None) or error
    return f"{cause.__class__.__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"


def _requestor_address(event: Event) -> tuple[str, int]:
    info = event.assoc.requestor.address_info
    return str(info.address), int(info.port)


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS when a certificate and key are configured; client certificates required when a CA is given."""
    if settings.tls_cert is None and settings.tls_key is None:
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ValueError("TLS needs both PLVI_TLS_CERT and PLVI_TLS_KEY (PEM files); set both or neither")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=settings.tls_cert, keyfile=settings.tls_key)
    if settings.tls_ca is not None:
        context.load_verify_locations(cafile=settings.tls_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def start_listener(settings: Settings, engine: Engine) -> Listener:
    """Start the listener in background threads and return at once; call `shutdown()` to stop it."""
    listener = Listener(settings, engine)
    listener.start()
    return listener
