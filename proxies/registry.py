"""Proxy registry: name → Proxy class. Adding a proxy is one module plus one line here."""
from __future__ import annotations

from proxies.base import Proxy
from proxies.evolved import EvolvedProxy
from proxies.fisher import FisherProxy
from proxies.hessian import HessianTraceProxy
from proxies.measured import MeasuredProxy
from proxies.orthogonality import OrthogonalityProxy
from proxies.output_error import OutputErrorProxy

PROXIES: dict[str, type[Proxy]] = {
    "hessian_trace": HessianTraceProxy,
    "fisher": FisherProxy,
    "orthogonality": OrthogonalityProxy,
    "output_error": OutputErrorProxy,
    "measured": MeasuredProxy,
    "evolved": EvolvedProxy,
}


def get_proxy(name: str, /, **params) -> Proxy:
    """``evolved:<name>`` is the stored evolved program ``<name>`` (EMQ)."""
    if name.startswith("evolved:"):
        return EvolvedProxy(**{**params, "program": name.split(":", 1)[1]})
    try:
        cls = PROXIES[name]
    except KeyError:
        raise ValueError(f"unknown proxy {name!r}: choose from {', '.join(sorted(PROXIES))}") from None
    return cls(**params)
