"""The relay's enrollment state: ``STATE_DIR/enrollment/``, one JSON file per kind, locked.

The relay and the ``gateway relay`` commands change these files at the same time (a command
issues a token while the relay uses another), so every change holds ``flock`` on
``enrollment/lock`` around its read-modify-write, and every write is atomic (`gateway._files`).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway._files import write_private

FOLDER = "enrollment"


def folder(state_dir: Path) -> Path:
    return state_dir / FOLDER


@contextmanager
def locked(state_dir: Path) -> Iterator[Path]:
    """The enrollment folder (created 0700), locked against the other writers."""
    where = folder(state_dir)
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    hand_over(where, state_dir)
    fd = os.open(where / "lock", os.O_CREAT | os.O_RDWR | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        hand_over(where / "lock", state_dir)
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield where
    finally:
        os.close(fd)


def hand_over(path: Path, state_dir: Path) -> None:
    """Run as root (an admin's ``gateway relay enroll-token``): leave ``path`` to the owner of
    the state directory, the relay's user, who must go on reading and writing it."""
    if os.geteuid() != 0:
        return
    owner = state_dir.stat()
    info = path.stat()
    if (info.st_uid, info.st_gid) != (owner.st_uid, owner.st_gid):
        os.chown(path, owner.st_uid, owner.st_gid)


class StateFileError(ValueError):
    """An enrollment state file that cannot be read; the message names it."""


def read_json(path: Path, default: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default()
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise StateFileError(f"{path}: cannot read it: {e}") from None
    if not isinstance(data, dict):
        raise StateFileError(f"{path}: not a JSON object")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically, 0600, owned as the folder is (see `hand_over`)."""
    write_private(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    hand_over(path, path.parent.parent)
