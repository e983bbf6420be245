"""Class names and class folders: one reversible folder form shared by ``train``, ``validate`` and ``predict``.

A class's folder is its name with the characters that cannot be part of a folder name on Linux, macOS or
Windows written as ``%XX`` (the hex of their UTF-8 bytes, as in URLs): ``T-shirt/top`` lives in
``T-shirt%2Ftop``. ``%`` itself and a trailing dot or space (which Windows drops) are escaped too. Two
classes whose names differ only in case (``Bag``, ``bag``) would share one folder on a case-insensitive
file system, so their upper-case letters are escaped as well (``%42ag``, ``bag``). A folder's class is
always its name with the escapes decoded, so a folder that needs no escape is simply the class name, and
checkpoints keep the real names.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import unquote

# characters no folder name may hold on one of Linux, macOS and Windows, and '%' which starts an escape
_RESERVED = frozenset('/\\:*?"<>|%')
_SHOWN = 12  # class folders listed in an error message


class ClassFolderError(ValueError):
    """Class folders that do not match the class list they are scored or trained against."""


def _escape(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))


def _must_escape(char: str) -> bool:
    return char in _RESERVED or ord(char) < 32 or ord(char) == 127


def _escaped(name: str, escape_upper: bool) -> str:
    chars = [_escape(c) if _must_escape(c) or (escape_upper and c != c.lower()) else c for c in name]
    if chars and chars[-1] in (".", " "):
        chars[-1] = _escape(chars[-1])
    return "".join(chars)


def folder_name(name: str, classes: Iterable[str] = ()) -> str:
    """The folder of class ``name`` (see the module doc); ``classes``: all class names of the set, so that
    names differing from ``name`` only in case get distinct folders."""
    if not name:
        raise ValueError("a class name cannot be empty")
    folded = name.casefold()
    collides = any(other != name and other.casefold() == folded for other in classes)
    return _escaped(name, escape_upper=collides)


def class_name(folder: str) -> str:
    """The class a folder holds: its name with ``%XX`` escapes decoded."""
    return unquote(folder)


def class_folders(root: Path) -> list[str]:
    """The names of the sub-folders of ``root``."""
    return [d.name for d in root.iterdir() if d.is_dir()]


def classes_from_folders(folders: Iterable[str], where: str) -> list[str]:
    """The class names of a tree's folders, ordered as numbers when all are numbers (ImageNet-V2), else by name.
    Two folders that name the same class (``a%2Fb`` and ``a%2fb``) are an error."""
    names: dict[str, str] = {}
    for folder in sorted(folders):
        name = class_name(folder)
        if name in names:
            raise ClassFolderError(f"{where}: folders {names[name]!r} and {folder!r} both hold class {name!r}")
        names[name] = folder
    numeric = bool(names) and all(n.isdigit() for n in names)
    return sorted(names, key=int if numeric else None)


def _loose(text: str) -> str:
    """Letters and digits only, lower case: how a folder typed by hand is compared with a class name."""
    return re.sub(r"[\W_]+", "", text.casefold())


def _unknown_folders_message(unknown: list[str], classes: Sequence[str], where: str) -> str:
    loose = {}
    for name in classes:
        loose.setdefault(_loose(name), name)
    shown = []
    for folder in unknown:
        near = loose.get(_loose(class_name(folder)))
        hint = f" (class {near!r} lives in folder {folder_name(near, classes)!r})" if near is not None else ""
        shown.append(f"{folder!r}{hint}")
    expected = ", ".join(repr(folder_name(c, classes)) for c in list(classes)[:_SHOWN])
    if len(classes) > _SHOWN:
        expected += f", ... ({len(classes)} in all)"
    return (
        f"{where}: {len(unknown)} class folder(s) match none of the {len(classes)} classes: {', '.join(shown)}; "
        f"the class folders are {expected}. Rename them, or pass --skip-unknown-classes to leave them out"
    )


def match_class_folders(
    folders: Iterable[str], classes: Sequence[str], where: str, skip_unknown: bool = False
) -> dict[str, int]:
    """Each folder's index in ``classes``, matched by class name (never by position), so that a missing,
    extra or misnamed folder cannot shift how the others are scored.

    A folder that matches no class raises :class:`ClassFolderError` naming it and the expected folders, or,
    with ``skip_unknown``, is left out of the result (the caller reports it).
    """
    index = {name: i for i, name in enumerate(classes)}
    matched: dict[str, int] = {}
    owner: dict[int, str] = {}
    unknown = []
    for folder in sorted(folders):
        i = index.get(class_name(folder))
        if i is None:
            unknown.append(folder)
        elif i in owner:
            raise ClassFolderError(f"{where}: folders {owner[i]!r} and {folder!r} both hold class {classes[i]!r}")
        else:
            matched[folder], owner[i] = i, folder
    if unknown and not skip_unknown:
        raise ClassFolderError(_unknown_folders_message(unknown, classes, where))
    return matched
