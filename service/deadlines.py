"""One chain of time limits, from the ingress to the model, derived from the settings.

    python -m service.deadlines        (prints the chain of the settings in force)

Every link must cover the one inside it, so that the innermost limit, the service's request
deadline (``LESIONSEG_REQUEST_TIMEOUT_S``, a 504 that names the setting), is the one a client
meets:

- BentoML's traffic timeout = deadline + ``traffic_backstop_s`` (service/limits.py);
- the ingress' proxy read and send timeouts = traffic timeout + :data:`INGRESS_MARGIN_S`, and
  its body size the largest request body of service/limits.py, whole MiB;
- on SIGTERM the API answers its requests in flight (each ends by the deadline) and the model
  runner stays up for them: ``drain_timeout_s`` = deadline + 5 s by default (service/drain.py);
- the pod's terminationGracePeriodSeconds = the preStop sleep + the longer of that drain and
  the deadline + :data:`EXIT_MARGIN_S`.

deploy/kubernetes/base carries the values of the default settings; tests/test_deadlines.py
checks that the rendered manifests and the ConfigMap agree with :func:`chain`, and
:func:`findings` tells the doctor where settings in force need more than those manifests give.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from lesionseg.settings import Settings
from service.bind import is_loopback
from service.drain import drain_timeout_s
from service.findings import Finding
from service.limits import max_request_bytes, traffic_timeout_s

TOPIC = "time limits"
# The preStop sleep: the endpoints drop the pod (and the ingress stops sending to it) before
# SIGTERM reaches the service.
PRESTOP_S = 5
# After the runner's drain: the processes stop and BentoML's arbiter exits.
EXIT_MARGIN_S = 10
# The ingress gives up after BentoML's backstop, never before.
INGRESS_MARGIN_S = 10
# The probes (the same in every pod): /livez and /readyz answer from the event loop at once,
# and the image's HEALTHCHECK also waits 5 s; the startup probe allows 300 s to load the models.
# Kubernetes does not run liveness or startup probes of a terminating pod, so a drain as long
# as the deadline is never cut by them.
PROBES = {
    "startupProbe": {"periodSeconds": 5, "failureThreshold": 60},
    "readinessProbe": {"periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
    "livenessProbe": {"periodSeconds": 20, "timeoutSeconds": 5, "failureThreshold": 3},
}
MIB = 2**20
NGINX = "nginx.ingress.kubernetes.io/"


@dataclass(frozen=True)
class Chain:
    """The limits of one set of settings, innermost first (seconds, bytes)."""

    request_timeout_s: float
    traffic_timeout_s: float
    drain_timeout_s: float
    prestop_s: int
    grace_s: int
    ingress_timeout_s: int
    body_bytes: int

    def annotations(self) -> dict[str, str]:
        """The ingress-nginx annotations of the Ingress (deploy/kubernetes/base/ingress.yaml)."""
        return {
            f"{NGINX}proxy-read-timeout": str(self.ingress_timeout_s),
            f"{NGINX}proxy-send-timeout": str(self.ingress_timeout_s),
            f"{NGINX}proxy-body-size": nginx_size(self.body_bytes),
        }

    def rows(self) -> list[tuple[str, str, str]]:
        """(link, value, derived from) for a table of the chain."""
        return [
            ("request deadline", f"{self.request_timeout_s:g} s", "LESIONSEG_REQUEST_TIMEOUT_S"),
            (
                "BentoML traffic timeout",
                f"{self.traffic_timeout_s:g} s",
                "deadline + LESIONSEG_TRAFFIC_BACKSTOP_S",
            ),
            (
                "ingress proxy-read/send-timeout",
                f"{self.ingress_timeout_s} s",
                f"traffic timeout + {INGRESS_MARGIN_S} s, whole seconds",
            ),
            (
                "model runner drain on SIGTERM",
                f"{self.drain_timeout_s:g} s",
                "LESIONSEG_DRAIN_TIMEOUT_S, else deadline + 5 s",
            ),
            (
                "pod terminationGracePeriodSeconds",
                f"{self.grace_s} s",
                f"preStop {self.prestop_s} s + max(drain, deadline) + {EXIT_MARGIN_S} s",
            ),
            (
                "ingress proxy-body-size",
                nginx_size(self.body_bytes),
                "LESIONSEG_MAX_UPLOAD_BYTES + 1 MiB of form, whole MiB",
            ),
        ]


def chain(settings: Settings) -> Chain:
    """The chain of time limits (and the body size) that ``settings`` need."""
    drain = drain_timeout_s(settings)
    return Chain(
        request_timeout_s=settings.request_timeout_s,
        traffic_timeout_s=traffic_timeout_s(settings),
        drain_timeout_s=drain,
        prestop_s=PRESTOP_S,
        # the API's own drain lasts up to the deadline, the runner's up to its drain timeout
        grace_s=PRESTOP_S + math.ceil(max(drain, settings.request_timeout_s)) + EXIT_MARGIN_S,
        ingress_timeout_s=math.ceil(traffic_timeout_s(settings)) + INGRESS_MARGIN_S,
        body_bytes=max_request_bytes(settings),
    )


def shipped_chain() -> Chain:
    """The chain of the default settings (the environment unread): what deploy/kubernetes
    carries."""
    return chain(Settings.model_construct())


def nginx_size(size: int) -> str:
    """``size`` bytes as nginx writes a size, in whole MiB rounded up: 269484032 -> "257m"."""
    return f"{math.ceil(size / MIB)}m"


def parse_nginx_size(text: str) -> int:
    """Bytes of an nginx size ("257m", "1g", "512k", "1024"; units are powers of 1024)."""
    found = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)\s*", text)
    if found is None:
        raise ValueError(f"not an nginx size: {text!r} (a number, optionally k, m or g)")
    number, unit = found.groups()
    return int(number) * 1024 ** " kmg".index(unit.lower() or " ")


def _local(host: str | None) -> bool:
    """Whether the service binds loopback only (None: the bind is not known, so not local)."""
    return host is not None and is_loopback(host)


def findings(settings: Settings, host: str | None) -> list[Finding]:
    """Each link of the chain with its value: "unsafe" where a link is shorter than the one it
    must cover, "warn" where the settings need more than deploy/kubernetes gives (the shipped
    manifests carry the default settings' chain). ``host``: the address the service binds
    (None: unknown, as in a container); on loopback there is no ingress or pod to match."""
    need, shipped = chain(settings), shipped_chain()
    deadline = f"the request deadline of {need.request_timeout_s:g} s"
    found = [
        Finding(
            "ok",
            TOPIC,
            f"request deadline {need.request_timeout_s:g} s (LESIONSEG_REQUEST_TIMEOUT_S)",
        )
    ]
    if need.traffic_timeout_s > need.request_timeout_s:
        found.append(
            Finding(
                "ok",
                TOPIC,
                f"BentoML traffic timeout {need.traffic_timeout_s:g} s covers {deadline}",
            )
        )
    else:
        found.append(
            Finding(
                "unsafe",
                TOPIC,
                f"BentoML traffic timeout {need.traffic_timeout_s:g} s is not above {deadline}: "
                "BentoML cuts requests first, without naming a setting; raise "
                "LESIONSEG_TRAFFIC_BACKSTOP_S",
            )
        )
    if need.drain_timeout_s >= need.request_timeout_s:
        found.append(
            Finding("ok", TOPIC, f"SIGTERM drain {need.drain_timeout_s:g} s covers {deadline}")
        )
    else:
        found.append(
            Finding(
                "unsafe",
                TOPIC,
                f"LESIONSEG_DRAIN_TIMEOUT_S={need.drain_timeout_s:g} is below {deadline}: a "
                "request in flight at SIGTERM may get 503 instead of its answer; unset it "
                f"(deadline + 5 s) or raise it to at least {need.request_timeout_s:g}",
            )
        )
    if _local(host):
        found.append(Finding("ok", TOPIC, f"bound to {host}: no ingress or pod grace to match"))
        return found
    pod = f"terminationGracePeriodSeconds >= {need.grace_s}"
    ingress = (
        f"proxy-read/send-timeout >= {need.ingress_timeout_s} s and proxy-body-size >= "
        f"{nginx_size(need.body_bytes)}"
    )
    if need.grace_s <= shipped.grace_s:
        found.append(
            Finding("ok", TOPIC, f"the pod needs {pod} (deploy/kubernetes: {shipped.grace_s})")
        )
    else:
        found.append(
            Finding(
                "warn",
                TOPIC,
                f"these settings need {pod}, more than deploy/kubernetes gives "
                f"({shipped.grace_s}): raise it, or SIGTERM cuts requests in flight",
            )
        )
    if (
        need.ingress_timeout_s <= shipped.ingress_timeout_s
        and need.body_bytes <= shipped.body_bytes
    ):
        found.append(
            Finding("ok", TOPIC, f"the ingress needs {ingress} (deploy/kubernetes gives them)")
        )
    else:
        found.append(
            Finding(
                "warn",
                TOPIC,
                f"these settings need {ingress}, more than deploy/kubernetes/base/ingress.yaml "
                f"gives ({shipped.ingress_timeout_s} s, {nginx_size(shipped.body_bytes)}): "
                "raise its annotations, or the ingress cuts or refuses requests first",
            )
        )
    return found


def main() -> None:
    rows = chain(Settings()).rows()
    width = max(len(link) for link, _, _ in rows)
    for link, value, source in rows:
        print(f"{link:<{width}}  {value:>8}  {source}")


if __name__ == "__main__":
    main()
