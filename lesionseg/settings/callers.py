"""Who may send to the DICOM listener (lesionseg/pacs/listener.py): the allow-list of calling AE
titles and hosts, the format of the setting ``dicom_allowed_callers``.

``LESIONSEG_DICOM_ALLOWED_CALLERS`` is a comma-separated list; each entry is ``AE`` (that
calling AE title from any host), ``AE@host`` (that AE title from that IP address only) or
``*@host`` (any AE title from that IP address). Unset: closed, as the HTTP side without API keys
(issue 23): any AE title, but from a loopback peer only.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from lesionseg.errors import SettingsError

HOW_TO = (
    "set LESIONSEG_DICOM_ALLOWED_CALLERS to comma-separated entries AE, AE@host or *@host, "
    "e.g. 'ORTHANC@10.0.0.7,CT1' (host: an IP address)"
)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(host.strip("[]"))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:10.0.0.7 is 10.0.0.7
    return address


@dataclasses.dataclass(frozen=True)
class Caller:
    """One allow-list entry: ``ae_title`` None = any AE title; ``host`` None = any host."""

    ae_title: str | None
    host: ipaddress.IPv4Address | ipaddress.IPv6Address | None


@dataclasses.dataclass(frozen=True)
class AllowedCallers:
    """The parsed allow-list; ``entries`` None = closed default (loopback peers only)."""

    entries: tuple[Caller, ...] | None

    @classmethod
    def parse(cls, text: str | None) -> AllowedCallers:
        """Parse the setting's value; raise :class:`SettingsError` saying how to write it."""
        if text is None or not text.strip():
            return cls(None)
        entries = []
        for raw in text.split(","):
            entry = raw.strip()
            ae_title, _, host = entry.partition("@")
            ae_title = ae_title.strip()
            if not ae_title or len(ae_title) > 16 or not ae_title.isprintable() or "\\" in ae_title:
                raise SettingsError(f"dicom_allowed_callers: bad entry {entry!r}: {HOW_TO}")
            try:
                address = _address(host.strip()) if host else None
            except ValueError:
                raise SettingsError(
                    f"dicom_allowed_callers: {host!r} is not an IP address: {HOW_TO}"
                ) from None
            if ae_title == "*" and address is None:
                raise SettingsError(f"dicom_allowed_callers: '*' needs @host: {HOW_TO}")
            entries.append(Caller(None if ae_title == "*" else ae_title, address))
        return cls(tuple(entries))

    def allows(self, ae_title: str, host: str) -> bool:
        """Whether the peer at IP address ``host`` calling as ``ae_title`` may associate."""
        try:
            address = _address(host)
        except ValueError:
            return False
        if self.entries is None:
            return address.is_loopback
        ae_title = ae_title.strip()
        return any(
            (c.ae_title is None or c.ae_title == ae_title) and (c.host is None or c.host == address)
            for c in self.entries
        )

    def describe(self) -> str:
        """For the start-up log: who is let in."""
        if self.entries is None:
            return "loopback peers only (LESIONSEG_DICOM_ALLOWED_CALLERS unset)"
        return ", ".join(f"{c.ae_title or '*'}@{c.host or 'any host'}" for c in self.entries)
