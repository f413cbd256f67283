"""Who may send us studies: an allow-list of calling AE titles and one of peer IP networks.

Either list may match, because a PACS often sends from a different AE title than the one it queries with, while its
address stays put. Both lists empty means every peer is accepted (the startup log says so).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from plvi.settings import Settings

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A-ASSOCIATE-RJ fields, PS3.8 9.3.4: result 1 = rejected-permanent, source 1 = DICOM UL service-user.
REJECTED_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01
DIAGNOSTIC_NO_REASON_GIVEN = 0x01
DIAGNOSTIC_CALLING_AE_NOT_RECOGNIZED = 0x03


@dataclass(frozen=True)
class Rejection:
    """Why an association request is refused, as the A-ASSOCIATE-RJ PDU carries it, plus words for the log."""

    result: int
    source: int
    diagnostic: int
    reason: str


@dataclass(frozen=True)
class AccessPolicy:
    calling_aes: frozenset[str]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        return cls(
            calling_aes=frozenset(ae.strip() for ae in settings.allowed_calling_aes),
            networks=tuple(ipaddress.ip_network(network, strict=False) for network in settings.allowed_networks),
        )

    @property
    def accepts_all(self) -> bool:
        return not self.calling_aes and not self.networks

    def describe(self) -> str:
        if self.accepts_all:
            return "any calling AE title from any address (PLVI_ALLOWED_CALLING_AES and PLVI_ALLOWED_NETWORKS empty)"
        return (
            f"calling AE titles {sorted(self.calling_aes) or '-'} or addresses in "
            f"{[str(network) for network in self.networks] or '-'}"
        )

    def check(self, calling_ae: str, peer_address: str) -> Rejection | None:
        """None when the peer may associate, else the rejection to send."""
        if self.accepts_all or calling_ae.strip() in self.calling_aes or self._address_allowed(peer_address):
            return None
        if self.calling_aes:
            # The AE title is what an administrator most often has to add: say so in the PDU (PS3.8 Table 9-21).
            return Rejection(
                REJECTED_PERMANENT,
                SOURCE_SERVICE_USER,
                DIAGNOSTIC_CALLING_AE_NOT_RECOGNIZED,
                f"calling AE title {calling_ae.strip()!r} is not in PLVI_ALLOWED_CALLING_AES and {peer_address} "
                "is not in PLVI_ALLOWED_NETWORKS",
            )
        # PS3.8 has no diagnostic for an address; "no reason given" is the honest one.
        return Rejection(
            REJECTED_PERMANENT,
            SOURCE_SERVICE_USER,
            DIAGNOSTIC_NO_REASON_GIVEN,
            f"peer address {peer_address} is not in PLVI_ALLOWED_NETWORKS",
        )

    def _address_allowed(self, peer_address: str) -> bool:
        try:
            address = ipaddress.ip_address(peer_address)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d
        return any(address in network for network in self.networks)
