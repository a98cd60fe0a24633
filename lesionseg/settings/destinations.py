"""Where results also go by C-STORE (lesionseg/pacs/cstore.py): the format of the setting
``dicom_destinations``.

``LESIONSEG_DICOM_DESTINATIONS`` is a comma-separated list of ``AE@host:port`` entries: the
called AE title of the destination (1-16 printable ASCII characters, not all spaces, no
backslash), its host (an IP address, ``[IPv6]``, or a DNS name) and its TCP port (1-65535),
e.g. ``PACS@10.0.0.5:104,VIEWER@viewer.local:11112``. Unset or blank: no C-STORE destination.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from lesionseg.errors import SettingsError

HOW_TO = (
    "set LESIONSEG_DICOM_DESTINATIONS to comma-separated entries AE@host:port, e.g. "
    "'PACS@10.0.0.5:104,VIEWER@[fd00::9]:11112' (AE: 1-16 printable ASCII characters)"
)
# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
_HOST_NAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")


@dataclasses.dataclass(frozen=True)
class Destination:
    """One C-STORE destination: the called ``ae_title`` (stripped), ``host`` (IP address or DNS
    name, IPv6 without brackets) and TCP ``port``."""

    ae_title: str
    host: str
    port: int

    @property
    def url(self) -> str:
        """Display name, e.g. ``dicom://PACS@10.0.0.5:104`` (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"dicom://{self.ae_title}@{host}:{self.port}"


def _ae_title(entry: str, text: str) -> str:
    ae_title = text.strip()
    if not 1 <= len(ae_title) <= 16 or not ae_title.isascii() or not ae_title.isprintable():
        raise SettingsError(
            f"dicom_destinations: {entry!r}: AE title {text!r} is not 1-16 printable ASCII "
            f"characters: {HOW_TO}"
        )
    if "\\" in ae_title:
        raise SettingsError(f"dicom_destinations: {entry!r}: AE title has a backslash: {HOW_TO}")
    return ae_title


def _host(entry: str, text: str) -> str:
    if text.startswith("[") and text.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(text[1:-1]))
        except ValueError:
            pass
    elif re.fullmatch(r"[0-9.]+", text):  # digits and dots only: must be an IPv4 address
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            pass
    elif _HOST_NAME.match(text):
        return text
    raise SettingsError(
        f"dicom_destinations: {entry!r}: {text!r} is not an IP address, [IPv6] or host name: "
        f"{HOW_TO}"
    )


def _port(entry: str, text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise SettingsError(
            f"dicom_destinations: {entry!r}: port {text!r} is not a number 1-65535: {HOW_TO}"
        )
    return int(text)


def parse_destinations(text: str | None) -> tuple[Destination, ...]:
    """The destinations of the setting's value, in its order (empty when unset or blank).

    Raises :class:`SettingsError` naming the bad entry and how to write it: an entry without
    ``@`` or ``:port``, a bad AE title, host or port, an empty entry, or the same entry twice.
    """
    if text is None or not text.strip():
        return ()
    destinations: list[Destination] = []
    for raw in text.split(","):
        entry = raw.strip()
        ae_title, at, address = entry.rpartition("@")
        host, colon, port = address.rpartition(":")
        if not at or not colon:
            raise SettingsError(f"dicom_destinations: bad entry {entry!r}: {HOW_TO}")
        destination = Destination(
            _ae_title(entry, ae_title), _host(entry, host.strip()), _port(entry, port.strip())
        )
        if destination in destinations:
            raise SettingsError(f"dicom_destinations: {entry!r} is named twice: {HOW_TO}")
        destinations.append(destination)
    return tuple(destinations)
