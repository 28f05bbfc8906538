"""Configuration files people read: TOML with a note beside each key, and a caller's keys merged in.

The demo's ``relay.toml`` and ``gateway.toml`` are how a newcomer learns the format, so every key
carries a comment saying what it is, lined up in one column.  This module writes such files from
sections of keys; which keys and notes go into the product's files is `gateway.demo.stack`'s
business.  Only what our configs use is written: strings, numbers, booleans, paths, addresses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final, TypeAlias

from attrs import Factory, define

from gateway.config import Address

__all__ = ["Section", "Table", "Value", "merged", "render"]

Value: TypeAlias = "str | int | float | bool | Path | Address"
Table: TypeAlias = "Mapping[str, Value | None] | None"
"""One section's keys as a caller gives them; None removes a key (or, for the whole table, the
section) that would be written otherwise."""

NOTE_COLUMN: Final = 32


@define
class Section:
    """One ``[name]`` table (``[[name]]`` if ``array``); ``key_notes`` beat the file's notes."""

    name: str
    keys: dict[str, Value]
    array: bool = False
    note: str = ""
    key_notes: dict[str, str] = Factory(dict)


def merged(body: list[Section], extra: Mapping[str, Table]) -> list[Section]:
    """``body`` with the caller's keys: into the section of that name, else a new section."""
    by_name = {section.name: section for section in body if not section.array}
    for name, table in extra.items():
        section = by_name.get(name)
        if table is None:
            if section is not None:
                body.remove(section)
                del by_name[name]
            continue
        if section is None:
            section = by_name[name] = Section(name, {})
            body.append(section)
        for key, value in table.items():
            if value is None:
                section.keys.pop(key, None)
            else:
                section.keys[key] = value
    return body


def render(
    title: Sequence[str],
    sections: Sequence[Section],
    notes: Mapping[tuple[str, str], str],
    hints: Mapping[str, tuple[str, str]],
    fill: Mapping[str, str],
    base: Path | None,
) -> str:
    """The file: ``title`` as comments, then each section; paths relative to ``base`` if
    given (and inside it), else absolute."""
    if base is not None:
        title = [*title, "Paths are relative to this file's folder."]
    lines = [f"# {line}" for line in title]
    for section in sections:
        lines.append("")
        header = f"[[{section.name}]]" if section.array else f"[{section.name}]"
        lines += _noted(header, section.note or notes.get((section.name, ""), ""))
        for key, value in section.keys.items():
            note = section.key_notes.get(key) or notes.get((section.name, key), "")
            lines += _noted(f"{key} = {_toml_value(value, base)}", note.format(**fill))
        hint = hints.get(section.name)
        if hint is not None and hint[0] not in section.keys:
            lines.append(hint[1])
    return "\n".join(lines) + "\n"


def _noted(text: str, note: str) -> list[str]:
    """``text`` with ``note`` as a comment in the notes column (continued on lines below)."""
    if not note:
        return [text]
    first, *more = note.splitlines()
    pad = NOTE_COLUMN if len(text) < NOTE_COLUMN else len(text) + 2
    return [f"{text.ljust(pad)}# {first}"] + [f"{' ' * NOTE_COLUMN}# {line}" for line in more]


def _toml_value(value: Value, base: Path | None) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path):
        inside = base is not None and value.is_relative_to(base)
        path = value.relative_to(base) if inside and base is not None else value.absolute()
        return _toml_string(str(path))
    return _toml_string(str(value))


def _toml_string(text: str) -> str:
    """A TOML basic string: backslash, quote and control characters escaped."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'
