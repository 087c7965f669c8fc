"""The worker's heartbeat: a failed renewal stops only the claim it was made for."""

from __future__ import annotations

import os

from queuectl import jobs
from queuectl.workers import Worker, _Interrupt
from tests.unit.queue_steps import enqueue


def test_stale_renewal_spares_next_claim(engine):
    # Given a worker whose heartbeat still sees job "first" after it was recorded
    enqueue(engine, id="first")
    enqueue(engine, id="second")
    worker = Worker("worker-id", "worker-1", None, False, os.getpid())
    worker.engine = engine
    first = jobs.claim_next(engine, worker.id, None, 30)
    worker.claim = first
    jobs.complete(engine, first, 0, "")

    # When the heartbeat's renewal of "first" fails and the worker claims "second"
    worker._beat(30)
    second = jobs.claim_next(engine, worker.id, None, 30)

    # Then only the claim of "first" counts as lost, and "second" runs undisturbed
    assert worker.lost_token == first.token
    assert not _Interrupt(worker, second.token).is_set()
    assert _Interrupt(worker, first.token).is_set()
