"""Breaking a dump on purpose, the way a real night breaks: a row the warehouse refuses, half-way through the
biggest table's data file (pg_restore has already loaded other tables when it fails)."""

from __future__ import annotations

import glob
import os


def break_biggest_data_file(dump_dir: str) -> str:
    """Write a line that is not a row into the middle of the largest ``*.dat`` of ``dump_dir``; return its path."""
    data_file = max(glob.glob(os.path.join(dump_dir, "[0-9]*.dat")), key=os.path.getsize)
    with open(data_file, "r+b") as f:
        f.seek(os.path.getsize(data_file) // 2)
        f.write(b"\nnot a row\n")
    return data_file
