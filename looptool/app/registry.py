"""The services LoopTool knows: every :class:`~looptool.kernel.runtime.Service` registered under
the entry point group ``looptool.services`` — LoopTool's six and any a package installs. ``up``
starts them and derives their bus identities from them, ``serve`` and ``dlq`` resolve them here.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from looptool.kernel.errors import LoopToolError
from looptool.kernel.runtime import Service

ENTRY_POINTS = "looptool.services"
# LoopTool's own, in the order `looptool up` starts them: the curator first (it opens rounds),
# the model's users after the trainer.
BUILT_IN = ("curator", "trainer", "evaluator", "probe", "judge", "expander", "synthesizer")


class UnknownService(LoopToolError, LookupError):
    pass


def service_names() -> list[str]:
    """Every registered service's name: LoopTool's own first, then others by name."""
    registered = {ep.name for ep in entry_points(group=ENTRY_POINTS)}
    return [name for name in BUILT_IN if name in registered] + sorted(registered - set(BUILT_IN))


def resolve(spec: str) -> Service:
    """A service by registered name, or by ``module:attribute``."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            service = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UnknownService(f"cannot load service {spec!r}: {exc}") from None
    else:
        found = {ep.name: ep for ep in entry_points(group=ENTRY_POINTS)}
        if spec not in found:
            known = ", ".join(sorted(found)) or "none installed"
            raise UnknownService(f"unknown service {spec!r} (known: {known}; or give module:attribute)")
        service = found[spec].load()
    if not isinstance(service, Service):
        raise UnknownService(f"{spec!r} is a {type(service).__name__}, not a looptool Service")
    return service
