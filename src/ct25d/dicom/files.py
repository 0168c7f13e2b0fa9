"""List an archive's candidate DICOM files, and say why every other entry was not read.

Only regular files are ever opened: opening a FIFO named `x.dcm` blocks forever, a symlink loop or
a dangling link raises, and following symlinked folders can walk in circles. Each entry that is
not read ends in the scan's rejected-files report with its reason, so nothing vanishes.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from pathlib import Path

import pandas as pd

from ct25d.errors import Ct25dError

log = logging.getLogger(__name__)
LAYOUTS = ("rsna", "cq500", "dicom_tree")
CQ500_FOLDER = re.compile(r"CQ500CT\d+ CQ500CT\d+")
NOT_DICOM_SUFFIXES = {".csv", ".txt", ".json", ".md", ".xml", ".zip", ".parquet", ".png", ".jpg", ".jpeg",
                      ".pdf", ".nii", ".gz", ".yaml", ".yml", ".html"}  # fmt: skip
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device"}  # fmt: skip

Skipped = tuple[str, str]  # (path, reason)


def _why_unreadable(path: str) -> str:
    """Why a path is not a regular file we can read ("" if it is one)."""
    try:
        mode = os.stat(path).st_mode  # follows a symlink to its target
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        if os.path.islink(path):
            return f"dangling symlink (target {os.readlink(path)!r} does not exist)"
        return f"cannot stat ({exc.strerror})"
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISDIR(mode):
        return "a folder where a file was expected"
    return f"not a regular file ({_KINDS.get(stat.S_IFMT(mode), 'a special file')})"


def _classify(path: str, name: str, found: list[str], skipped: list[Skipped]) -> None:
    if name.startswith("."):
        skipped.append((path, "hidden file (name starts with '.')"))
    elif os.path.splitext(name)[1].lower() in NOT_DICOM_SUFFIXES:
        skipped.append((path, f"not a DICOM file name ({os.path.splitext(name)[1]})"))
    elif why := _why_unreadable(path):
        skipped.append((path, why))
    else:
        found.append(path)


def _prune(dirpath: str, dirnames: list[str]) -> list[str]:
    """Take hidden folders and folder links out of an os.walk listing (in place); return the links."""
    links = [os.path.join(dirpath, d) for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
    dirnames[:] = [d for d in dirnames if not d.startswith(".") and os.path.join(dirpath, d) not in links]
    return [link for link in links if not os.path.basename(link).startswith(".")]


def _walk(top: str, found: list[str], skipped: list[Skipped]) -> None:
    """Every entry below `top`; symlinked folders are reported, not followed (they can loop)."""

    def failed(exc: OSError) -> None:
        skipped.append((str(exc.filename), f"cannot list folder ({exc.strerror})"))

    for dirpath, dirnames, names in os.walk(top, onerror=failed):
        skipped += [(link, "symlink to a folder: not followed") for link in _prune(dirpath, dirnames)]
        for name in names:
            _classify(os.path.join(dirpath, name), name, found, skipped)


def list_files(root: Path, layout: str) -> tuple[list[str], list[Skipped]]:
    """(candidate files, skipped entries with reasons) under `root`, sorted so the scan is deterministic.

    rsna: the files of one flat folder (a folder inside it is reported). cq500: every file below the
    `CQ500CT<N> CQ500CT<N>` study folders; other top-level entries (a reads.csv, notes) are not part
    of the archive and are logged. dicom_tree: every file below `root`, in any folder structure.
    """
    if layout not in LAYOUTS:
        raise Ct25dError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if not root.is_dir():
        raise Ct25dError(f"DICOM root {root} does not exist or is not a folder")
    found: list[str] = []
    skipped: list[Skipped] = []
    if layout == "rsna":
        for entry in os.scandir(root):
            _classify(entry.path, entry.name, found, skipped)
    elif layout == "cq500":
        other = []
        for entry in os.scandir(root):
            if entry.is_dir(follow_symlinks=False) and CQ500_FOLDER.fullmatch(entry.name):
                _walk(entry.path, found, skipped)
            elif not entry.name.startswith("."):
                other.append(entry.name)
        if other:
            log.warning("%s: ignoring %d top-level entries that are not CQ500 study folders: %s",
                        root, len(other), sorted(other)[:10])  # fmt: skip
    else:
        _walk(str(root), found, skipped)
    return sorted(found), sorted(skipped)


def study_folders(root: Path, layout: str) -> list[str]:
    """The folders that can hold a study, relative to `root` and ending in "/" (as a folder key
    pattern sees a file's path): cq500's study folders; every folder of a dicom_tree; none in rsna.

    Only a study folder that holds no image needs this: the images' paths name the others.
    """
    if layout == "cq500":
        return sorted(f"{e.name}/" for e in os.scandir(root)
                      if e.is_dir(follow_symlinks=False) and CQ500_FOLDER.fullmatch(e.name))  # fmt: skip
    if layout != "dicom_tree":
        return []
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        _prune(dirpath, dirnames)
        found += [os.path.join(os.path.relpath(dirpath, root), d, "").removeprefix("./") for d in dirnames]
    return sorted(found)


def relative_paths(paths: pd.Series, root: Path) -> pd.Series:
    """Paths below `root` (as `list_files` made them) relative to it, by string: Path objects cost
    more than reading the header."""
    prefix = os.path.join(str(root), "")
    if not paths.str.startswith(prefix).all():
        raise Ct25dError(f"a scanned path is not below the DICOM root {root}")
    return paths.str.slice(len(prefix))
