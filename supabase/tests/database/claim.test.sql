-- claim_jobs: which ready jobs a worker gets and in what order (tier head start, run_at,
-- id), what a claim writes, how expired leases are taken back, the per-user running cap,
-- the job type filter, and the argument and role errors. Time passes by moving run_at
-- and lease_expires_at into the past, since now() is fixed within the transaction.
begin;
select plan(39);

\set free '00000000-0000-4000-8000-000000000001'
\set pro '00000000-0000-4000-8000-000000000002'
\set enterprise '00000000-0000-4000-8000-000000000003'
\set capless '00000000-0000-4000-8000-0000000000cc'
\set as_free '{"sub": "00000000-0000-4000-8000-000000000001", "role": "authenticated"}'
\set as_anon '{"role": "anon"}'
\set as_service '{"role": "service_role"}'

-- A user with no accounts row, who is in the free tier by default.
insert into auth.users (id, aud, role, email)
values (:'capless', 'authenticated', 'authenticated', 'no.account@example.com');

set local role service_role;
select set_config('request.jwt.claims', :'as_service', true);

-- Order: tier head start, then id ----------------------------------------------------

select id as ent_1 from public.enqueue_job('exam.grade', p_user_id => :'enterprise') \gset
select id as free_early from public.enqueue_job('exam.grade', p_user_id => :'free') \gset
select id as pro_now from public.enqueue_job('exam.grade', p_user_id => :'pro') \gset
select id as free_late from public.enqueue_job('exam.grade', p_user_id => :'free') \gset
select id as ent_2 from public.enqueue_job('exam.grade', p_user_id => :'enterprise') \gset

-- The free jobs were enqueued 61 s and 59 s ago.
update public.jobs j
set run_at = now() - v.ago,
    sort_at = now() - v.ago - make_interval(secs => t.head_start_seconds),
    created_at = now() - v.ago
from (values (:free_early, interval '61 seconds'), (:free_late, interval '59 seconds')) v (id, ago),
     public.tiers t
where j.id = v.id and t.name = j.tier;

select is(
  (select array_agg(c.id order by c.ordinality) from public.claim_jobs('w1', 10) with ordinality c),
  array[:ent_1, :ent_2, :free_early, :pro_now, :free_late]::bigint[],
  'jobs are claimed by run_at minus the tier''s head start, then by id: a pro job overtakes free '
  'jobs enqueued less than 60 s before it, not earlier ones'
);

select is(
  (select row(j.status, j.attempt, j.lease_expires_at, j.worker_id, j.started_at,
              j.first_started_at, j.progress)::text
   from public.jobs j where j.id = :ent_1),
  row('running'::public.job_status, 1, now() + interval '300 seconds', 'w1', now(), now(),
      0::numeric(5, 2))::text,
  'a claimed job is running, on its first attempt, '
  'leased to the worker for its type''s lease_seconds'
);
select is(
  (select count(distinct j.lease_token)::integer from public.jobs j where j.status = 'running'), 5,
  'every claimed job gets its own lease token'
);
select is(
  (select array_agg(row(e.actor, e.from_status, e.to_status, e.attempt)::text order by e.id)
   from public.job_events e where e.job_id = :ent_1),
  array[row('service', null::public.job_status, 'queued'::public.job_status, 0)::text,
        row('worker:w1', 'queued'::public.job_status, 'running'::public.job_status, 1)::text],
  'a claim records one event, from queued to running, by the worker, with the new attempt number'
);
select is(
  (select count(*)::integer from public.claim_jobs('w1', 10)), 0,
  'a claim with nothing ready returns no rows'
);

delete from public.jobs;

-- run_at and lease length -----------------------------------------------------------

select id as delayed
from public.enqueue_job('exam.grade', p_user_id => :'pro', p_delay_seconds => 60) \gset

select is(
  (select j.sort_at from public.jobs j where j.id = :delayed), now(),
  'a pro job delayed by 60 s has a sort key of now'
);
select is(
  (select count(*)::integer from public.claim_jobs('w1', 10)), 0,
  'a job whose run_at has not come is not claimed, even when its head start makes its sort key due'
);

update public.jobs
set run_at = now() - interval '1 second', sort_at = now() - interval '61 seconds'
where id = :delayed;

select is(
  (select array_agg(c.id) from public.claim_jobs('w1', 10, p_lease_seconds => 30) c),
  array[:delayed]::bigint[],
  'once its run_at has passed the job is claimed'
);
select is(
  (select j.lease_expires_at from public.jobs j where j.id = :delayed),
  now() + interval '30 seconds',
  'a claim may ask for a lease shorter than the job type''s'
);

delete from public.jobs;

-- Limit -------------------------------------------------------------------------------

select public.enqueue_job('system.noop') from generate_series(1, 5);

select is(
  (select count(*)::integer from public.claim_jobs('w1', 2)), 2,
  'a claim takes at most its limit'
);

delete from public.jobs;

-- Expired leases ------------------------------------------------------------------------

select id as x from public.enqueue_job('exam.grade', p_user_id => :'free') \gset
select id as y from public.enqueue_job('exam.grade', p_user_id => :'pro') \gset

-- x was enqueued 300 s ago, y 40 s ago.
update public.jobs j
set run_at = now() - v.ago,
    sort_at = now() - v.ago - make_interval(secs => t.head_start_seconds),
    created_at = now() - v.ago
from (values (:x, interval '300 seconds'), (:y, interval '40 seconds')) v (id, ago), public.tiers t
where j.id = v.id and t.name = j.tier;

select count(*) from public.claim_jobs('w1', 10);
select lease_token as x_token_1 from public.jobs where id = :x \gset
select id as z from public.enqueue_job('exam.grade', p_user_id => :'enterprise') \gset

-- z was enqueued 20 s ago.
update public.jobs j
set run_at = now() - interval '20 seconds',
    sort_at = now() - interval '20 seconds' - make_interval(secs => t.head_start_seconds),
    created_at = now() - interval '20 seconds'
from public.tiers t
where j.id = :z and t.name = j.tier;

-- y's lease expired before x's; x comes before z and z before y in claim order.
update public.jobs set lease_expires_at = now() - interval '2 seconds' where id = :y;
update public.jobs set lease_expires_at = now() - interval '1 second' where id = :x;

select is(
  (select array_agg(c.id order by c.ordinality) from public.claim_jobs('w2', 10) with ordinality c),
  array[:x, :z, :y]::bigint[],
  'jobs whose lease expired go back to '
  'their place in the claim order and are claimed with the queue'
);
select is(
  (select row(j.attempt, j.worker_id, j.lease_token <> :'x_token_1'::uuid, j.error_kind,
              j.last_error)::text
   from public.jobs j where j.id = :x),
  row(2, 'w2', true, 'lease_expired',
      'lease expired: the worker stopped responding during attempt 1')::text,
  'a reclaimed job starts its second attempt under a new token, and says its first lease expired'
);
select is(
  (select array_agg(row(e.actor, e.from_status, e.to_status, e.attempt)::text order by e.id)
   from public.job_events e where e.job_id = :x and e.from_status is not null),
  array[row('worker:w1', 'queued'::public.job_status, 'running'::public.job_status, 1)::text,
        row('system', 'running'::public.job_status, 'queued'::public.job_status, 1)::text,
        row('worker:w2', 'queued'::public.job_status, 'running'::public.job_status, 2)::text],
  'the expiry is recorded once, by the system, between the two claims'
);
select throws_ok(
  format($$ select public.complete_job(%s, %L) $$, :x, :'x_token_1'),
  'EQ005', format('lease lost on job %s: it is running under another lease or none', :x),
  'the worker whose lease expired can no longer complete the job'
);

delete from public.jobs;

-- Expiry of the last attempt, and of a job asked to stop ----------------------------------

select id as last_try from public.enqueue_job('system.noop', p_max_attempts => 1) \gset
select id as to_stop from public.enqueue_job('system.sleep', p_max_attempts => 2) \gset
select count(*) from public.claim_jobs('w1', 10);
select public.cancel_job(:to_stop);
update public.jobs set lease_expires_at = now() - interval '1 second';

select is(
  (select count(*)::integer from public.claim_jobs('w2', 10)), 0,
  'a job whose last attempt''s lease expired is not claimed again'
);
select is(
  (select row(j.status, j.error_kind, j.finished_at, j.lease_token, j.lease_expires_at,
              j.worker_id)::text
   from public.jobs j where j.id = :last_try),
  row('dead'::public.job_status, 'lease_expired', now(), null::uuid, null::timestamptz,
      null::text)::text,
  'it goes to the dead-letter queue, finished now, with its lease cleared'
);
select is(
  (select row(j.status, j.error_kind)::text from public.jobs j where j.id = :to_stop),
  row('cancelled'::public.job_status, 'cancelled')::text,
  'a job asked to stop whose lease expired ends cancelled, not queued again'
);

select count(*) from public.claim_jobs('w3', 10);

select is(
  (select count(*)::integer from public.job_events e
   where e.job_id = :last_try and e.to_status = 'dead'),
  1,
  'the move to dead is recorded exactly once, however many claims run afterwards'
);
select is(
  (select count(*)::integer from public.job_events e where e.job_id = :last_try), 3,
  'the dead job''s history is enqueue, claim and expiry, nothing more'
);

delete from public.jobs;

-- Per-user running cap --------------------------------------------------------------------

select id as free_1 from public.enqueue_job('exam.grade', p_user_id => :'free') \gset
select id as free_2 from public.enqueue_job('exam.grade', p_user_id => :'free') \gset
select id as free_3 from public.enqueue_job('exam.grade', p_user_id => :'free') \gset
select id as pro_1 from public.enqueue_job('exam.grade', p_user_id => :'pro') \gset

select is(
  (select array_agg(c.id order by c.ordinality) from public.claim_jobs('w1', 10) with ordinality c),
  array[:pro_1, :free_1, :free_2]::bigint[],
  'within one claim a free teacher gets at most 2 running jobs, and the rest of the batch goes on'
);
select is(
  (select j.status from public.jobs j where j.id = :free_3), 'queued'::public.job_status,
  'the teacher''s third job stays queued'
);
select is(
  (select count(*)::integer from public.claim_jobs('w1', 10)), 0,
  'a later claim does not exceed the cap either'
);

select public.complete_job(j.id, j.lease_token) from public.jobs j where j.id = :free_1;

select is(
  (select array_agg(c.id) from public.claim_jobs('w1', 10) c),
  array[:free_3]::bigint[],
  'once one of the teacher''s jobs finishes, their next job is claimed'
);

select public.enqueue_job('exam.grade', p_user_id => :'capless') from generate_series(1, 3);

select is(
  (select count(*)::integer from public.claim_jobs('w1', 10)), 2,
  'a user without an accounts row is capped like the free tier'
);

delete from public.jobs;

select public.enqueue_job('system.noop') from generate_series(1, 3);

select is(
  (select count(*)::integer from public.claim_jobs('w1', 10)), 3,
  'system jobs have no owner and no per-user cap'
);

delete from public.jobs;

-- Job type filter -------------------------------------------------------------------------

select id as grade_job from public.enqueue_job('exam.grade', p_user_id => :'pro') \gset
select id as noop_job from public.enqueue_job('system.noop') \gset

select is(
  (select count(*)::integer from public.claim_jobs('w1', 10, p_job_types => '{}')), 0,
  'an empty job type list claims nothing'
);
select is(
  (select array_agg(c.id) from public.claim_jobs('w1', 10, p_job_types => array['system.noop']) c),
  array[:noop_job]::bigint[],
  'a job type list claims only jobs of those types'
);
select is(
  (select j.status from public.jobs j where j.id = :grade_job), 'queued'::public.job_status,
  'jobs of other types stay queued'
);

-- Arguments -------------------------------------------------------------------------------

select throws_ok(
  $$ select public.claim_jobs(null) $$,
  'EQ007', 'worker_id must be 1 to 200 characters',
  'a claim without a worker id is refused'
);
select throws_ok(
  $$ select public.claim_jobs('') $$,
  'EQ007', 'worker_id must be 1 to 200 characters',
  'an empty worker id is refused'
);
select throws_ok(
  $$ select public.claim_jobs(repeat('w', 201)) $$,
  'EQ007', 'worker_id must be 1 to 200 characters',
  'a worker id over 200 characters is refused'
);
select throws_ok(
  $$ select public.claim_jobs('w1', 0) $$,
  'EQ007', 'limit must be between 1 and 1000, not 0',
  'a limit of 0 is refused'
);
select throws_ok(
  $$ select public.claim_jobs('w1', 1001) $$,
  'EQ007', 'limit must be between 1 and 1000, not 1001',
  'a limit over 1000 is refused'
);
select throws_ok(
  $$ select public.claim_jobs('w1', null) $$,
  'EQ007', null,
  'a null limit is refused as an invalid argument'
);
select throws_ok(
  $$ select public.claim_jobs('w1', 10, p_lease_seconds => 4) $$,
  'EQ007', 'lease_seconds must be between 5 and 86400, not 4',
  'a lease under 5 seconds is refused'
);
select throws_ok(
  $$ select public.claim_jobs('w1', 10, p_lease_seconds => 86401) $$,
  'EQ007', 'lease_seconds must be between 5 and 86400, not 86401',
  'a lease over a day is refused'
);
select is(
  (select j.status from public.jobs j where j.id = :grade_job), 'queued'::public.job_status,
  'a refused claim takes no job'
);

-- Roles -----------------------------------------------------------------------------------

reset role;
set local role authenticated;
select set_config('request.jwt.claims', :'as_free', true);
select throws_ok(
  $$ select public.claim_jobs('w1') $$,
  '42501', 'permission denied for function claim_jobs',
  'a signed-in user cannot claim jobs'
);

reset role;
set local role anon;
select set_config('request.jwt.claims', :'as_anon', true);
select throws_ok(
  $$ select public.claim_jobs('w1') $$,
  '42501', 'permission denied for function claim_jobs',
  'an anonymous caller cannot claim jobs'
);

select * from finish();
rollback;
