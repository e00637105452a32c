"""Mapped tasks run at the same time under a real scheduler (LocalExecutor, parallelism 4).

``airflow dags test`` runs one task after the other; this test starts api-server + scheduler +
dag-processor (tests/scheduler_harness.py) on a SQLite metadata database, triggers a DAG whose four
mapped tasks each sleep 3 s, and shows from the metadata database and from the tasks' own
timestamps that they overlapped.
"""

from __future__ import annotations

import json
import textwrap
from datetime import datetime, timedelta, timezone

import pytest

from scheduler_harness import AirflowStack, airflow_bin, max_concurrency

pytestmark = pytest.mark.skipif(airflow_bin() is None, reason="the airflow CLI is not installed")

DAG_ID = "harness_parallel"
MAPPED = 4
SLEEP = 3.0

DAG_FILE = textwrap.dedent(
    f'''
    """Four mapped tasks that sleep and record when they ran."""
    from __future__ import annotations

    import json
    import os
    import time
    from pathlib import Path

    import pendulum
    from airflow.sdk import dag, task


    @dag(dag_id="{DAG_ID}", schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), catchup=False,
         max_active_tasks=16, tags=["test"])
    def harness_parallel():
        @task
        def items() -> list[int]:
            return list(range({MAPPED}))

        @task
        def sleepy(n: int) -> int:
            start = time.time()
            time.sleep({SLEEP})
            out = Path(os.environ["HARNESS_OUT"]) / f"{{n}}.json"
            out.write_text(json.dumps({{"n": n, "start": start, "end": time.time(), "pid": os.getpid()}}))
            return n

        sleepy.expand(n=items())


    harness_parallel()
    '''
)


def test_max_concurrency():
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    s = timedelta(seconds=1)
    assert max_concurrency([]) == 0
    assert max_concurrency([(t0, t0 + 3 * s), (t0 + s, t0 + 4 * s), (t0 + 5 * s, t0 + 6 * s)]) == 2
    # touching intervals do not overlap
    assert max_concurrency([(t0, t0 + s), (t0 + s, t0 + 2 * s)]) == 1
    assert max_concurrency([(t0, t0 + 9 * s)] * 3 + [(t0, None)]) == 3


def test_mapped_tasks_overlap_under_the_scheduler(tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "harness_parallel.py").write_text(DAG_FILE)
    out = tmp_path / "out"
    out.mkdir()

    with AirflowStack(tmp_path / "home", dags, parallelism=4, extra_env={"HARNESS_OUT": str(out)}) as stack:
        stack.wait_for_dag(DAG_ID)
        run_id = stack.trigger(DAG_ID)
        state = stack.wait_for_run(DAG_ID, run_id)
        tis = stack.task_instances(DAG_ID, run_id, task_id="sleepy")
        assert state == "success", stack.log_tails()
        pids = stack._own_pids()
    # everything the stack started is gone
    assert pids, "the stack ran no process?"
    assert not stack._own_pids()

    assert sorted(ti.map_index for ti in tis) == list(range(MAPPED))
    assert all(ti.state == "success" for ti in tis), tis
    # the metadata database: at least two mapped instances were running at one instant
    assert max_concurrency([(ti.start, ti.end) for ti in tis]) >= 2, [(ti.start, ti.end) for ti in tis]
    # and the tasks' own clocks agree, from different processes
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert sorted(r["n"] for r in records) == list(range(MAPPED))
    assert all(r["end"] - r["start"] >= SLEEP for r in records)
    assert max_concurrency([(r["start"], r["end"]) for r in records]) >= 2, records
    assert len({r["pid"] for r in records}) >= 2
    # overlap means the whole map took less than running the four one after the other
    span = max(r["end"] for r in records) - min(r["start"] for r in records)
    assert span < MAPPED * SLEEP, span
