"""The engineer client, ``gateway connect``: a local port that reaches one processor target.

`options` says what the engineer asked for, `client` holds the local listener and the relay
connection, `session` the session stream (ask, wait, forward inside it, resume, end) and
`verdicts` what a refusal or a failed dial means (stop, try again, carry on).
"""

from gateway.connect.client import MAX_HELD, EngineerClient, LocalConnection, Report
from gateway.connect.options import ConnectOptions
from gateway.connect.session import WAITING_EVERY, Phase, SessionKeeper
from gateway.connect.verdicts import Verdict, dial_is_fatal, refusal_verdict

__all__ = [
    "MAX_HELD",
    "WAITING_EVERY",
    "ConnectOptions",
    "EngineerClient",
    "LocalConnection",
    "Phase",
    "Report",
    "SessionKeeper",
    "Verdict",
    "dial_is_fatal",
    "refusal_verdict",
]
