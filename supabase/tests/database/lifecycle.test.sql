-- The worker calls on a claimed job: heartbeat_job (lease, progress, ETA, cancel flag),
-- complete_job, fail_job (retryable, permanent, exhausted, cancelled) and release_job,
-- with their repeated calls, lease-lost errors for a wrong token and invalid-state errors.
-- Every call runs as the service role, the way a worker calls it.
begin;
select plan(69);

\set pro '00000000-0000-4000-8000-000000000002'
\set as_free '{"sub": "00000000-0000-4000-8000-000000000001", "role": "authenticated"}'
\set as_service '{"role": "service_role"}'
\set wrong_token '00000000-0000-4000-8000-0000000000ee'

set local role service_role;
select set_config('request.jwt.claims', :'as_service', true);

-- heartbeat_job -------------------------------------------------------------------------

select id as hb from public.enqueue_job('exam.grade', p_user_id => :'pro') \gset
select lease_token as hb_token from public.claim_jobs('w1', 1, p_lease_seconds => 30) \gset

select is(
  public.heartbeat_job(:hb, :'hb_token'),
  jsonb_build_object('job_id', :hb, 'cancel_requested', false,
                     'lease_expires_at', now() + interval '300 seconds',
                     'progress', 0, 'eta_at', null),
  'a bare heartbeat extends the lease by '
  'the job type''s lease_seconds and reports no cancel request'
);

update public.jobs set started_at = now() - interval '60 seconds' where id = :hb;

select is(
  public.heartbeat_job(:hb, :'hb_token', 25, 'question 5 of 20') - 'lease_expires_at',
  jsonb_build_object('job_id', :hb, 'cancel_requested', false, 'progress', 25,
                     'eta_at', now() + interval '180 seconds'),
  'progress of 25 % after 60 s of work gives an ETA 180 s from now'
);
select is(
  (select row(j.progress, j.progress_message, j.eta_at)::text from public.jobs j where j.id = :hb),
  row(25::numeric(5, 2), 'question 5 of 20', now() + interval '180 seconds')::text,
  'the progress, its message and the ETA are stored on the job'
);
select is(
  (public.heartbeat_job(:hb, :'hb_token', p_extend_seconds => 600)
     ->> 'lease_expires_at')::timestamptz,
  now() + interval '600 seconds',
  'a heartbeat may extend the lease by a chosen number of seconds'
);
select is(
  (public.heartbeat_job(:hb, :'hb_token', p_extend_seconds => 10)
     ->> 'lease_expires_at')::timestamptz,
  now() + interval '600 seconds',
  'a heartbeat never shortens the lease'
);
select is(
  (select row(j.progress, j.progress_message, j.eta_at)::text from public.jobs j where j.id = :hb),
  row(25::numeric(5, 2), 'question 5 of 20', now() + interval '180 seconds')::text,
  'a heartbeat without progress or message keeps the last ones and the ETA'
);
select is(
  (public.heartbeat_job(:hb, :'hb_token', 100) ->> 'eta_at')::timestamptz, now(),
  'progress of 100 % puts the ETA at now'
);
select is(
  public.heartbeat_job(:hb, :'hb_token', 0) -> 'eta_at',
  'null'::jsonb,
  'progress of 0 % gives no ETA'
);
select public.heartbeat_job(:hb, :'hb_token', p_message => repeat('m', 600));

select is(
  (select length(j.progress_message) from public.jobs j where j.id = :hb), 500,
  'a progress message is stored truncated to 500 characters'
);

select public.cancel_job(:hb, 'the teacher changed the key');

select is(
  (public.heartbeat_job(:hb, :'hb_token') ->> 'cancel_requested')::boolean, true,
  'after a cancel request the next heartbeat reports it'
);

select throws_ok(
  format($$ select public.heartbeat_job(%s, %L, 101) $$, :hb, :'hb_token'),
  'EQ007', 'progress must be between 0 and 100, not 101',
  'progress over 100 is refused'
);
select throws_ok(
  format($$ select public.heartbeat_job(%s, %L, -1) $$, :hb, :'hb_token'),
  'EQ007', 'progress must be between 0 and 100, not -1',
  'negative progress is refused'
);
select throws_ok(
  format($$ select public.heartbeat_job(%s, %L, p_extend_seconds => 4) $$, :hb, :'hb_token'),
  'EQ007', 'extend_seconds must be between 5 and 86400, not 4',
  'an extension under 5 seconds is refused'
);
select throws_ok(
  format($$ select public.heartbeat_job(%s, %L, p_extend_seconds => 86401) $$, :hb, :'hb_token'),
  'EQ007', 'extend_seconds must be between 5 and 86400, not 86401',
  'an extension over a day is refused'
);
select throws_ok(
  format($$ select public.heartbeat_job(999999999, %L) $$, :'hb_token'),
  'EQ004', 'job 999999999 not found',
  'a heartbeat for a job that does not exist is refused as not found'
);
select throws_ok(
  format($$ select public.heartbeat_job(%s, %L) $$, :hb, :'wrong_token'),
  'EQ005', format('lease lost on job %s: it is running under another lease or none', :hb),
  'a heartbeat with another token is refused as lease lost'
);

-- complete_job ----------------------------------------------------------------------------

select id as done from public.enqueue_job('exam.grade', p_user_id => :'pro') \gset
select lease_token as done_token from public.claim_jobs('w1', 1) \gset
update public.jobs set progress_message = 'grading', eta_at = now() where id = :done;

select is(
  public.complete_job(:done, :'done_token', '{"score": 17}'),
  jsonb_build_object('job_id', :done, 'status', 'succeeded', 'outcome', 'completed'),
  'completing a running job under its lease reports it completed'
);
select is(
  (select row(j.status, j.result, j.progress, j.progress_message, j.eta_at, j.lease_expires_at,
              j.finished_at)::text
   from public.jobs j where j.id = :done),
  row('succeeded'::public.job_status, '{"score": 17}'::jsonb, 100::numeric(5, 2), null::text,
      null::timestamptz, null::timestamptz, now())::text,
  'a completed job is succeeded with its result, at 100 %, finished now, its lease ended'
);
select is(
  (select array_agg(row(e.actor, e.from_status, e.to_status, e.attempt)::text)
   from public.job_events e
   where e.job_id = :done and e.to_status = 'succeeded'),
  array[row('worker:w1', 'running'::public.job_status, 'succeeded'::public.job_status, 1)::text],
  'completion is recorded as one event by the worker'
);
select is(
  public.complete_job(:done, :'done_token', '{"score": 0}'),
  jsonb_build_object('job_id', :done, 'status', 'succeeded', 'outcome', 'already_completed'),
  'completing again under the same lease reports it already completed'
);
select is(
  (select row(j.result, (select count(*) from public.job_events e where e.job_id = j.id))::text
   from public.jobs j where j.id = :done),
  row('{"score": 17}'::jsonb, 3::bigint)::text,
  'the repeated completion changes neither the result nor the history'
);
select throws_ok(
  format($$ select public.heartbeat_job(%s, %L) $$, :done, :'done_token'),
  'EQ005', format('lease lost on job %s: it is already succeeded', :done),
  'a heartbeat after completion says the job is already succeeded'
);
select throws_ok(
  format($$ select public.complete_job(999999999, %L) $$, :'done_token'),
  'EQ004', 'job 999999999 not found',
  'completing a job that does not exist is refused as not found'
);

select id as other from public.enqueue_job('exam.grade', p_user_id => :'pro') \gset

select throws_ok(
  format($$ select public.complete_job(%s, %L) $$, :other, :'wrong_token'),
  'EQ005', format('lease lost on job %s: it is queued under another lease or none', :other),
  'completing a job that was never claimed is refused as lease lost'
);

select lease_token as other_token from public.claim_jobs('w1', 1) \gset

select throws_ok(
  format($$ select public.complete_job(%s, %L) $$, :other, :'wrong_token'),
  'EQ005', format('lease lost on job %s: it is running under another lease or none', :other),
  'completing a running job with another token is refused as lease lost'
);
select is(
  (select j.status from public.jobs j where j.id = :other), 'running'::public.job_status,
  'the refused completion leaves the job running'
);

select public.fail_job(:other, :'other_token', 'bad answer key', 'permanent');

select throws_ok(
  format($$ select public.complete_job(%s, %L) $$, :other, :'other_token'),
  'EQ006', format('job %s is already dead; it cannot be completed', :other),
  'completing a job that the same lease already failed is refused as an invalid state'
);

-- fail_job: retryable --------------------------------------------------------------------

select id as flaky from public.enqueue_job('exam.grade', p_user_id => :'pro') \gset
select lease_token as flaky_token from public.claim_jobs('w1', 1) \gset
select public.fail_job(:flaky, :'flaky_token', 'timeout talking to storage') as flaky_result \gset

select is(
  (:'flaky_result'::jsonb - 'run_at'),
  jsonb_build_object('job_id', :flaky, 'status', 'queued', 'outcome', 'retry_scheduled'),
  'a retryable failure with attempts left schedules a retry'
);
select is(
  (select (:'flaky_result'::jsonb ->> 'run_at')::timestamptz = j.run_at
   from public.jobs j where j.id = :flaky), true,
  'the reported run_at is the stored one'
);
select ok(
  (select j.run_at between now() + interval '10 seconds' and now() + interval '20 seconds'
   from public.jobs j where j.id = :flaky),
  'the first retry waits between the base delay (10 s) and twice it'
);
select is(
  (select row(j.sort_at = j.run_at - interval '60 seconds', j.lease_token, j.lease_expires_at,
              j.worker_id, j.finished_at, j.error_kind, j.last_error, j.attempt)::text
   from public.jobs j where j.id = :flaky),
  row(true, null::uuid, null::timestamptz, null::text, null::timestamptz, 'retryable',
      'timeout talking to storage', 1)::text,
  'the retry keeps its tier''s head start, drops the lease, '
  'and keeps the error and the attempt count'
);
select is(
  (select row(e.from_status, e.to_status, e.attempt, e.error, e.details ->> 'kind')::text
   from public.job_events e where e.job_id = :flaky and e.from_status = 'running'),
  row('running'::public.job_status, 'queued'::public.job_status, 1, 'timeout talking to storage',
      'retryable')::text,
  'the failure is recorded with its error and kind'
);
select is(
  (select e.actor from public.job_events e where e.job_id = :flaky and e.from_status = 'running'),
  'worker:w1',
  'a retryable failure is recorded as done by the worker that held the lease'
);
select is(
  public.fail_job(:flaky, :'flaky_token', 'again') ->> 'outcome', 'retry_scheduled',
  'failing again after the retry was scheduled answers as the first call did, changing nothing'
);

update public.jobs set run_at = now() - interval '1 second', sort_at = now() - interval '61 seconds'
where id = :flaky;
select lease_token as flaky_token_2 from public.claim_jobs('w1', 1) \gset
select public.fail_job(:flaky, :'flaky_token_2', 'timeout again');

select ok(
  (select j.run_at between now() + interval '20 seconds' and now() + interval '40 seconds'
   from public.jobs j where j.id = :flaky),
  'the second retry waits between twice and four times the base delay'
);

-- fail_job: permanent, exhausted, cancelled -------------------------------------------------

select id as broken from public.enqueue_job('exam.grade', p_user_id => :'pro') \gset
select lease_token as broken_token from public.claim_jobs('w1', 1) \gset

select is(
  public.fail_job(:broken, :'broken_token', 'not a CSV file', 'permanent') - 'run_at',
  jsonb_build_object('job_id', :broken, 'status', 'dead', 'outcome', 'dead'),
  'a permanent failure sends the job to the dead-letter queue at once'
);
select is(
  (select row(j.status, j.error_kind, j.last_error, j.finished_at, j.lease_expires_at,
              j.attempt < j.max_attempts)::text
   from public.jobs j where j.id = :broken),
  row('dead'::public.job_status, 'permanent', 'not a CSV file', now(), null::timestamptz,
      true)::text,
  'the dead job keeps its error, is finished now, and had attempts left'
);
select is(
  public.fail_job(:broken, :'broken_token', 'not a CSV file', 'permanent') ->> 'outcome',
  'already_failed',
  'failing again under the same lease reports it already failed'
);
select is(
  (select count(*)::integer from public.job_events e where e.job_id = :broken), 3,
  'the repeated failure records no event'
);

select id as last_try
from public.enqueue_job('exam.grade', p_user_id => :'pro', p_max_attempts => 1) \gset
select lease_token as last_try_token from public.claim_jobs('w1', 1) \gset

select is(
  public.fail_job(:last_try, :'last_try_token', 'timeout') ->> 'outcome', 'dead',
  'a retryable failure of the last attempt sends the job to the dead-letter queue'
);
select is(
  (select row(j.status, j.error_kind)::text from public.jobs j where j.id = :last_try),
  row('dead'::public.job_status, 'exhausted')::text,
  'the job is dead because its attempts are exhausted'
);

select id as stopped from public.enqueue_job('exam.grade', p_user_id => :'pro') \gset
select lease_token as stopped_token from public.claim_jobs('w1', 1) \gset

select is(
  public.fail_job(:stopped, :'stopped_token', 'stopped on request', 'cancelled') - 'run_at',
  jsonb_build_object('job_id', :stopped, 'status', 'cancelled', 'outcome', 'cancelled'),
  'a worker acknowledging a cancellation ends the job cancelled'
);
select is(
  (select row(j.status, j.error_kind, j.finished_at)::text
   from public.jobs j where j.id = :stopped),
  row('cancelled'::public.job_status, 'cancelled', now())::text,
  'the cancelled job is finished now'
);
select throws_ok(
  format($$ select public.complete_job(%s, %L) $$, :stopped, :'stopped_token'),
  'EQ006', format('job %s is already cancelled; it cannot be completed', :stopped),
  'a cancelled job cannot then be completed'
);

select id as asked from public.enqueue_job('exam.grade', p_user_id => :'pro') \gset
select lease_token as asked_token from public.claim_jobs('w1', 1) \gset
select public.cancel_job(:asked);

select is(
  public.fail_job(:asked, :'asked_token', 'timeout') ->> 'outcome', 'cancelled',
  'a retryable failure of a job asked to stop ends it cancelled instead of retrying'
);

select id as quiet from public.enqueue_job('exam.grade', p_user_id => :'pro') \gset
select lease_token as quiet_token from public.claim_jobs('w1', 1) \gset
select public.fail_job(:quiet, :'quiet_token', '', 'permanent');

select is(
  (select j.last_error from public.jobs j where j.id = :quiet), 'the job failed without a message',
  'an empty error text is replaced by a sentence saying there was none'
);

select id as loud from public.enqueue_job('exam.grade', p_user_id => :'pro') \gset
select lease_token as loud_token from public.claim_jobs('w1', 1) \gset
select public.fail_job(:loud, :'loud_token', repeat('e', 5000), 'permanent');

select is(
  (select length(j.last_error) from public.jobs j where j.id = :loud), 4000,
  'an error text is stored truncated to 4000 characters'
);

-- fail_job: errors -------------------------------------------------------------------------

select throws_ok(
  format($$ select public.fail_job(%s, %L, 'x', 'oops') $$, :loud, :'loud_token'),
  'EQ007', 'kind must be retryable, permanent or cancelled, not ''oops''',
  'an unknown failure kind is refused'
);
select throws_ok(
  format($$ select public.fail_job(%s, %L, 'x', null) $$, :loud, :'loud_token'),
  'EQ007', 'kind must be retryable, permanent or cancelled, not NULL',
  'a null failure kind is refused'
);
select throws_ok(
  format($$ select public.fail_job(999999999, %L, 'x') $$, :'loud_token'),
  'EQ004', 'job 999999999 not found',
  'failing a job that does not exist is refused as not found'
);

select id as busy from public.enqueue_job('exam.grade', p_user_id => :'pro') \gset
select lease_token as busy_token from public.claim_jobs('w1', 1) \gset

select throws_ok(
  format($$ select public.fail_job(%s, %L, 'x') $$, :busy, :'wrong_token'),
  'EQ005', format('lease lost on job %s: it is running under another lease or none', :busy),
  'failing a running job with another token is refused as lease lost'
);
select throws_ok(
  format($$ select public.fail_job(%s, %L, 'x') $$, :done, :'done_token'),
  'EQ006', format('job %s is already succeeded; it cannot be failed', :done),
  'failing a job that the same lease completed is refused as an invalid state'
);
select is(
  (select j.status from public.jobs j where j.id = :done), 'succeeded'::public.job_status,
  'the refused failure leaves the completed job succeeded'
);

-- release_job -------------------------------------------------------------------------------

select public.complete_job(:busy, :'busy_token');
select id as spare from public.enqueue_job('exam.grade', p_user_id => :'pro') \gset
select sort_at as spare_sort_at from public.jobs where id = :spare \gset
select lease_token as spare_token from public.claim_jobs('w1', 1) \gset

select is(
  public.release_job(:spare, :'spare_token'),
  jsonb_build_object('job_id', :spare, 'status', 'queued', 'outcome', 'released'),
  'a worker may give back a job it claimed but did not start'
);
select is(
  (select row(j.status, j.attempt, j.lease_token, j.lease_expires_at, j.worker_id, j.progress,
              j.sort_at)::text
   from public.jobs j where j.id = :spare),
  row('queued'::public.job_status, 0, null::uuid, null::timestamptz, null::text,
      null::numeric(5, 2),
      :'spare_sort_at'::timestamptz)::text,
  'the released job is queued again without using an attempt, '
  'and keeps its place in the claim order'
);
select is(
  (select row(e.actor, e.from_status, e.to_status, e.attempt, e.details)::text
   from public.job_events e where e.job_id = :spare order by e.id desc limit 1),
  row('system', 'running'::public.job_status, 'queued'::public.job_status, 0,
      '{"released": true}'::jsonb)::text,
  'the release is recorded as one event'
);
select is(
  (select j.first_started_at from public.jobs j where j.id = :spare), null,
  'a released first attempt leaves the job never started'
);
select throws_ok(
  format($$ select public.release_job(%s, %L) $$, :spare, :'spare_token'),
  'EQ005', format('lease lost on job %s: it is queued under another lease or none', :spare),
  'releasing again with the given-up token is refused as lease lost'
);
select is(
  (select c.attempt from public.claim_jobs('w1', 1) c where c.id = :spare), 1,
  'the released job is claimed again as its first attempt'
);
select lease_token as spare_token from public.jobs where id = :spare \gset

select throws_ok(
  format($$ select public.release_job(999999999, %L) $$, :'spare_token'),
  'EQ004', 'job 999999999 not found',
  'releasing a job that does not exist is refused as not found'
);
select throws_ok(
  format($$ select public.release_job(%s, %L) $$, :spare, :'wrong_token'),
  'EQ005', format('lease lost on job %s: it is running under another lease or none', :spare),
  'releasing a running job with another token is refused as lease lost'
);
select throws_ok(
  format($$ select public.release_job(%s, %L) $$, :done, :'done_token'),
  'EQ005', format('lease lost on job %s: it is already succeeded', :done),
  'releasing a job the same lease completed says it is already succeeded'
);

select public.cancel_job(:spare);

select is(
  (select public.release_job(:spare, :'spare_token') ->> 'outcome'),
  'cancelled',
  'releasing a job asked to stop ends it cancelled instead of queueing it again'
);
select is(
  (select row(j.status, j.error_kind, j.finished_at is not null)::text from public.jobs j where j.id = :spare),
  row('cancelled'::public.job_status, 'cancelled', true)::text,
  'the released job asked to stop is finished as cancelled'
);
select throws_ok(
  format($$ select public.release_job(%s, %L) $$, :spare, :'spare_token'),
  'EQ005', null,
  'a second release of the cancelled job changes nothing and says the lease is gone'
);

-- Signed-in users -------------------------------------------------------------------------------

reset role;
set local role authenticated;
select set_config('request.jwt.claims', :'as_free', true);

select throws_ok(
  format($$ select public.heartbeat_job(%s, %L) $$, :spare, :'spare_token'),
  '42501', 'permission denied for function heartbeat_job',
  'a signed-in user cannot heartbeat a job, even with its token'
);
select throws_ok(
  format($$ select public.complete_job(%s, %L) $$, :spare, :'spare_token'),
  '42501', 'permission denied for function complete_job',
  'a signed-in user cannot complete a job, even with its token'
);
select throws_ok(
  format($$ select public.fail_job(%s, %L, 'x') $$, :spare, :'spare_token'),
  '42501', 'permission denied for function fail_job',
  'a signed-in user cannot fail a job, even with its token'
);
select throws_ok(
  format($$ select public.release_job(%s, %L) $$, :spare, :'spare_token'),
  '42501', 'permission denied for function release_job',
  'a signed-in user cannot release a job, even with its token'
);

select * from finish();
rollback;
