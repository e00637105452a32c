"""Re-capture the real ``pg_restore --verbose`` logs the report parser is tested on.

    cd /work/main && PYTHONPATH=plugins .venv/bin/python tests/plugins/pgrepl/data/capture_restore_logs.py [scale]

Starts a throwaway cluster, loads the Pix-like sample at ``scale``, dumps it with ``pg_dump -Fd --jobs 2``,
restores it once with ``--jobs 2`` (interleaved items: ``launching item`` / ``finished item``) and once
without ``--jobs`` (sequential: no item lines, only ``creating ...`` / ``processing data ...``), each through
``python -m pgrepl.tslog`` exactly as the restore step does, and writes the logs beside this script.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[3] / "plugins"), str(HERE.parents[3])]

from devenv.cluster import Cluster  # noqa: E402
from devenv.sample_data import load_sample  # noqa: E402
from pgrepl.pgtools import client_env, tool, write_passfile  # noqa: E402


def main(scale: float) -> None:
    with Cluster("capture") as cluster, tempfile.TemporaryDirectory() as work:
        source = cluster.create_database("source", "source_owner", "capture-pw-1")
        target = cluster.create_database("warehouse", "warehouse_owner", "capture-pw-2")
        print("sample sizes:", load_sample(source, scale))
        env = client_env(write_passfile(os.path.join(work, "pgpass"), [source, target]))
        env["PYTHONPATH"] = str(HERE.parents[3] / "plugins")
        dump = os.path.join(work, "dump")
        restore = f"{tool('pg_restore')} --verbose --no-owner -d '{target.safe_url()}'"
        runs = [
            (None, f"{tool('pg_dump')} -Fd --jobs 2 --no-owner --no-privileges -f {dump} '{source.safe_url()}'"),
            ("pg_restore_verbose_jobs2.log", f"{restore} --jobs 2 {dump}"),
            ("pg_restore_verbose_sequential.log", f"{restore} --clean --if-exists {dump}"),
        ]
        for name, command in runs:
            log = HERE / name if name else Path(work) / "pg_dump.log"
            log.unlink(missing_ok=True)
            subprocess.run(f"set -o pipefail; {command} 2>&1 | {sys.executable} -m pgrepl.tslog {log} >/dev/null",
                           shell=True, check=True, env=env, executable="/bin/bash")
            print("wrote", log)


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 0.05)
