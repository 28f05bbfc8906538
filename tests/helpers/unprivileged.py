"""Run a check as an ordinary user, also when the tests run as root (as CI does).

Root may write any directory, so a test of "this user cannot write here" proves nothing as root.
`as_plain_user` hands the paths to ``nobody`` and runs the check in a forked child that has
dropped to that user; the child's assertion failures come back to the test as its own.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

__all__ = ["NOBODY", "as_plain_user"]

NOBODY = 65534
"""The uid and gid of ``nobody`` on Debian."""


def as_plain_user(check: Callable[[], None], *, own: tuple[Path, ...] = ()) -> None:
    """Run ``check`` as this user if it is not root; as root, give ``own`` (and the folders
    leading to them from the temporary directory) to ``nobody`` and run ``check`` as ``nobody``
    in a child process.  An exception in the child is raised here."""
    if os.geteuid() != 0:
        check()
        return
    for path in own:
        os.chown(path, NOBODY, NOBODY)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, run, report, and leave without cleanup handlers
        os.close(read)
        outcome: BaseException | None = None
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            check()
        except BaseException as e:
            outcome = e
        try:
            payload = pickle.dumps(outcome)
        except Exception:
            payload = pickle.dumps(AssertionError(repr(outcome)))
        os.write(write, payload)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        payload = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not payload:
        raise AssertionError(f"the check as nobody ended without an answer (status {status})")
    outcome = pickle.loads(payload)
    if outcome is not None:
        raise outcome
