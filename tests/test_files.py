"""Only regular files are read: special files, links and folders where files belong end in the
report with their reason, and never hang the scan."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import demo_config, write_ct_series

from ct25d.dicom.files import list_files


def hazards(folder: Path) -> dict[str, str]:
    """Entries that must not be read, by name, with the reason the scan must give."""
    os.mkfifo(folder / "fifo.dcm")
    os.symlink("loop.dcm", folder / "loop.dcm")
    os.symlink("nowhere.dcm", folder / "dangling.dcm")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "notes.txt").write_text("scanned on the old PACS")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "s.dcm"))
    return {
        "fifo.dcm": "not a regular file (a FIFO)",
        "loop.dcm": "symlink loop",
        "dangling.dcm": "dangling symlink (target 'nowhere.dcm' does not exist)",
        ".DS_Store": "hidden file",
        "notes.txt": "not a DICOM file name (.txt)",
        "s.dcm": "not a regular file (a socket)",
    }


def test_flat_folder_reports_every_entry_it_does_not_read(tmp_path: Path) -> None:
    root = tmp_path / "stage_2_train"
    good = write_ct_series(root, n=3)
    expected = hazards(root)
    (root / "x.dcm").mkdir()
    expected["x.dcm"] = "a folder where a file was expected"
    found, skipped = list_files(root, "rsna")
    assert found == sorted(map(str, good))
    reasons = {Path(p).name: r for p, r in skipped}
    assert set(reasons) == set(expected)
    for name, reason in expected.items():
        assert reasons[name].startswith(reason), (name, reasons[name])


def test_tree_walks_into_folders_but_not_through_folder_links(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    good = write_ct_series(root / "P1" / "study" / "x.dcm", n=2)  # a folder named like a file
    hazards(root / "P1" / "study")
    os.symlink("..", root / "P1" / "study" / "up")  # a folder link that loops
    found, skipped = list_files(root, "dicom_tree")
    assert found == sorted(map(str, good))
    assert (str(root / "P1" / "study" / "up"), "symlink to a folder: not followed") in skipped


def test_scan_of_an_archive_with_special_files_finishes_and_reports_them(tmp_path: Path) -> None:
    """The whole scan, in a subprocess with a time limit: a FIFO opened for reading would block."""
    root = tmp_path / "archive"
    write_ct_series(root / "P1" / "s1" / "series", n=4)
    expected = hazards(root / "P1" / "s1" / "series")
    (tmp_path / "labels.csv").write_text("study,any\nP1/s1,0\n")
    dataset = {"layout": "dicom_tree", "role": "train", "label_key": "folder",
               "folder_pattern": "^(?P<study>[^/]+/[^/]+)/"}  # fmt: skip
    cmd = [str(Path(sys.executable).parent / "ct25d"), "scan", "--root", str(root), "--dataset",
           json.dumps(dataset), "--labels", str(tmp_path / "labels.csv"), "--shards", "1",
           "--settings", json.dumps(demo_config()["ingest"]), "--out", str(tmp_path / "scan")]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    rejected = pd.read_csv(tmp_path / "scan" / "rejected_files.csv")
    assert sorted(Path(p).name for p in rejected["path"]) == sorted(expected)
    assert len(pd.read_parquet(tmp_path / "scan" / "files.parquet")) == 4


def test_a_file_that_cannot_be_opened_is_a_rejection_not_a_crash(tmp_path: Path) -> None:
    """A file gone between listing and reading (root can read any mode, so a vanished one stands
    in for an unreadable one) is a SeriesError the scan reports."""
    from ct25d.dicom.headers import file_headers
    from ct25d.errors import SeriesError

    (tmp_path / "gone.dcm").symlink_to(tmp_path / "missing.dcm")
    with pytest.raises(SeriesError, match="unreadable DICOM header"):
        file_headers(tmp_path / "gone.dcm", "salt")
