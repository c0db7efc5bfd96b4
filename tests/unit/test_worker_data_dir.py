"""A worker's temporary data directory (``SEGMENTER_DATA_DIR`` empty): RocksDB state lives there,
so those of workers killed by SIGKILL (which cannot remove their own) are removed by the next
worker to start; those of running workers (their lock held) and anything else are left."""

from __future__ import annotations

import fcntl
import os
import tempfile

import pytest

from stream.worker.app import _DATA_DIR_LOCK, _temporary_data_dir


def test_a_starting_worker_removes_the_directories_of_dead_workers_only(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    killed = tmp_path / "segmenter-worker-killed"
    (killed / "v1" / "tables").mkdir(parents=True)
    (killed / _DATA_DIR_LOCK).touch()  # its worker is gone: nobody holds the lock
    running = tmp_path / "segmenter-worker-running"
    running.mkdir()
    held = open(running / _DATA_DIR_LOCK, "w")  # noqa: SIM115 - a running worker's lock
    fcntl.flock(held, fcntl.LOCK_EX)
    unknown = tmp_path / "segmenter-worker-nolock"  # not a worker's directory we can judge
    unknown.mkdir()
    try:
        mine = _temporary_data_dir()
        assert not killed.exists()
        assert running.exists() and unknown.exists()
        assert os.path.isdir(mine) and os.path.exists(os.path.join(mine, _DATA_DIR_LOCK))
        assert os.listdir(mine) == [_DATA_DIR_LOCK]  # taken under another name, renamed held
        with open(os.path.join(mine, _DATA_DIR_LOCK)) as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: the file it was locked as
        # And a worker starting after this one leaves this one's directory alone.
        second = _temporary_data_dir()
        assert os.path.isdir(mine) and second != mine
    finally:
        held.close()
