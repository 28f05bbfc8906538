"""Connectivity checks: "why can't support reach us?", one answer per step, each with a remedy.

One module per group of checks (`network`, `dns`, `proxy`, `tcp`, `tls`, `clock`,
`certificate`, `tunnel`, `targets`), a relay `probe` that the path checks share, the `runner`
that runs them all at once within a bound, and the daemon's schedule (`daemon`).  `gateway
check` and the daemon run the same code; see README.md, "Connectivity checks".
"""

from gateway.checks.env import CheckEnv, TunnelState, thread_resolve
from gateway.checks.result import CheckResult
from gateway.checks.runner import RUN_TIMEOUT, all_ok, run_checks

__all__ = [
    "RUN_TIMEOUT",
    "CheckEnv",
    "CheckResult",
    "TunnelState",
    "all_ok",
    "run_checks",
    "thread_resolve",
]
