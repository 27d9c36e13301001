"""A property test of the job lifecycle: random interleavings against the real database.

A hypothesis state machine enqueues, claims (claim_jobs and claim_job_batch),
heartbeats, completes (complete_job and complete_jobs), fails (retryable and
permanent), cancels, requeues and expires leases (an SQL update of lease_expires_at
into the past), in any order, on a handful of jobs. A model predicts each job's state;
after every step the database must agree with it, and:

- a job holds at most one valid lease: a running job has a token and an expiry, the
  token the model knows; no other job holds a live lease;
- status, lease and finished_at agree (queued: no lease, no finish time; running: a
  lease; succeeded, dead, cancelled: a finish time);
- each job's events form a path from its creation to its current state.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from examq.db import PsycopgTransport
from examq.errors import InvalidState, LeaseLost
from examq.queue import Job, Queue
from tests.conftest import FREE_USER, PRO_USER

pytestmark = pytest.mark.timeout(120)

FINAL = {"succeeded", "dead", "cancelled"}


@dataclass
class Model:
    """What the test expects of one job."""

    status: str = "queued"
    attempt: int = 0
    max_attempts: int = 2
    job: Job | None = None  # the last claim's copy, with its lease token
    expired: bool = False
    cancel_requested: bool = False
    retry_pending: bool = False  # queued with run_at in the future (a retry)
    old_tokens: list[str] = field(default_factory=list)


def make_machine(db_url: str):
    class Lifecycle(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.sql = psycopg.connect(db_url, autocommit=True)
            self.sql.execute(
                "truncate public.jobs, public.job_events, public.notification_outbox cascade"
            )
            self.queue = Queue(PsycopgTransport(db_url))
            self.jobs: dict[int, Model] = {}

        def teardown(self) -> None:
            self.queue.transport.close()
            self.sql.close()

        # -- helpers --------------------------------------------------------------

        def reclaim_expired(self) -> None:
            # Every claim first reclaims every expired lease.
            for model in self.jobs.values():
                if model.status == "running" and model.expired:
                    model.expired = False
                    if model.job is not None:
                        model.old_tokens.append(str(model.job.lease_token))
                    if model.cancel_requested:
                        model.status = "cancelled"
                    elif model.attempt >= model.max_attempts:
                        model.status = "dead"
                    else:
                        model.status = "queued"

        def running(self) -> list[int]:
            return [
                i
                for i, m in self.jobs.items()
                if m.status == "running" and not m.expired
            ]

        # -- rules ----------------------------------------------------------------

        @rule(
            user=st.sampled_from([FREE_USER, PRO_USER, None]),
            attempts=st.integers(1, 3),
            bulk=st.booleans(),
        )
        def enqueue(self, user, attempts, bulk):
            if bulk:
                [entry] = self.queue.enqueue_many(
                    [
                        {
                            "job_type": "exam.grade",
                            "user_id": user,
                            "max_attempts": attempts,
                        }
                    ]
                )
                job_id = entry.job_id
            else:
                job_id = self.queue.enqueue(
                    "exam.grade", {}, user_id=user, max_attempts=attempts
                ).id
            self.jobs[job_id] = Model(max_attempts=attempts)

        @rule(limit=st.integers(1, 4), batch=st.booleans())
        def claim(self, limit, batch):
            self.reclaim_expired()
            claimed = (self.queue.claim_batch if batch else self.queue.claim)(
                "pw", limit
            )
            assert len(claimed) <= limit
            for job in claimed:
                model = self.jobs[job.id]
                assert model.status == "queued" and not model.retry_pending, (
                    f"claimed job {job.id}, which the model has {model.status}"
                )
                model.status, model.job, model.attempt = (
                    "running",
                    job,
                    model.attempt + 1,
                )
                assert job.attempt == model.attempt
                # Whoever held an earlier lease of this job is refused now, by both calls.
                for token in model.old_tokens[-1:]:
                    stale = job.model_copy(update={"lease_token": uuid.UUID(token)})
                    with pytest.raises(LeaseLost):
                        self.queue.complete(stale, {"stale": True})
                    [outcome] = self.queue.complete_many([(stale, {"stale": True})])
                    assert outcome.outcome == "lease_lost", outcome
            ready = [
                i
                for i, m in self.jobs.items()
                if m.status == "queued" and not m.retry_pending
            ]
            if len(claimed) < limit:
                assert not ready, (
                    f"jobs {ready} were ready and not claimed (caps are high)"
                )

        @precondition(lambda self: self.running())
        @rule(data=st.data())
        def heartbeat(self, data):
            job_id = data.draw(st.sampled_from(self.running()))
            answer = self.queue.heartbeat(self.jobs[job_id].job, progress=50)
            assert answer.cancel_requested == self.jobs[job_id].cancel_requested

        @precondition(lambda self: any(m.job is not None for m in self.jobs.values()))
        @rule(data=st.data(), batch=st.booleans())
        def complete(self, data, batch):
            job_id = data.draw(
                st.sampled_from([i for i, m in self.jobs.items() if m.job is not None])
            )
            model = self.jobs[job_id]
            live = model.status == "running" and not model.expired
            if batch:
                [outcome] = self.queue.complete_many([(model.job, {"n": job_id})])
                if live:
                    assert outcome.outcome == "completed"
                elif model.status == "running" or model.status == "queued":
                    assert outcome.outcome == "lease_lost" or model.expired, outcome
                    if model.expired:
                        # An expired lease not yet reclaimed still completes (documented).
                        assert outcome.outcome == "completed"
                        live = True
                else:
                    assert outcome.outcome in (
                        "already_completed",
                        "invalid_state",
                        "lease_lost",
                    )
            else:
                try:
                    answer = self.queue.complete(model.job, {"n": job_id})
                    assert live or model.expired or model.status == "succeeded", answer
                    live = live or (model.status == "running" and model.expired)
                except (LeaseLost, InvalidState):
                    assert not live
            if live:
                model.status, model.expired = "succeeded", False

        def stale_holders(self) -> list[int]:
            # Jobs another lease holds now, and that an earlier lease once held.
            return [
                i
                for i, m in self.jobs.items()
                if m.old_tokens and m.status == "running"
            ]

        @precondition(lambda self: self.stale_holders())
        @rule(data=st.data(), batch=st.booleans())
        def complete_with_a_stale_lease(self, data, batch):
            job_id = data.draw(st.sampled_from(self.stale_holders()))
            model = self.jobs[job_id]
            stale = model.job.model_copy(
                update={
                    "lease_token": uuid.UUID(
                        data.draw(st.sampled_from(model.old_tokens))
                    )
                }
            )
            if batch:
                [outcome] = self.queue.complete_many([(stale, {"stale": True})])
                assert outcome.outcome in ("lease_lost", "invalid_state"), outcome
            else:
                with pytest.raises((LeaseLost, InvalidState)):
                    self.queue.complete(stale, {"stale": True})

        @precondition(lambda self: self.running())
        @rule(data=st.data(), kind=st.sampled_from(["retryable", "permanent"]))
        def fail(self, data, kind):
            job_id = data.draw(st.sampled_from(self.running()))
            model = self.jobs[job_id]
            answer = self.queue.fail(model.job, "injected", kind)
            if model.cancel_requested:
                model.status = "cancelled"
            elif kind == "permanent" or model.attempt >= model.max_attempts:
                model.status = "dead"
            else:
                model.status, model.retry_pending = "queued", True
                model.old_tokens.append(str(model.job.lease_token))
            assert answer.status == model.status

        @precondition(lambda self: self.jobs)
        @rule(data=st.data())
        def cancel(self, data):
            job_id = data.draw(st.sampled_from(sorted(self.jobs)))
            model = self.jobs[job_id]
            answer = self.queue.cancel(job_id)
            if model.status == "queued":
                model.status, model.retry_pending = "cancelled", False
                assert answer.outcome == "cancelled"
            elif model.status == "running":
                model.cancel_requested = True
                assert answer.outcome == "cancel_requested"
            else:
                assert answer.outcome == "already_finished"

        @precondition(
            lambda self: any(
                m.status in ("dead", "cancelled") for m in self.jobs.values()
            )
        )
        @rule(data=st.data())
        def requeue(self, data):
            job_id = data.draw(
                st.sampled_from(
                    [
                        i
                        for i, m in self.jobs.items()
                        if m.status in ("dead", "cancelled")
                    ]
                )
            )
            self.queue.requeue(job_id)
            self.jobs[job_id] = Model(
                max_attempts=self.jobs[job_id].max_attempts, job=self.jobs[job_id].job
            )

        @precondition(lambda self: self.running())
        @rule(data=st.data())
        def expire_lease(self, data):
            job_id = data.draw(st.sampled_from(self.running()))
            self.sql.execute(
                "update public.jobs set lease_expires_at = now() - interval '1 second' where id = %s",
                (job_id,),
            )
            self.jobs[job_id].expired = True

        @precondition(lambda self: any(m.retry_pending for m in self.jobs.values()))
        @rule()
        def retries_come_due(self):
            # Time passes for the retries (their run_at moved to now, keeping the order key).
            self.sql.execute(
                "update public.jobs j set run_at = now(), sort_at = now() - make_interval(secs => t.head_start_seconds) "
                "from public.tiers t where t.name = j.tier and j.status = 'queued' and j.run_at > now()"
            )
            for model in self.jobs.values():
                model.retry_pending = False

        # -- invariants -----------------------------------------------------------

        @invariant()
        def database_agrees_with_the_model(self):
            rows = self.sql.execute(
                "select id, status::text, attempt, lease_token::text, lease_expires_at, finished_at, "
                "cancel_requested_at is not null from public.jobs"
            ).fetchall()
            assert {r[0] for r in rows} == set(self.jobs), "no job lost, none invented"
            for job_id, status, attempt, token, expires, finished, cancel in rows:
                model = self.jobs[job_id]
                assert status == model.status, (
                    f"job {job_id}: {status}, model {model.status}"
                )
                assert (
                    cancel == (model.cancel_requested and status == "running")
                    or status != "running"
                )
                if status == "running":
                    assert token is not None and expires is not None, (
                        f"job {job_id} runs without a lease"
                    )
                    assert token == str(model.job.lease_token), (
                        f"job {job_id}: a lease nobody holds"
                    )
                    assert attempt == model.attempt
                if status == "queued":
                    assert token is None and expires is None and finished is None
                if status in FINAL:
                    assert finished is not None and expires is None
                else:
                    assert finished is None
            live = self.sql.execute(
                "select count(*) from public.jobs where lease_expires_at > now() and status <> 'running'"
            ).fetchone()[0]
            assert live == 0, "only running jobs hold a live lease"

        @invariant()
        def events_form_a_path(self):
            rows = self.sql.execute(
                "select job_id, from_status::text, to_status::text from public.job_events order by job_id, id"
            ).fetchall()
            last: dict[int, str] = {}
            for job_id, from_status, to_status in rows:
                assert from_status == last.get(job_id), (
                    f"job {job_id}: {from_status} after {last.get(job_id)}"
                )
                last[job_id] = to_status
            for job_id, model in self.jobs.items():
                assert last[job_id] == model.status, (
                    f"job {job_id}: last event {last[job_id]}"
                )

    return Lifecycle


def test_lifecycle_invariants_hold_under_random_interleavings(db_url, sql):
    sql.execute("update public.tiers set max_running_per_user = 1000")
    machine = make_machine(db_url)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
