"""The gateway's state directory: what it must remember across restarts, kept where only it writes.

``[service] state_dir`` (``/var/lib/gateway`` in packaged installs) holds the plant's last access
mode (``access-mode.json``), the audit trail and the control socket.  Whoever can write this
directory can switch remote access on, or replace the control socket, so a directory writable by
its group or by others is refused at startup with the ``chmod`` to run; a missing one is created
0700.  Nothing is half written: the mode file is replaced atomically (``gateway._files``).
"""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

from gateway._files import FileWriteError, write_private
from gateway.config import AccessMode, ConfigError

MODE_FILE = "access-mode.json"


class StateDirError(ConfigError):
    """The state directory cannot be used; one line naming it, what is wrong and what to do."""


class StateWriteError(Exception):
    """Something could not be saved in the state directory (the message says what and why)."""


class StateDirectory:
    """An existing, private, writable state directory (see `open`)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def open(cls, path: Path, config_file: Path | str) -> StateDirectory:
        """Create ``path`` (0700) if missing, then check it; `StateDirError` if unusable.

        ``config_file`` is named in the error, like any other configuration problem.
        """
        key = "service.state_dir"
        if not path.exists():
            try:
                path.mkdir(mode=0o700, parents=True)
                os.chmod(path, 0o700)  # whatever the umask left
            except OSError as e:
                raise StateDirError(
                    config_file, key, f"cannot create {str(path)!r}: {e.strerror or e}"
                ) from None
        try:
            info = path.stat()
        except OSError as e:
            raise StateDirError(config_file, key, f"{str(path)!r}: {e.strerror or e}") from None
        if not stat.S_ISDIR(info.st_mode):
            raise StateDirError(config_file, key, f"{str(path)!r} is not a directory")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise StateDirError(
                config_file,
                key,
                f"{str(path)!r} is writable by other users, who could switch remote access on "
                f"(run: chmod go-w {path})",
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise StateDirError(
                config_file,
                key,
                f"{str(path)!r} is not writable by this user (uid {os.geteuid()}); "
                "give the gateway's user the directory",
            )
        return cls(path)

    @property
    def mode_file(self) -> Path:
        return self.path / MODE_FILE

    def read_mode(self) -> AccessMode | None:
        """The mode the plant last chose, or None if it never chose one here.

        A mode file that cannot be read is refused rather than ignored: falling back to the
        configuration's mode could open what the plant had closed.
        """
        file = self.mode_file
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise StateDirError(file, "", f"cannot read the saved access mode: {e}") from None
        try:
            data = json.loads(text)
            return AccessMode(data["mode"])
        except (ValueError, KeyError, TypeError):
            raise StateDirError(
                file,
                "",
                "is not an access mode saved by the gateway; remove it to start from "
                "gateway.toml's [access] mode, or write "
                '{"mode": "attended"} (or "unattended", "disabled") into it',
            ) from None

    def forget_mode(self) -> None:
        """Back to the configuration's mode at the next start (undoes a first `write_mode`)."""
        try:
            self.mode_file.unlink(missing_ok=True)
        except OSError as e:
            raise StateWriteError(f"{self.mode_file}: cannot remove: {e.strerror or e}") from None

    def write_mode(self, mode: AccessMode, *, by: str, at: float) -> None:
        """Remember ``mode`` (atomically: a crash leaves the old file or the new one)."""
        record = {
            "mode": mode.value,
            "by": by,
            "changed": datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds"),
        }
        try:
            write_private(self.mode_file, json.dumps(record, indent=1) + "\n")
        except FileWriteError as e:
            raise StateWriteError(str(e)) from None
