-- Results do not depend on the session TimeZone: enqueue, claim, heartbeat, fail, lease
-- expiry, queue_stats and prune_jobs are run under Pacific/Kiritimati (UTC+14, no daylight
-- saving) and America/Adak (UTC-10, with daylight saving), and their times and order must
-- be the same instants as in UTC.
begin;
select plan(18);

\set free '00000000-0000-4000-8000-000000000001'
\set pro '00000000-0000-4000-8000-000000000002'
\set as_service '{"role": "service_role"}'

set local role service_role;
select set_config('request.jwt.claims', :'as_service', true);

-- enqueue_job ---------------------------------------------------------------------------------

set local timezone = 'Pacific/Kiritimati';
select id as delayed_k
from public.enqueue_job('exam.grade', p_user_id => :'pro', p_delay_seconds => 3600) \gset
set local timezone = 'America/Adak';
select id as delayed_a
from public.enqueue_job('exam.grade', p_user_id => :'pro', p_delay_seconds => 3600) \gset
set local timezone = 'UTC';

select is(
  (select array_agg(row(j.run_at, j.sort_at)::text order by j.id)
   from public.jobs j where j.id in (:delayed_k, :delayed_a)),
  array[row(now() + interval '3600 seconds', now() + interval '3540 seconds')::text,
        row(now() + interval '3600 seconds', now() + interval '3540 seconds')::text],
  'a delay and a tier''s head start give the same instants in a zone 14 hours ahead and '
  'one 10 hours behind'
);

set local timezone = 'America/Adak';

select lives_ok(
  $$ select public.enqueue_job('exam.grade', p_user_id => '00000000-0000-4000-8000-000000000002',
                               p_run_at => now() + interval '365 days') $$,
  'a run_at 365 days ahead is within a year of now in a zone with daylight saving'
);

reset role;
delete from public.jobs where run_at > now() + interval '2 hours';
set local role service_role;

-- claim_jobs ------------------------------------------------------------------------------------

set local timezone = 'Pacific/Kiritimati';
select id as free_early from public.enqueue_job('exam.grade', p_user_id => :'free') \gset
set local timezone = 'America/Adak';
select id as pro_now from public.enqueue_job('exam.grade', p_user_id => :'pro') \gset
select id as free_late from public.enqueue_job('exam.grade', p_user_id => :'free') \gset

-- The free jobs were enqueued 61 s and 59 s ago, their times moved back in each zone.
reset role;
set local timezone = 'Pacific/Kiritimati';
update public.jobs j
set run_at = now() - interval '61 seconds',
    sort_at = now() - interval '61 seconds' - make_interval(secs => t.head_start_seconds),
    created_at = now() - interval '61 seconds'
from public.tiers t
where j.id = :free_early and t.name = j.tier;
set local timezone = 'America/Adak';
update public.jobs j
set run_at = now() - interval '59 seconds',
    sort_at = now() - interval '59 seconds' - make_interval(secs => t.head_start_seconds),
    created_at = now() - interval '59 seconds'
from public.tiers t
where j.id = :free_late and t.name = j.tier;
set local role service_role;
set local timezone = 'Pacific/Kiritimati';

select is(
  (select array_agg(c.id order by c.ordinality) from public.claim_jobs('w1', 10) with ordinality c),
  array[:free_early, :pro_now, :free_late]::bigint[],
  'jobs enqueued in different zones are claimed in the order of their instants and head starts'
);
select is(
  (select array_agg(j.lease_expires_at) from public.jobs j where j.id = :pro_now),
  array[now() + interval '300 seconds'],
  'a lease claimed in a zone 14 hours ahead ends lease_seconds after now'
);

-- heartbeat_job and fail_job ------------------------------------------------------------------

reset role;
update public.jobs set started_at = now() - interval '60 seconds' where id = :pro_now;
set local role service_role;
set local timezone = 'Pacific/Kiritimati';

select is(
  (select (public.heartbeat_job(j.id, j.lease_token, 25) ->> 'eta_at')::timestamptz
   from public.jobs j where j.id = :pro_now),
  now() + interval '180 seconds',
  'the ETA is the same instant in a zone 14 hours ahead'
);

set local timezone = 'America/Adak';
select public.fail_job(j.id, j.lease_token, 'timeout') ->> 'run_at' as retry_at_text
from public.jobs j where j.id = :free_early \gset
set local timezone = 'Pacific/Kiritimati';

select ok(
  (select j.run_at between now() + interval '10 seconds' and now() + interval '20 seconds'
   from public.jobs j where j.id = :free_early),
  'a retry scheduled in a zone 10 hours behind waits the base delay from now'
);
select is(
  (select j.sort_at from public.jobs j where j.id = :free_early),
  (select j.run_at from public.jobs j where j.id = :free_early),
  'the retry''s sort key is its run_at minus the free tier''s zero head start'
);
select ok(
  :'retry_at_text' ~ '[+-]\d\d:\d\d$',
  'fail_job reports run_at with its UTC offset, so no reader has to guess the zone'
);
select is(
  :'retry_at_text'::timestamptz,
  (select j.run_at from public.jobs j where j.id = :free_early),
  'the run_at reported in one zone is the stored instant when read in another'
);

-- Lease expiry ----------------------------------------------------------------------------------

reset role;
update public.jobs set lease_expires_at = now() - interval '1 second' where id = :pro_now;
set local role service_role;
set local timezone = 'America/Adak';

select is(
  (select array_agg(c.id) from public.claim_jobs('w2', 10) c),
  array[:pro_now]::bigint[],
  'a lease that expired one second ago is taken back in a zone 10 hours behind'
);
select is(
  (select j.attempt from public.jobs j where j.id = :pro_now), 2,
  'the job taken back starts its second attempt'
);

-- queue_stats ----------------------------------------------------------------------------------

select public.complete_job(j.id, j.lease_token)
from public.jobs j where j.id in (:free_late, :pro_now);

reset role;
update public.jobs set finished_at = now() - interval '1 hour' where id in (:free_late, :pro_now);
set local role service_role;

set local timezone = 'Pacific/Kiritimati';
select public.queue_stats(interval '7 days', interval '1 day') as stats_k \gset
set local timezone = 'America/Adak';
select public.queue_stats(interval '7 days', interval '1 day') as stats_a \gset
set local timezone = 'UTC';

select is(
  :'stats_k'::jsonb - array['generated_at', 'throughput'],
  :'stats_a'::jsonb - array['generated_at', 'throughput'],
  'queue_stats counts the same jobs and durations in both zones'
);
select is(
  (:'stats_k'::jsonb ->> 'generated_at')::timestamptz,
  (:'stats_a'::jsonb ->> 'generated_at')::timestamptz,
  'queue_stats reports the same generation instant in both zones'
);
select is(
  (select array_agg(row((b ->> 'at')::timestamptz, b -> 'succeeded', b -> 'failed')::text)
   from jsonb_array_elements(:'stats_k'::jsonb -> 'throughput') b),
  (select array_agg(row((b ->> 'at')::timestamptz, b -> 'succeeded', b -> 'failed')::text)
   from jsonb_array_elements(:'stats_a'::jsonb -> 'throughput') b),
  'daily throughput buckets start at the same instants in both zones, not at local midnights'
);
select is(
  (select array_agg((b ->> 'at')::timestamptz)
   from jsonb_array_elements(:'stats_a'::jsonb -> 'throughput') b),
  array[now() - interval '24 hours'],
  'the last daily bucket starts 24 hours before now, counted from the start of the window'
);

-- prune_jobs across a daylight saving change ------------------------------------------------------

-- The smallest number of days d for which d days before now is not d * 24 hours before
-- now in America/Adak: a day of that span is 23 or 25 hours long there. Two jobs finished
-- 30 minutes either side of now() - d * 24 hours.
set local timezone = 'America/Adak';
select min(d) as dst_days from generate_series(1, 400) d
where now() - make_interval(days => d) <> now() - make_interval(hours => 24 * d) \gset

select id as before_cutoff from public.enqueue_job('system.noop') \gset
select id as after_cutoff from public.enqueue_job('system.noop') \gset
select count(*) from public.claim_jobs('w3', 10, p_job_types => array['system.noop']);
select public.complete_job(j.id, j.lease_token)
  from public.jobs j where j.id in (:before_cutoff, :after_cutoff);

reset role;
update public.jobs
set finished_at = now() - make_interval(hours => 24 * :dst_days) - interval '30 minutes'
where id = :before_cutoff;
update public.jobs
set finished_at = now() - make_interval(hours => 24 * :dst_days) + interval '30 minutes'
where id = :after_cutoff;
set local role service_role;

select ok(:dst_days between 1 and 366,
  'America/Adak changes to or from daylight saving within a year');

-- Each zone prunes in a savepoint that is rolled back, so both see the same two jobs;
-- psql keeps the counts.
savepoint before_prune;
set local timezone = 'Pacific/Kiritimati';
select public.prune_jobs(make_interval(days => :dst_days)) as pruned_in_kiritimati \gset
rollback to savepoint before_prune;

savepoint before_prune;
set local timezone = 'America/Adak';
select public.prune_jobs(make_interval(days => :dst_days)) as pruned_in_adak \gset
rollback to savepoint before_prune;

select is(:pruned_in_kiritimati, 1,
  'in a zone without daylight saving, '
  'prune_jobs deletes the job finished before the cutoff and keeps the other');
select is(:pruned_in_adak, 1,
  'in a zone with daylight saving, prune_jobs deletes the same job: a day of age is 24 hours');

select * from finish();
rollback;
