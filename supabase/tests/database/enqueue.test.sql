-- enqueue_job: the job a user or the service adds, and every refusal: who may enqueue,
-- which job types, the payload, when it runs, its attempts, idempotency keys, parents
-- and the queued-job quota.
begin;
select plan(53);

\set free '00000000-0000-4000-8000-000000000001'
\set pro '00000000-0000-4000-8000-000000000002'
\set enterprise '00000000-0000-4000-8000-000000000003'
\set stranger '00000000-0000-4000-8000-0000000000ff'
\set as_free '{"sub": "00000000-0000-4000-8000-000000000001", "role": "authenticated"}'
\set as_pro '{"sub": "00000000-0000-4000-8000-000000000002", "role": "authenticated"}'
\set as_stranger '{"sub": "00000000-0000-4000-8000-0000000000ff", "role": "authenticated"}'
\set as_signed_out '{"role": "authenticated"}'
\set as_anon '{"role": "anon"}'
\set as_service '{"role": "service_role"}'

-- A free teacher ------------------------------------------------------------------

set local role authenticated;
select set_config('request.jwt.claims', :'as_free', true);

select id as free_job from public.enqueue_job('exam.grade', '{"exam": 1}') \gset
select id as delayed_job from public.enqueue_job('exam.grade', p_delay_seconds => 90) \gset
select id as later_job
from public.enqueue_job('exam.grade', p_run_at => now() + interval '2 hours') \gset
select id as past_job
from public.enqueue_job('exam.grade', p_run_at => now() - interval '1 day') \gset
select id as one_try_job from public.enqueue_job('exam.grade', p_max_attempts => 1) \gset
select id as null_payload_job from public.enqueue_job('exam.grade', null) \gset
select id as child_job from public.enqueue_job('exam.grade', p_parent_id => :free_job) \gset
select id as keyed_job from public.enqueue_job('exam.grade', p_idempotency_key => 'upload-42') \gset
select id as keyed_again
from public.enqueue_job('exam.grade', p_delay_seconds => 30, p_idempotency_key => 'upload-42') \gset
select throws_ok(
  $$ select public.enqueue_job('exam.grade', '{"other": true}', p_idempotency_key => 'upload-42') $$,
  'EQ009', null, 'a repeated idempotency key with another payload is refused');
select throws_ok(
  $$ select public.enqueue_job('exam.import', p_idempotency_key => 'upload-42') $$,
  'EQ009', null, 'a repeated idempotency key with another job type is refused');
select id as full_payload_job
from public.enqueue_job('exam.grade', jsonb_build_object('text', repeat('x', 262144 - 12))) \gset

reset role;
select set_config('request.jwt.claims', '', true);

select is(
  (select row(j.user_id, j.tier, j.status, j.attempt, j.max_attempts, j.payload, j.run_at,
              j.sort_at, j.lease_token, j.finished_at)::text
   from public.jobs j where j.id = :free_job),
  row(:'free'::uuid, 'free', 'queued'::public.job_status, 0, 3, '{"exam": 1}'::jsonb, now(), now(),
      null::uuid, null::timestamptz)::text,
  'a teacher''s job is queued for them, in their tier, '
  'with the tier''s attempts, to run now, without a lease'
);
select is(
  (select array_agg(row(e.user_id, e.actor, e.from_status, e.to_status, e.attempt)::text)
   from public.job_events e where e.job_id = :free_job),
  array[row(:'free'::uuid, 'user:' || :'free', null::public.job_status,
            'queued'::public.job_status, 0)::text],
  'enqueueing records one event, from nothing to queued, by the user'
);
select is(
  (select row(j.run_at, j.sort_at)::text from public.jobs j where j.id = :delayed_job),
  row(now() + interval '90 seconds', now() + interval '90 seconds')::text,
  'a delay in seconds sets run_at that far after now, and the free tier gets no head start'
);
select is(
  (select j.run_at from public.jobs j where j.id = :later_job), now() + interval '2 hours',
  'an explicit run_at is kept as given'
);
select is(
  (select row(j.run_at, j.sort_at)::text from public.jobs j where j.id = :past_job),
  row(now(), now())::text,
  'a run_at in the past (within a year) is accepted but means now: it cannot buy a place '
  'ahead of earlier jobs'
);
select is(
  (select array_agg(c.id order by c.ordinality) from public.claim_jobs('w1', 2) with ordinality c),
  array[:free_job, :past_job]::bigint[],
  'a job backdated by a day is claimed after a job of the same tier enqueued before it'
);
select is(
  (select j.max_attempts from public.jobs j where j.id = :one_try_job), 1,
  'a user may ask for fewer attempts than the tier''s default'
);
select is(
  (select j.payload from public.jobs j where j.id = :null_payload_job), '{}'::jsonb,
  'a null payload is stored as an empty object'
);
select is(
  (select j.parent_id from public.jobs j where j.id = :child_job), :free_job::bigint,
  'a user may name one of their own jobs as the parent'
);
select is(:keyed_again::bigint, :keyed_job::bigint,
  'enqueueing the same job again with its idempotency key returns the first job, '
  'whatever its scheduling options');
select is(
  (select row(count(*), min(j.payload::text))::text
   from public.jobs j where j.idempotency_key = 'upload-42'),
  row(1::bigint, '{}')::text,
  'the repeated enqueue neither adds a job nor changes the first one''s payload'
);
select is(
  (select count(*)::integer from public.job_events e where e.job_id = :keyed_job), 1,
  'the repeated enqueue records no event'
);
select is(
  (select octet_length(j.payload::text) from public.jobs j where j.id = :full_payload_job), 262144,
  'a payload of exactly the tier''s byte limit is accepted'
);

-- A pro teacher -------------------------------------------------------------------

set local role authenticated;
select set_config('request.jwt.claims', :'as_pro', true);

select id as pro_job from public.enqueue_job('exam.grade') \gset
select id as pro_keyed_job
from public.enqueue_job('exam.grade', p_idempotency_key => 'upload-42') \gset
select id as pro_noop_job from public.enqueue_job('system.noop') \gset

reset role;
select set_config('request.jwt.claims', '', true);

select is(
  (select row(j.tier, j.max_attempts, j.sort_at)::text from public.jobs j where j.id = :pro_job),
  row('pro', 5, now() - interval '60 seconds')::text,
  'a pro job gets the pro tier''s attempts and is ordered 60 seconds ahead of its run_at'
);
select isnt(:pro_keyed_job::bigint, :keyed_job::bigint,
  'idempotency keys are per user: another user''s job with the same key is a new job');
select is(
  (select j.job_type from public.jobs j where j.id = :pro_noop_job), 'system.noop',
  'a tier without a job type list may enqueue every registered type'
);

-- The service ---------------------------------------------------------------------

set local role service_role;
select set_config('request.jwt.claims', :'as_service', true);

select id as service_job from public.enqueue_job('exam.grade', p_user_id => :'enterprise') \gset
select id as system_job from public.enqueue_job('system.noop') \gset
select id as system_again
from public.enqueue_job('system.noop', p_idempotency_key => 'nightly') \gset
select id as system_again_2
from public.enqueue_job('system.noop', p_idempotency_key => 'nightly') \gset
select id as many_tries_job
from public.enqueue_job('exam.grade', p_user_id => :'free', p_max_attempts => 1000) \gset

reset role;
select set_config('request.jwt.claims', '', true);

select is(
  (select row(j.user_id, j.tier, j.max_attempts, j.sort_at)::text
   from public.jobs j where j.id = :service_job),
  row(:'enterprise'::uuid, 'enterprise', 8, now() - interval '180 seconds')::text,
  'the service enqueues for a user in that user''s tier, with its attempts and head start'
);
select is(
  (select e.actor from public.job_events e where e.job_id = :service_job), 'service',
  'a job the service enqueues is recorded as enqueued by the service'
);
select is(
  (select row(j.user_id, j.tier, j.max_attempts, j.sort_at)::text
   from public.jobs j where j.id = :system_job),
  row(null::uuid, 'system', 10, now() - interval '180 seconds')::text,
  'a job without an owner is a system job in the system tier'
);
select is(:system_again_2::bigint, :system_again::bigint,
  'idempotency keys also deduplicate system jobs, which have no owner');
select is(
  (select j.max_attempts from public.jobs j where j.id = :many_tries_job), 1000,
  'the service may give a job up to 1000 attempts, beyond the tier''s default'
);

-- Who may enqueue -----------------------------------------------------------------

set local role anon;
select set_config('request.jwt.claims', :'as_anon', true);
select throws_ok(
  $$ select public.enqueue_job('exam.grade') $$,
  '42501', 'permission denied for function enqueue_job',
  'the anon role may not call enqueue_job'
);

reset role;
set local role authenticated;
select set_config('request.jwt.claims', :'as_signed_out', true);
select throws_ok(
  $$ select public.enqueue_job('exam.grade') $$,
  '42501', 'sign in to enqueue jobs',
  'a request without a user is told to sign in'
);

select set_config('request.jwt.claims', :'as_free', true);
select throws_ok(
  format($$ select public.enqueue_job('exam.grade', p_user_id => %L) $$, :'pro'),
  '42501', 'users may enqueue jobs only for themselves',
  'a teacher cannot enqueue a job for another user'
);

select set_config('request.jwt.claims', :'as_stranger', true);
select throws_ok(
  $$ select public.enqueue_job('exam.grade') $$,
  'EQ007', format('no user with id %s', :'stranger'),
  'a signed-in id that has no auth user is refused'
);

select set_config('request.jwt.claims', '', true);
select throws_ok(
  format($$ select public.enqueue_job('exam.grade', p_user_id => %L) $$, :'pro'),
  '42501', null,
  'a session in the authenticated role that carries no JWT claims may not enqueue for another user'
);

-- Job types -----------------------------------------------------------------------

select set_config('request.jwt.claims', :'as_free', true);

select throws_ok(
  $$ select public.enqueue_job('exam.nope') $$,
  'EQ001', 'unknown job type ''exam.nope''',
  'an unregistered job type is refused as unknown'
);
select throws_ok(
  $$ select public.enqueue_job(null) $$,
  'EQ001', 'unknown job type NULL',
  'a missing job type is refused as unknown'
);
select throws_ok(
  $$ select public.enqueue_job('system.noop') $$,
  'EQ001', 'job type ''system.noop'' is not available in the free tier',
  'a registered type outside the tier''s list is refused, naming the tier'
);

-- Payload -------------------------------------------------------------------------

select throws_ok(
  $$ select public.enqueue_job('exam.grade', '[1, 2]') $$,
  'EQ007', 'payload must be a JSON object, not array',
  'a payload that is a JSON array is refused'
);
select throws_ok(
  $$ select public.enqueue_job('exam.grade', 'null'::jsonb) $$,
  'EQ007', 'payload must be a JSON object, not null',
  'a payload that is JSON null is refused'
);
select throws_ok(
  $$ select public.enqueue_job('exam.grade',
                               jsonb_build_object('text', repeat('x', 262144 - 11))) $$,
  'EQ002', 'payload is 262145 bytes; the free tier accepts at most 262144',
  'a payload one byte over the tier''s limit is refused, with its size and the limit'
);

-- When it runs --------------------------------------------------------------------

select throws_ok(
  $$ select public.enqueue_job('exam.grade', p_run_at => now(), p_delay_seconds => 5) $$,
  'EQ007', 'give either run_at or delay_seconds, not both',
  'run_at and delay_seconds together are refused'
);
select throws_ok(
  $$ select public.enqueue_job('exam.grade', p_delay_seconds => -1) $$,
  'EQ007', 'delay_seconds must be between 0 and 31536000, not -1',
  'a negative delay is refused'
);
select throws_ok(
  $$ select public.enqueue_job('exam.grade', p_delay_seconds => 31536001) $$,
  'EQ007', 'delay_seconds must be between 0 and 31536000, not 31536001',
  'a delay over a year is refused'
);
select throws_ok(
  $$ select public.enqueue_job('exam.grade', p_delay_seconds => 'NaN') $$,
  'EQ007', 'delay_seconds must be between 0 and 31536000, not NaN',
  'a delay that is not a number is refused'
);
select throws_ok(
  $$ select public.enqueue_job('exam.grade', p_run_at => now() + interval '367 days') $$,
  'EQ007', null,
  'a run_at more than a year ahead is refused as an invalid argument'
);
select throws_like(
  $$ select public.enqueue_job('exam.grade', p_run_at => now() - interval '367 days') $$,
  'run_at must be within a year of now, not %',
  'a run_at more than a year ago is refused, naming the value'
);

-- Attempts and keys ---------------------------------------------------------------

select throws_ok(
  $$ select public.enqueue_job('exam.grade', p_max_attempts => 4) $$,
  'EQ007', 'max_attempts must be between 1 and 3, not 4',
  'a user may not ask for more attempts than the tier''s default'
);
select throws_ok(
  $$ select public.enqueue_job('exam.grade', p_max_attempts => 0) $$,
  'EQ007', 'max_attempts must be between 1 and 3, not 0',
  'zero attempts are refused'
);
select throws_ok(
  $$ select public.enqueue_job('exam.grade', p_idempotency_key => '') $$,
  'EQ007', 'idempotency_key must be 1 to 200 characters',
  'an empty idempotency key is refused'
);
select throws_ok(
  $$ select public.enqueue_job('exam.grade', p_idempotency_key => repeat('k', 201)) $$,
  'EQ007', 'idempotency_key must be 1 to 200 characters',
  'an idempotency key over 200 characters is refused'
);

-- Parents -------------------------------------------------------------------------

select throws_ok(
  $$ select public.enqueue_job('exam.grade', p_parent_id => 999999999) $$,
  'EQ004', 'parent job 999999999 not found',
  'a parent that does not exist is not found'
);
select throws_ok(
  format($$ select public.enqueue_job('exam.grade', p_parent_id => %s) $$, :pro_job),
  'EQ004', format('parent job %s not found', :pro_job),
  'another user''s job cannot be a parent and is reported exactly like a missing one'
);

-- The service's own limits ---------------------------------------------------------

reset role;
set local role service_role;
select set_config('request.jwt.claims', :'as_service', true);

select throws_ok(
  $$ select public.enqueue_job('exam.grade', p_max_attempts => 1001) $$,
  'EQ007', 'max_attempts must be between 1 and 1000, not 1001',
  'even the service may not ask for more than 1000 attempts'
);
select throws_ok(
  format($$ select public.enqueue_job('exam.grade', p_user_id => %L) $$, :'stranger'),
  'EQ007', format('no user with id %s', :'stranger'),
  'the service cannot enqueue for a user that does not exist'
);
select throws_ok(
  format($$ select public.enqueue_job('system.noop', p_user_id => %L) $$, :'free'),
  'EQ001', 'job type ''system.noop'' is not available in the free tier',
  'the service enqueuing for a user is held to that user''s tier'
);

-- Quota ---------------------------------------------------------------------------

reset role;
select set_config('request.jwt.claims', '', true);
update public.jobs set status = 'cancelled', finished_at = now() where user_id = :'pro';
update public.tiers set max_queued_per_user = 2 where name = 'pro';

set local role authenticated;
select set_config('request.jwt.claims', :'as_pro', true);

select id as quota_1 from public.enqueue_job('exam.grade', p_idempotency_key => 'quota-1') \gset
select id as quota_2 from public.enqueue_job('exam.grade') \gset

select throws_ok(
  $$ select public.enqueue_job('exam.grade') $$,
  'EQ003', 'queued-job quota reached: the pro tier allows 2 queued jobs per user',
  'a user at the tier''s queued-job quota cannot enqueue more'
);
select is(
  (select id from public.enqueue_job('exam.grade', p_idempotency_key => 'quota-1')),
  :quota_1::bigint,
  'a repeated enqueue with a used idempotency key still returns its job at the quota'
);
select lives_ok(
  format($$ select public.cancel_job(%s) $$, :quota_2),
  'the user cancels one of their queued jobs'
);
select lives_ok(
  $$ select public.enqueue_job('exam.grade') $$,
  'a cancelled job no longer counts against the quota'
);

select * from finish();
rollback;
