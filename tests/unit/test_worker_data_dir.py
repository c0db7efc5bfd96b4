"""A worker's temporary data directory (``SEGMENTER_DATA_DIR`` empty): RocksDB state lives there,
so those of workers killed by SIGKILL (which cannot remove their own) are removed by the next
worker to start, and nobody else's."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from stream.worker.app import _temporary_data_dir


def test_a_starting_worker_removes_the_directories_of_dead_workers_only(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    killed = tmp_path / f"segmenter-worker-{dead_pid}-abc"
    (killed / "v1" / "tables").mkdir(parents=True)
    alive = tmp_path / f"segmenter-worker-{os.getppid()}-def"  # a running process's
    alive.mkdir()
    other = tmp_path / "segmenter-worker-notapid-x"  # not ours to judge
    other.mkdir()
    mine = _temporary_data_dir()
    assert not killed.exists()
    assert alive.exists() and other.exists()
    assert os.path.basename(mine).startswith(f"segmenter-worker-{os.getpid()}-")
    assert os.path.isdir(mine)
