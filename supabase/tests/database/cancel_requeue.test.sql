-- cancel_job and requeue_job: who may call them (owner, another user, admin, service,
-- anonymous), what they do to a queued, running or finished job, what they record, and
-- their errors.
begin;
select plan(43);

\set free '00000000-0000-4000-8000-000000000001'
\set admin '00000000-0000-4000-8000-00000000000a'
\set as_free '{"sub": "00000000-0000-4000-8000-000000000001", "role": "authenticated"}'
\set as_pro '{"sub": "00000000-0000-4000-8000-000000000002", "role": "authenticated"}'
\set as_admin '{"sub": "00000000-0000-4000-8000-00000000000a", "role": "authenticated"}'
\set as_signed_out '{"role": "authenticated"}'
\set as_anon '{"role": "anon"}'
\set as_service '{"role": "service_role"}'

-- Jobs in every state, made by the service and its workers. Each claim takes the only
-- ready job.

set local role service_role;
select set_config('request.jwt.claims', :'as_service', true);

select id as running_own from public.enqueue_job('exam.grade', p_user_id => :'free') \gset
select count(*) from public.claim_jobs('w1', 1);

select id as dead_job from public.enqueue_job('exam.grade', p_user_id => :'free') \gset
select lease_token as dead_token from public.claim_jobs('w1', 1) \gset
select public.fail_job(:dead_job, :'dead_token', 'not a CSV file', 'permanent');

select id as stopped_job
from public.enqueue_job('exam.grade', p_user_id => '00000000-0000-4000-8000-000000000002') \gset
select lease_token as stopped_token from public.claim_jobs('w1', 1) \gset
select public.cancel_job(:stopped_job);
select public.fail_job(:stopped_job, :'stopped_token', 'stopped', 'cancelled');

select id as done_job from public.enqueue_job('system.noop') \gset
select lease_token as done_token from public.claim_jobs('w1', 1) \gset
select public.complete_job(:done_job, :'done_token', '{"ok": true}');

select id as busy_job from public.enqueue_job('system.sleep') \gset
select count(*) from public.claim_jobs('w1', 1);

select id as queued_own from public.enqueue_job('exam.grade', p_user_id => :'free') \gset
select id as queued_quiet from public.enqueue_job('exam.grade', p_user_id => :'free') \gset
select id as queued_for_admin from public.enqueue_job('exam.grade', p_user_id => :'free') \gset
select id as system_job from public.enqueue_job('system.noop') \gset
select id as queued_for_service from public.enqueue_job('exam.grade', p_user_id => :'free') \gset

-- The owner -----------------------------------------------------------------------------

reset role;
set local role authenticated;
select set_config('request.jwt.claims', :'as_free', true);

select is(
  public.cancel_job(:queued_own, 'no longer needed'),
  jsonb_build_object('job_id', :queued_own, 'status', 'cancelled', 'outcome', 'cancelled'),
  'an owner cancelling their queued job cancels it at once'
);
select is(
  (select row(j.status, j.finished_at, j.error_kind, j.last_error)::text
   from public.jobs j where j.id = :queued_own),
  row('cancelled'::public.job_status, now(), 'cancelled', 'no longer needed')::text,
  'the cancelled job is finished now, with the reason as its error'
);
select is(
  (select array_agg(row(e.actor, e.from_status, e.to_status, e.error)::text)
   from public.job_events e
   where e.job_id = :queued_own and e.from_status is not null),
  array[row('user:' || :'free', 'queued'::public.job_status, 'cancelled'::public.job_status,
            'no longer needed')::text],
  'the cancellation is recorded once, by the owner, with the reason'
);

select public.cancel_job(:queued_quiet);

select is(
  (select j.last_error from public.jobs j where j.id = :queued_quiet), 'cancelled on request',
  'a cancellation without a reason gets a default one'
);
select is(
  public.cancel_job(:running_own, 'wrong exam'),
  jsonb_build_object('job_id', :running_own, 'status', 'running', 'outcome', 'cancel_requested'),
  'an owner cancelling their running job asks its worker to stop'
);
select is(
  (select row(j.status, j.cancel_requested_at, j.finished_at)::text
   from public.jobs j where j.id = :running_own),
  row('running'::public.job_status, now(), null::timestamptz)::text,
  'the running job keeps running, with the request time recorded'
);
select is(
  (select array_agg(row(e.from_status, e.to_status, e.details)::text) from public.job_events e
   where e.job_id = :running_own and e.details ? 'cancel_requested'),
  array[row('running'::public.job_status, 'running'::public.job_status,
            '{"cancel_requested": true, "reason": "wrong exam"}'::jsonb)::text],
  'the cancel request is recorded as an event from running to running'
);
select is(
  public.cancel_job(:running_own) ->> 'outcome', 'cancel_requested',
  'cancelling a running job again reports the pending request'
);
select is(
  (select count(*)::integer
   from public.job_events e where e.job_id = :running_own and e.details ? 'cancel_requested'), 1,
  'the repeated request records no second event'
);
select is(
  public.cancel_job(:queued_own),
  jsonb_build_object('job_id', :queued_own, 'status', 'cancelled', 'outcome', 'already_finished'),
  'cancelling a finished job reports it already finished'
);
select is(
  public.cancel_job(:dead_job) ->> 'status', 'dead',
  'cancelling a dead job leaves it dead'
);
select is(
  (select count(*)::integer from public.job_events e where e.job_id = :queued_own), 2,
  'cancelling a finished job records nothing'
);
select throws_ok(
  $$ select public.cancel_job(999999999) $$,
  'EQ004', 'job 999999999 not found',
  'cancelling a job that does not exist is refused as not found'
);
select throws_ok(
  format($$ select public.cancel_job(%s) $$, :system_job),
  'EQ004', format('job %s not found', :system_job),
  'a teacher cannot cancel a system job, which they cannot see'
);

-- Another user ---------------------------------------------------------------------------

select set_config('request.jwt.claims', :'as_pro', true);

select throws_ok(
  format($$ select public.cancel_job(%s) $$, :queued_for_admin),
  'EQ004', format('job %s not found', :queued_for_admin),
  'another user''s job is reported exactly like a missing one'
);

reset role;
select is(
  (select j.status from public.jobs j where j.id = :queued_for_admin), 'queued'::public.job_status,
  'the refused cancellation leaves the job queued'
);

-- An admin, the service and anonymous callers ------------------------------------------------

set local role authenticated;
select set_config('request.jwt.claims', :'as_admin', true);

select is(
  public.cancel_job(:queued_for_admin) ->> 'outcome', 'cancelled',
  'an admin may cancel any user''s job'
);
select is(
  (select e.actor
   from public.job_events e where e.job_id = :queued_for_admin and e.to_status = 'cancelled'),
  'admin:' || :'admin',
  'an admin''s cancellation is recorded as the admin''s'
);
select is(
  public.cancel_job(:system_job) ->> 'outcome', 'cancelled',
  'an admin may cancel a system job'
);

reset role;
set local role service_role;
select set_config('request.jwt.claims', :'as_service', true);

select is(
  public.cancel_job(:queued_for_service) ->> 'outcome', 'cancelled',
  'the service may cancel any job'
);
select is(
  (select e.actor
   from public.job_events e where e.job_id = :queued_for_service and e.to_status = 'cancelled'),
  'service',
  'the service''s cancellation is recorded as the service''s'
);

reset role;
set local role anon;
select set_config('request.jwt.claims', :'as_anon', true);

select throws_ok(
  format($$ select public.cancel_job(%s) $$, :busy_job),
  '42501', 'permission denied for function cancel_job',
  'the anon role may not call cancel_job'
);

reset role;
set local role authenticated;
select set_config('request.jwt.claims', :'as_signed_out', true);

select throws_ok(
  format($$ select public.cancel_job(%s) $$, :busy_job),
  '42501', 'sign in to cancel jobs',
  'a request without a user is told to sign in to cancel'
);

-- requeue_job: who may -------------------------------------------------------------------------

select throws_ok(
  format($$ select public.requeue_job(%s) $$, :dead_job),
  '42501', 'only admins may requeue jobs',
  'a request without a user may not requeue'
);

select set_config('request.jwt.claims', :'as_free', true);

select throws_ok(
  format($$ select public.requeue_job(%s) $$, :dead_job),
  '42501', 'only admins may requeue jobs',
  'an owner who is not an admin may not requeue their own dead job'
);
select throws_ok(
  $$ select public.requeue_job(999999999) $$,
  '42501', 'only admins may requeue jobs',
  'a non-admin learns nothing about whether a job exists'
);

reset role;
set local role anon;
select set_config('request.jwt.claims', :'as_anon', true);

select throws_ok(
  format($$ select public.requeue_job(%s) $$, :dead_job),
  '42501', 'permission denied for function requeue_job',
  'the anon role may not call requeue_job'
);

-- requeue_job: what it does ---------------------------------------------------------------------

reset role;
set local role authenticated;
select set_config('request.jwt.claims', :'as_admin', true);

select is(
  public.requeue_job(:dead_job, 'key fixed'),
  jsonb_build_object('job_id', :dead_job, 'status', 'queued', 'outcome', 'requeued'),
  'an admin may requeue a dead job'
);

reset role;

select is(
  (select row(j.status, j.attempt, j.run_at, j.sort_at, j.lease_token, j.lease_expires_at,
              j.worker_id, j.finished_at, j.progress, j.result)::text
   from public.jobs j where j.id = :dead_job),
  row('queued'::public.job_status, 0, now(), now(), null::uuid, null::timestamptz, null::text,
      null::timestamptz, null::numeric(5, 2), null::jsonb)::text,
  'the requeued job is queued to run now with fresh attempts and no trace of its last lease'
);
select is(
  (select row(e.actor, e.from_status, e.to_status, e.attempt, e.details)::text
   from public.job_events e
   where e.job_id = :dead_job order by e.id desc limit 1),
  row('admin:' || :'admin', 'dead'::public.job_status, 'queued'::public.job_status, 0,
      '{"reason": "key fixed", "previous_attempts": 1}'::jsonb)::text,
  'the requeue is recorded by the admin with the reason and the attempts used before'
);

set local role service_role;
select set_config('request.jwt.claims', :'as_service', true);

select is(
  public.requeue_job(:stopped_job) ->> 'outcome', 'requeued',
  'the service may requeue a cancelled job'
);
select is(
  (select row(j.status, j.cancel_requested_at, j.sort_at)::text
   from public.jobs j where j.id = :stopped_job),
  row('queued'::public.job_status, null::timestamptz, now() - interval '60 seconds')::text,
  'a requeued job drops its old cancel request and gets its tier''s head start again'
);
select is(
  (select row(e.actor, e.from_status, e.details ->> 'reason')::text from public.job_events e
   where e.job_id = :stopped_job order by e.id desc limit 1),
  row('service', 'cancelled'::public.job_status, 'requeued')::text,
  'the service''s requeue is recorded as the service''s, with a default reason'
);

select count(*) from public.claim_jobs('w2', 10);

select is(
  (select row(j.status, j.attempt, j.max_attempts)::text from public.jobs j where j.id = :dead_job),
  row('running'::public.job_status, 1, 3)::text,
  'a requeued job is claimed again as its first of all its attempts'
);
select is(
  (select (public.heartbeat_job(j.id, j.lease_token) ->> 'cancel_requested')::boolean
   from public.jobs j where j.id = :stopped_job),
  false,
  'the requeued job''s new run is not asked to stop'
);

-- requeue_job: errors ------------------------------------------------------------------------

reset role;
set local role authenticated;
select set_config('request.jwt.claims', :'as_admin', true);

select throws_ok(
  $$ select public.requeue_job(999999999) $$,
  'EQ004', 'job 999999999 not found',
  'an admin requeueing a job that does not exist is told it is not found'
);
select throws_ok(
  format($$ select public.requeue_job(%s) $$, :busy_job),
  'EQ006', format('job %s is running; only dead or cancelled jobs can be requeued', :busy_job),
  'a running job cannot be requeued'
);
select throws_ok(
  format($$ select public.requeue_job(%s) $$, :done_job),
  'EQ006', format('job %s is succeeded; only dead or cancelled jobs can be requeued', :done_job),
  'a succeeded job cannot be requeued'
);

select id as fresh_job from public.enqueue_job('exam.grade') \gset

select throws_ok(
  format($$ select public.requeue_job(%s) $$, :fresh_job),
  'EQ006', format('job %s is queued; only dead or cancelled jobs can be requeued', :fresh_job),
  'a queued job cannot be requeued'
);

reset role;

select is(
  (select row(j.status, j.attempt)::text from public.jobs j where j.id = :busy_job),
  row('running'::public.job_status, 1)::text,
  'the refused requeue leaves the running job as it was'
);
select is(
  (select count(*)::integer
   from public.job_events e
     where e.to_status = 'queued' and e.from_status in ('running', 'succeeded')),
  0,
  'no refused requeue records an event'
);

-- Concurrent cancel and completion ------------------------------------------------------------

set local role service_role;
select set_config('request.jwt.claims', :'as_service', true);

select public.complete_job(j.id, j.lease_token) from public.jobs j where j.id = :running_own;

select is(
  (select j.status from public.jobs j where j.id = :running_own), 'succeeded'::public.job_status,
  'a worker that finishes before honouring a cancel request still completes the job'
);
select is(
  public.cancel_job(:running_own) ->> 'outcome', 'already_finished',
  'a cancel that arrives after the completion finds the job already finished'
);

select * from finish();
rollback;
