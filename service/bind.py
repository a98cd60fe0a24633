"""Where this process serves: the interface a ``bentoml serve`` binds, and which hosts are local.

``bentoml serve`` imports ``service.app`` twice over: first in the process that binds the
listening socket (BentoML's arbiter, inside its ``serve`` command, *before* it binds), then in
each worker, which is handed that socket as ``--fd`` (``_bentoml_impl/server/serving.py``,
``_bentoml_impl/worker/service.py``). Both run inside a click command, whose parameters say
where: the arbiter's ``host`` (``--host``, ``BENTOML_HOST``, else BentoML's configured default,
0.0.0.0), a worker's socket (``getsockname`` of its ``fd``). Anywhere else (tests importing the
service, ``bentoml build``) there is no such command: nothing is served, and :func:`serving_host`
says None.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass

import click


@dataclass(frozen=True)
class Serving:
    """``host``: the interface (an IP address, or ``unix:<path>`` for a Unix socket);
    ``binding``: True in the process that is about to bind it (nothing listens yet, so it may
    still refuse), False in a worker, which serves a socket bound already."""

    host: str
    binding: bool


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (an address or ``unix:<path>``; None: a client of a Unix socket, as ASGI
    servers say) can only be reached from this machine. Names other than ``localhost`` are not
    resolved: they count as not loopback."""
    if host is None or host.startswith("unix:") or host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # fe80::1%eth0 -> fe80::1
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or address).is_loopback


def socket_host(fd: int) -> str:
    """The local address of the listening socket ``fd`` (a duplicate is inspected and closed;
    ``fd`` itself stays open for its server)."""
    with socket.socket(fileno=os.dup(fd)) as sock:
        name = sock.getsockname()
    return f"unix:{name}" if isinstance(name, str | bytes) else name[0]


def serving_host() -> Serving | None:
    """Where the ``bentoml serve`` this process belongs to serves (module docstring); None
    outside one."""
    context = click.get_current_context(silent=True)
    if context is None:
        return None
    params = context.params
    if params.get("fd") is not None:  # a BentoML worker, handed its listening socket
        return Serving(socket_host(params["fd"]), binding=False)
    if "host" in params:  # `bentoml serve`, in the process that will bind
        host = params["host"]
        if not host:  # `bentoml serve` without --host or BENTOML_HOST: BentoML's configured one
            from bentoml._internal.container import BentoMLContainer

            host = BentoMLContainer.http.host.get()
        return Serving(str(host), binding=True)
    return None
