"""What every program of ours exports about itself: memory, CPU, descriptors, the Python it runs
on, pending timers.

Metric names are a contract (BRIEF section 3).  One ``CollectorRegistry`` per service tree, never
the global one; labelled children are cached by the callers: ``.labels()`` costs ~2 us per call on
the byte-counting hot path, a cached child's ``.inc`` ~0.6.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, PlatformCollector, ProcessCollector
from twisted.internet.interfaces import IReactorTime


def process_health(registry: CollectorRegistry, prefix: str, clock: IReactorTime | None) -> None:
    """``process_*`` (memory, CPU seconds, file descriptors, start time: what leak and soak tests
    watch), ``python_info`` (the interpreter) and ``PREFIX_reactor_delayed_calls``."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    if clock is not None:
        Gauge(
            f"{prefix}_reactor_delayed_calls",
            "Timers pending in the reactor (grows if something forgets to cancel one)",
            registry=registry,
        ).set_function(lambda: len(clock.getDelayedCalls()))
