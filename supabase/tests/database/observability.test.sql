-- queue_stats, prune_jobs and the Studio views: the figures they give, that row-level
-- security scopes them (a teacher's figures count only their jobs, an admin's all),
-- the bounds of their arguments, and retention deleting events with their jobs.
begin;
select plan(47);

\set free '00000000-0000-4000-8000-000000000001'
\set pro '00000000-0000-4000-8000-000000000002'
\set as_free '{"sub": "00000000-0000-4000-8000-000000000001", "role": "authenticated"}'
\set as_pro '{"sub": "00000000-0000-4000-8000-000000000002", "role": "authenticated"}'
\set as_enterprise '{"sub": "00000000-0000-4000-8000-000000000003", "role": "authenticated"}'
\set as_admin '{"sub": "00000000-0000-4000-8000-00000000000a", "role": "authenticated"}'
\set as_anon '{"role": "anon"}'
\set as_service '{"role": "service_role"}'

-- The free teacher has two queued jobs (one ready for 50 s), one running, one succeeded
-- and one dead; the pro teacher has one queued, one succeeded today and one 40 days ago.
-- Set up by the service with no claims; timestamps are then moved into the past.

select id as free_done from public.enqueue_job('exam.grade', p_user_id => :'free') \gset
select id as free_dead from public.enqueue_job('exam.grade', p_user_id => :'free') \gset
select id as pro_done from public.enqueue_job('exam.grade', p_user_id => :'pro') \gset
select id as pro_old from public.enqueue_job('exam.grade', p_user_id => :'pro') \gset
select count(*) from public.claim_jobs('w1', 10);
select public.complete_job(j.id, j.lease_token)
from public.jobs j where j.id in (:free_done, :pro_done, :pro_old);
select public.fail_job(j.id, j.lease_token, 'bad', 'permanent')
from public.jobs j where j.id = :free_dead;

select id as free_running from public.enqueue_job('exam.grade', p_user_id => :'free') \gset
select count(*) from public.claim_jobs('w1', 10);
select id as free_ready from public.enqueue_job('exam.grade', p_user_id => :'free') \gset
select id as free_later
from public.enqueue_job('exam.grade', p_user_id => :'free', p_delay_seconds => 3600) \gset
select id as pro_queued from public.enqueue_job('exam.grade', p_user_id => :'pro') \gset

update public.jobs
set created_at = now() - interval '100 seconds', first_started_at = now() - interval '40 seconds',
    started_at = now() - interval '40 seconds', finished_at = now() - interval '10 seconds'
where id = :free_done;
update public.jobs
set created_at = now() - interval '30 seconds', first_started_at = now() - interval '20 seconds',
    started_at = now() - interval '20 seconds', finished_at = now() - interval '5 seconds'
where id = :free_dead;
update public.jobs
set created_at = now() - interval '300 seconds', first_started_at = now() - interval '200 seconds',
    started_at = now() - interval '100 seconds', finished_at = now() - interval '20 seconds'
where id = :pro_done;
update public.jobs
set created_at = now() - interval '41 days', first_started_at = now() - interval '41 days',
    started_at = now() - interval '41 days', finished_at = now() - interval '40 days'
where id = :pro_old;
update public.jobs j
set run_at = now() - interval '50 seconds',
    sort_at = now() - interval '50 seconds' - make_interval(secs => t.head_start_seconds),
    created_at = now() - interval '50 seconds'
from public.tiers t
where j.id = :free_ready and t.name = j.tier;

-- queue_stats ---------------------------------------------------------------------------------

set local role service_role;
select set_config('request.jwt.claims', :'as_service', true);
select public.queue_stats() as service_stats \gset

select is(
  (select array_agg(k order by k) from jsonb_object_keys(:'service_stats'::jsonb) k),
  array['finished', 'generated_at', 'now', 'oldest_queued_seconds', 'queued_by_tier', 'run_seconds',
        'success_rate', 'throughput', 'wait_seconds', 'window_seconds'],
  'queue_stats returns the documented figures and no others'
);
select is(
  :'service_stats'::jsonb
    - array['generated_at', 'oldest_queued_seconds', 'wait_seconds', 'run_seconds', 'throughput'],
  jsonb_build_object(
    'window_seconds', 86400,
    'now', jsonb_build_object('queued', 3, 'running', 1),
    'queued_by_tier', jsonb_build_object('free', 2, 'pro', 1),
    'finished', jsonb_build_object('succeeded', 2, 'dead', 1),
    'success_rate', 0.6667),
  'the service''s figures count every user''s jobs: queued and '
  'running now, and finished in the last 24 hours'
);
select is(
  (:'service_stats'::jsonb ->> 'oldest_queued_seconds')::numeric, 50::numeric,
  'the oldest ready job has waited 50 s; a job scheduled for later does not count'
);
select is(
  (:'service_stats'::jsonb #>> '{wait_seconds,p50}')::numeric, 60::numeric,
  'the median wait from enqueue to first start is taken over jobs finished in the window'
);
select is(
  (:'service_stats'::jsonb #>> '{run_seconds,p50}')::numeric, 55::numeric,
  'the median run time is taken over succeeded jobs only'
);
select is(
  :'service_stats'::jsonb -> 'throughput',
  jsonb_build_array(
    jsonb_build_object('at', now() - interval '1 hour', 'succeeded', 2, 'failed', 1)),
  'throughput counts succeeded and dead jobs in hourly buckets aligned on the start of the window'
);

reset role;
set local role authenticated;
select set_config('request.jwt.claims', :'as_free', true);

select is(
  public.queue_stats()
    - array['generated_at', 'oldest_queued_seconds', 'wait_seconds', 'run_seconds', 'throughput',
                               'window_seconds'],
  jsonb_build_object(
    'now', jsonb_build_object('queued', 2, 'running', 1),
    'queued_by_tier', jsonb_build_object('free', 2),
    'finished', jsonb_build_object('succeeded', 1, 'dead', 1),
    'success_rate', 0.5),
  'a teacher''s figures count only their own jobs'
);
select is(
  public.queue_stats() -> 'throughput',
  jsonb_build_array(
    jsonb_build_object('at', now() - interval '1 hour', 'succeeded', 1, 'failed', 1)),
  'a teacher''s throughput counts only their own jobs'
);

select set_config('request.jwt.claims', :'as_enterprise', true);

select is(
  public.queue_stats() - array['generated_at', 'window_seconds', 'wait_seconds', 'run_seconds'],
  jsonb_build_object('now', '{}'::jsonb, 'queued_by_tier', '{}'::jsonb,
                     'oldest_queued_seconds', null,
                     'finished', '{}'::jsonb, 'success_rate', null, 'throughput', '[]'::jsonb),
  'a teacher without jobs gets empty figures, not an error'
);

select set_config('request.jwt.claims', :'as_admin', true);

select is(
  public.queue_stats() - 'generated_at',
  :'service_stats'::jsonb - 'generated_at',
  'an admin''s figures are the service''s: every job counts'
);

select throws_ok($$ select public.queue_stats(interval '59 seconds') $$,
  'EQ007', 'window must be between 1 minute and 31 days', 'a window under a minute is refused');
select throws_ok($$ select public.queue_stats(interval '32 days') $$,
  'EQ007', 'window must be between 1 minute and 31 days', 'a window over 31 days is refused');
select throws_ok($$ select public.queue_stats(null) $$,
  'EQ007', 'window must be between 1 minute and 31 days', 'a null window is refused');
select throws_ok($$ select public.queue_stats(interval '1 hour', interval '0 seconds') $$,
  'EQ007', 'bucket must be positive and make at most 1000 points', 'an empty bucket is refused');
select throws_ok($$ select public.queue_stats(interval '1 hour', interval '-1 minute') $$,
  'EQ007', 'bucket must be positive and make at most 1000 points', 'a negative bucket is refused');
select throws_ok($$ select public.queue_stats(interval '24 hours', interval '1 minute') $$,
  'EQ007', 'bucket must be positive and make at most 1000 points',
  'a bucket that makes 1440 points is refused');
select throws_ok($$ select public.queue_stats(interval '1 hour', null) $$,
  'EQ007', 'bucket must be positive and make at most 1000 points', 'a null bucket is refused');
select lives_ok($$ select public.queue_stats(interval '1000 minutes', interval '1 minute') $$,
  'a bucket that makes exactly 1000 points is accepted');
select throws_ok($$ select public.queue_stats(interval '31 days', interval '1 month') $$,
  'EQ007', null, 'a bucket measured in months is refused as an invalid argument');

reset role;
set local role anon;
select set_config('request.jwt.claims', :'as_anon', true);

select throws_ok(
  $$ select public.queue_stats() $$, '42501', 'permission denied for function queue_stats',
  'anonymous callers cannot read queue statistics');

-- Views -------------------------------------------------------------------------------------------

reset role;
set local role service_role;
select set_config('request.jwt.claims', :'as_service', true);

select is(
  (select array_agg(row(d.tier, d.job_type, d.queued, d.ready, d.running, d.oldest_ready_wait)::text
                    order by d.tier)
   from public.queue_depth d),
  array[row('free', 'exam.grade', 2::bigint, 1::bigint, 1::bigint, interval '50 seconds')::text,
        row('pro', 'exam.grade', 1::bigint, 1::bigint, 0::bigint, interval '0 seconds')::text],
  'queue_depth shows, per tier and type, jobs queued, '
  'ready and running, and the longest current wait'
);
select is(
  (select array_agg(d.id) from public.dead_letter_jobs d), array[:free_dead]::bigint[],
  'dead_letter_jobs lists the dead jobs'
);
select is(
  (select row(h.finished, h.succeeded, h.dead, h.failure_rate, h.p50_run_seconds)::text
   from public.job_type_health h where h.job_type = 'exam.grade'),
  row(3::bigint, 2::bigint, 1::bigint, 0.3333::numeric, 55::double precision)::text,
  'job_type_health counts the last 7 days per type, with the failure rate and median run time'
);

reset role;
set local role authenticated;
select set_config('request.jwt.claims', :'as_free', true);

select is(
  (select array_agg(row(d.tier, d.queued, d.running)::text) from public.queue_depth d),
  array[row('free', 2::bigint, 1::bigint)::text],
  'a teacher''s queue_depth counts only their own jobs'
);
select is(
  (select array_agg(d.id) from public.dead_letter_jobs d), array[:free_dead]::bigint[],
  'a teacher sees their own dead jobs'
);
select is(
  (select row(h.finished, h.succeeded, h.dead, h.failure_rate)::text from public.job_type_health h),
  row(2::bigint, 1::bigint, 1::bigint, 0.5000::numeric)::text,
  'a teacher''s job_type_health counts only their own jobs'
);

select set_config('request.jwt.claims', :'as_pro', true);

select is((select count(*)::integer from public.dead_letter_jobs), 0,
  'a teacher does not see another teacher''s dead jobs');
select is(
  (select array_agg(row(d.tier, d.queued, d.running)::text) from public.queue_depth d),
  array[row('pro', 1::bigint, 0::bigint)::text],
  'another teacher''s queue_depth shows only their jobs'
);

select set_config('request.jwt.claims', :'as_admin', true);

select is((select sum(d.queued)::integer from public.queue_depth d), 3,
  'an admin''s queue_depth counts every job');
select is((select count(*)::integer from public.dead_letter_jobs), 1,
  'an admin sees every dead job');
select is((select h.finished::integer from public.job_type_health h), 3,
  'an admin''s job_type_health counts every job');

-- prune_jobs --------------------------------------------------------------------------------------

reset role;
set local role service_role;
select set_config('request.jwt.claims', :'as_service', true);

select id as child
from public.enqueue_job('exam.grade', p_user_id => :'pro', p_parent_id => :pro_old) \gset

reset role;
update public.jobs set created_at = now() - interval '60 days' where id = :free_later;
set local role service_role;

select is(public.prune_jobs(), 0,
  'a job finished over 30 days ago is kept while a step after it has still to run');
select is(
  (select j.parent_id from public.jobs j where j.id = :child), :pro_old::bigint,
  'the unfinished step keeps its parent'
);

reset role;
update public.jobs set status = 'cancelled', finished_at = now() - interval '40 days' where id = :child;
set local role service_role;

select is(public.prune_jobs(), 2, 'once every step finished over 30 days ago, they go together');
select is(
  (select count(*)::integer from public.jobs j where j.id in (:pro_old, :child)), 0,
  'the old job is gone, with the step after it'
);
select is(
  (select count(*)::integer from public.job_events e where e.job_id = :pro_old), 0,
  'its events are deleted with it'
);
select is(
  (select count(*)::integer
   from public.jobs j where j.id in (:free_done, :free_dead, :pro_done, :free_later)), 4,
  'recently finished jobs and unfinished jobs, however old, are kept'
);

reset role;
update public.jobs set finished_at = now() - interval '50 days' where id = :free_done;
update public.jobs set finished_at = now() - interval '45 days' where id = :free_dead;
update public.jobs set finished_at = now() - interval '35 days' where id = :pro_done;
set local role service_role;

select is(public.prune_jobs(interval '30 days', 2), 2, 'prune_jobs deletes at most its limit');
select is(
  (select array_agg(j.id) from public.jobs j where j.id in (:free_done, :free_dead, :pro_done)),
  array[:pro_done]::bigint[],
  'it deletes the oldest finished jobs first'
);
select is(public.prune_jobs(interval '36 days'), 0,
  'a job finished more recently than older_than is kept');
select is(public.prune_jobs(interval '1 hour'), 1, 'the next call deletes what is left');

select throws_ok($$ select public.prune_jobs(interval '59 minutes') $$,
  'EQ007', 'older_than must be at least 1 hour', 'pruning jobs younger than an hour is refused');
select throws_ok($$ select public.prune_jobs(null) $$,
  'EQ007', 'older_than must be at least 1 hour', 'a null age is refused');
select throws_ok($$ select public.prune_jobs(interval '30 days', 0) $$,
  'EQ007', 'limit must be between 1 and 100000', 'a limit of 0 is refused');
select throws_ok($$ select public.prune_jobs(interval '30 days', 100001) $$,
  'EQ007', 'limit must be between 1 and 100000', 'a limit over 100000 is refused');
select throws_ok($$ select public.prune_jobs(interval '30 days', null) $$,
  'EQ007', 'limit must be between 1 and 100000', 'a null limit is refused');

reset role;
set local role authenticated;
select set_config('request.jwt.claims', :'as_admin', true);

select throws_ok(
  $$ select public.prune_jobs() $$, '42501', 'permission denied for function prune_jobs',
  'even an admin cannot prune through the API; only the service role can');

select * from finish();
rollback;
