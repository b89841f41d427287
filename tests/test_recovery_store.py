"""Cleaning Bytewax recovery partitions before a resume (flows.recovery_store)."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest
from bytewax.recovery import init_db_dir

from flows.recovery_store import RecoveryDirError, discard_unfinished, resume_epoch


def _exec(path, sql: str, *rows) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executemany(sql, rows)


def _snaps(path) -> list[tuple]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT step_id, state_key, snap_epoch FROM snaps ORDER BY 1, 2, 3").fetchall()


def _dir(tmp_path, parts: int = 2):
    init_db_dir(tmp_path, parts)
    return sorted(tmp_path.glob("part-*.sqlite3"))


def test_a_fresh_directory_has_nothing_to_discard(tmp_path):
    _dir(tmp_path)
    assert resume_epoch(tmp_path) is None
    assert discard_unfinished(tmp_path) == 0


def test_snapshots_after_the_resume_epoch_go_and_the_committed_ones_stay(tmp_path):
    a, b = _dir(tmp_path)
    # execution 0 started at epoch 1 with two workers; worker 0 got to 7, worker 1 to 5
    _exec(a, "INSERT INTO exs (ex_num, worker_count, resume_epoch) VALUES (?, ?, ?)", (0, 2, 1))
    _exec(a, "INSERT INTO fronts (ex_num, worker_index, worker_frontier) VALUES (?, ?, ?)", (0, 0, 7))
    _exec(b, "INSERT INTO fronts (ex_num, worker_index, worker_frontier) VALUES (?, ?, ?)", (0, 1, 5))
    insert = "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES (?, ?, ?, NULL)"
    _exec(a, insert, ("read", "0", 4), ("read", "0", 5), ("read", "0", 6))
    _exec(b, insert, ("bars", "BTC", 2), ("bars", "BTC", 6))
    assert resume_epoch(tmp_path) == 5
    assert discard_unfinished(tmp_path) == 3
    assert _snaps(a) == [("read", "0", 4)]
    assert _snaps(b) == [("bars", "BTC", 2)]
    assert discard_unfinished(tmp_path) == 0


def test_the_latest_execution_decides_and_a_worker_without_progress_counts_its_start(tmp_path):
    (a,) = _dir(tmp_path, 1)
    rows = [(0, 1, 1), (1, 1, 9)]
    _exec(a, "INSERT INTO exs (ex_num, worker_count, resume_epoch) VALUES (?, ?, ?)", *rows)
    _exec(a, "INSERT INTO fronts (ex_num, worker_index, worker_frontier) VALUES (?, ?, ?)", (0, 0, 30))
    # execution 1 was killed before it wrote any progress: it resumes at its own start
    assert resume_epoch(tmp_path) == 9


def test_an_incomplete_set_of_partitions_is_an_error(tmp_path):
    a, b = _dir(tmp_path)
    b.unlink()
    with pytest.raises(RecoveryDirError, match="not a complete set"):
        discard_unfinished(tmp_path)
