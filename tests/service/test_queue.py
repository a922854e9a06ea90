"""The durable queue: one job per version, held copies, orphan recovery, exclusive claims."""

from __future__ import annotations

import os
import subprocess
import sys

from ckpt_sync.service.queue import DONE, PENDING, RUNNING, JobQueue


def test_the_same_version_is_queued_once_and_a_new_version_again(tmp_path):
    q = JobQueue(tmp_path / "state")
    f = tmp_path / "c.pt"
    f.write_bytes(b"one")
    a = q.enqueue(f)
    assert q.enqueue(f) == a
    f.write_bytes(b"two, longer")
    assert q.enqueue(f) != a
    assert q.counts()[PENDING] == 2


def test_held_copy_outlives_the_original_and_is_released_when_done(tmp_path):
    q = JobQueue(tmp_path / "state")
    f = tmp_path / "c.pt"
    f.write_bytes(b"payload")
    q.enqueue(f)
    f.unlink()
    job = q.claim()
    assert job is not None and q.source(job).read_bytes() == b"payload"
    q.complete(job, "mid", 7, 64, 0.1)
    assert not q.source(job).exists() and q.get(job.id).status == DONE


def test_jobs_of_a_dead_owner_return_to_pending(tmp_path):
    f = tmp_path / "c.pt"
    f.write_bytes(b"x")
    state = tmp_path / "state"
    JobQueue(state).enqueue(f)
    claim = "from ckpt_sync.service.queue import JobQueue; import sys; JobQueue(sys.argv[1]).claim()"
    subprocess.run([sys.executable, "-c", claim, str(state)], check=True)  # claims, then dies
    q = JobQueue(state)
    assert q.counts()[RUNNING] == 1
    assert q.recover_orphans() == 1
    assert q.counts()[PENDING] == 1 and q.claim() is not None


CLAIMER = """
import sys
from ckpt_sync.service.queue import JobQueue
q = JobQueue(sys.argv[1])
got = []
while (job := q.claim()) is not None:
    got.append(job.id)
print(" ".join(map(str, got)))
"""


def test_concurrent_claimers_never_share_a_job(tmp_path):
    state = tmp_path / "state"
    q = JobQueue(state)
    for i in range(60):
        f = tmp_path / f"c{i}.pt"
        f.write_bytes(os.urandom(16))
        q.enqueue(f, hold=False)
    procs = [
        subprocess.Popen([sys.executable, "-c", CLAIMER, str(state)], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    claimed = [int(x) for p in procs for x in p.communicate()[0].split()]
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 60
