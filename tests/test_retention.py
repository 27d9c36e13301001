"""Retention on a real database: chains go together, and a held lock never stalls it."""

from __future__ import annotations

import threading

import psycopg

from examq.worker import retention_step
from tests.conftest import PRO_USER


def _chain(queue, steps: int) -> list[int]:
    chain = queue.transport.call(
        "enqueue_chain",
        {"p_steps": [{"job_type": "system.noop", "payload": {}} for _ in range(steps)],
         "p_user_id": PRO_USER},
    )
    return [job["id"] for job in chain["jobs"]]


def _finish_next(queue) -> int:
    [job] = queue.claim("w", 1)
    queue.complete(job, {})
    return job.id


def _age(sql, ids: list[int], days: int) -> None:
    sql.execute(
        "update jobs set finished_at = now() - make_interval(days => %s) where id = any (%s)",
        (days, ids),
    )


def test_a_chain_with_steps_still_to_run_keeps_its_finished_first_step(queue, sql):
    root, child = _chain(queue, 2)
    _finish_next(queue)
    _age(sql, [root], 40)

    assert queue.prune(30) == 0
    assert queue.get(root).status == "succeeded"
    assert sql.execute("select parent_id from jobs where id = %s", (child,)).fetchone() == (root,)


def test_a_chain_goes_when_its_last_step_is_past_retention(queue, sql):
    ids = _chain(queue, 3)
    for _ in ids:
        _finish_next(queue)
    _age(sql, ids[:2], 40)
    _age(sql, ids[2:], 10)

    assert queue.prune(30) == 0

    _age(sql, ids[2:], 31)
    assert queue.prune(30) == 3
    assert sql.execute("select count(*) from jobs").fetchone() == (0,)


def test_retention_gives_up_on_a_held_lock_instead_of_waiting_for_it(queue, sql, db_url):
    ids = _chain(queue, 2)
    for _ in ids:
        _finish_next(queue)
    _age(sql, ids, 40)
    plain = queue.enqueue("system.noop")
    [job] = queue.claim("w", 1)
    queue.complete(job, {})
    _age(sql, [plain.id], 40)

    outcome: dict[str, dict[str, int]] = {}
    with psycopg.connect(db_url) as holder:
        # Someone holds the chain's last step (an admin's open transaction, say).
        holder.execute("select 1 from jobs where id = %s for update", (ids[1],))
        step = threading.Thread(target=lambda: outcome.setdefault("pruned", retention_step(queue, 30, limit=1)))
        step.start()
        step.join(timeout=60)
        assert not step.is_alive(), "the retention step is still waiting for the lock"
    pruned = outcome["pruned"]

    # Only the oldest job was tried (limit 1): the chain's first step, whose deletion
    # must touch the locked step. The step gave up and reported nothing deleted.
    assert pruned == {"pruned": 0, "pruned_notifications": 0}
    assert queue.prune(30) == 3


def test_a_limit_counts_chains_and_never_splits_one(queue, sql):
    ids = _chain(queue, 3)
    for _ in ids:
        _finish_next(queue)
    plain = queue.enqueue("system.noop")
    _finish_next(queue)
    _age(sql, ids, 40)
    _age(sql, [plain.id], 35)

    assert queue.prune(30, limit=1) == 3
    assert {r[0] for r in sql.execute("select id from jobs").fetchall()} == {plain.id}
