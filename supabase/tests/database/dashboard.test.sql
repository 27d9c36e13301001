-- The dashboard's SQL: list_jobs (who sees what, filters, search, keyset paging,
-- arguments), bulk_requeue (admins only, skips what cannot be requeued), the realtime
-- publication and the replica identity that keeps a DELETE down to the primary key,
-- and the indexes the list and the overview rely on.
begin;
select plan(33);

\set free '00000000-0000-4000-8000-000000000001'
\set pro '00000000-0000-4000-8000-000000000002'
\set as_free '{"sub": "00000000-0000-4000-8000-000000000001", "role": "authenticated"}'
\set as_admin '{"sub": "00000000-0000-4000-8000-00000000000a", "role": "authenticated"}'
\set as_anon '{"role": "anon"}'
\set as_service '{"role": "service_role"}'

-- Three jobs of the free teacher (one succeeded, one running, one dead with an error),
-- two of the pro teacher (one running, one dead), enqueued by the service with no claims; created_at spread one hour apart so
-- that the order is known, and two of them given the same created_at so that the id
-- breaks the tie.

select id as free_a from public.enqueue_job('exam.grade', p_user_id => :'free') \gset
select id as free_b from public.enqueue_job('exam.grade', p_user_id => :'free') \gset
select id as free_dead from public.enqueue_job('exam.grade', p_user_id => :'free') \gset
select id as pro_a from public.enqueue_job('system.noop', p_user_id => :'pro') \gset
select id as pro_dead from public.enqueue_job('system.noop', p_user_id => :'pro') \gset

-- The free tier runs two jobs at a time: free_a finishes before free_dead is claimed.
select count(*) from public.claim_jobs('w1', 10, array['exam.grade', 'system.noop']);
select public.complete_job(j.id, j.lease_token) from public.jobs j where j.id = :free_a;
select count(*) from public.claim_jobs('w1', 10, array['exam.grade', 'system.noop']);
select public.fail_job(j.id, j.lease_token, 'responses.csv is missing item Q7 (50% of rows)', 'permanent')
from public.jobs j where j.id = :free_dead;
select public.fail_job(j.id, j.lease_token, 'storage bucket exams-pro is gone', 'permanent')
from public.jobs j where j.id = :pro_dead;

update public.jobs set created_at = now() - interval '5 hours' where id = :free_a;
update public.jobs set created_at = now() - interval '4 hours' where id = :free_b;
update public.jobs set created_at = now() - interval '3 hours' where id = :free_dead;
update public.jobs set created_at = now() - interval '2 hours' where id in (:pro_a, :pro_dead);

-- Realtime and replica identity -------------------------------------------------------

select ok(
  exists (select from pg_publication_tables where pubname = 'supabase_realtime'
          and schemaname = 'public' and tablename = 'jobs'),
  'jobs is in the supabase_realtime publication, so supabase-js hears its changes'
);
select ok(
  exists (select from pg_publication_tables where pubname = 'supabase_realtime'
          and schemaname = 'public' and tablename = 'job_events'),
  'job_events is in the supabase_realtime publication, for the live job history'
);
select is(
  (select relreplident::text from pg_class where oid = 'public.jobs'::regclass), 'd',
  'jobs keeps the default replica identity: a DELETE event carries only the primary key'
);
select is(
  (select relreplident::text from pg_class where oid = 'public.job_events'::regclass), 'd',
  'job_events keeps the default replica identity too'
);
select has_index('public', 'jobs', 'jobs_created_at_id_idx', array['created_at', 'id'],
  'the newest-first list has its keyset index');
select has_index('public', 'jobs', 'jobs_last_error_trgm_idx',
  'error text search has a trigram index');
select has_index('public', 'jobs', 'jobs_active_status_tier_idx',
  array['status', 'tier', 'job_type', 'run_at', 'user_id'],
  'queued and running jobs have a small index of their own');

-- list_jobs: who sees what -------------------------------------------------------------

set local role authenticated;
select set_config('request.jwt.claims', :'as_free', true);

select is(
  array(select id from public.list_jobs()),
  array[:free_dead, :free_b, :free_a]::bigint[],
  'a teacher lists their own jobs, newest first'
);
select is(
  array(select id from public.list_jobs(p_search => :'pro_a')),
  '{}'::bigint[],
  'a teacher cannot find another teacher''s job by its id'
);
select is(
  array(select id from public.list_jobs(p_tier => 'pro')),
  '{}'::bigint[],
  'nor by filtering on another tier'
);

select set_config('request.jwt.claims', :'as_admin', true);

select is(
  array(select id from public.list_jobs()),
  array[:pro_dead, :pro_a, :free_dead, :free_b, :free_a]::bigint[],
  'an admin lists every job, newest first, the larger id first among equal times'
);

-- list_jobs: filters and search --------------------------------------------------------

select is(
  array(select id from public.list_jobs(p_statuses => array['dead']::public.job_status[])),
  array[:pro_dead, :free_dead]::bigint[],
  'the status filter keeps dead jobs only'
);
select is(
  array(select id from public.list_jobs(p_job_type => 'system.noop')),
  array[:pro_dead, :pro_a]::bigint[],
  'the type filter keeps one job type'
);
select is(
  array(select id from public.list_jobs(p_tier => 'free')),
  array[:free_dead, :free_b, :free_a]::bigint[],
  'the tier filter keeps one tier'
);
select is(
  array(select id from public.list_jobs(p_created_from => now() - interval '4 hours 30 minutes',
                                        p_created_to => now() - interval '2 hours 30 minutes')),
  array[:free_dead, :free_b]::bigint[],
  'the date range keeps jobs created from its start, before its end'
);
select is(
  array(select id from public.list_jobs(p_search => '#' || :'free_b')),
  array[:free_b]::bigint[],
  'a number (with or without #) finds the job with that id'
);
select is(
  array(select id from public.list_jobs(p_search => 'EXAMS-PRO')),
  array[:pro_dead]::bigint[],
  'text finds jobs whose error contains it, ignoring case'
);
select is(
  array(select id from public.list_jobs(p_search => 'noop')),
  array[:pro_dead, :pro_a]::bigint[],
  'text also finds jobs whose type contains it'
);
select is(
  array(select id from public.list_jobs(p_search => '50%')),
  array[:free_dead]::bigint[],
  'a % in the search text matches a percent sign, not anything'
);
select is(
  array(select id from public.list_jobs(p_search => 'Q_')),
  '{}'::bigint[],
  'an _ in the search text matches an underscore, not any character'
);
select is(
  array(select id from public.list_jobs(p_statuses => array['dead']::public.job_status[], p_job_type => 'exam.grade')),
  array[:free_dead]::bigint[],
  'filters combine'
);

-- list_jobs: keyset paging ------------------------------------------------------------

select is(
  array(select id from public.list_jobs(p_limit => 2)),
  array[:pro_dead, :pro_a]::bigint[],
  'the first page holds the newest jobs'
);
select is(
  array(select l.id from public.jobs j, public.list_jobs(p_before_created_at => j.created_at,
                                                       p_before_id => j.id, p_limit => 2) l
        where j.id = :pro_a),
  array[:free_dead, :free_b]::bigint[],
  'the next page starts after the last row of the previous one'
);
select is(
  array(select l.id from public.jobs j, public.list_jobs(p_before_created_at => j.created_at,
                                                       p_before_id => j.id, p_limit => 2) l
        where j.id = :pro_dead),
  array[:pro_a, :free_dead]::bigint[],
  'a page boundary between two jobs created at the same time loses neither'
);
select throws_ok(
  $$ select * from public.list_jobs(p_before_id => 1) $$,
  'EQ007', 'give both before_created_at and before_id (the last row of the previous page), or neither',
  'half a cursor is refused'
);
select throws_ok(
  $$ select * from public.list_jobs(p_limit => 501) $$,
  'EQ007', 'limit must be between 1 and 500, not 501',
  'a page of more than 500 jobs is refused'
);

reset role;
set local role anon;
select set_config('request.jwt.claims', :'as_anon', true);

select throws_ok(
  $$ select * from public.list_jobs() $$, '42501', 'permission denied for function list_jobs',
  'anonymous callers cannot list jobs'
);

-- bulk_requeue ------------------------------------------------------------------------

reset role;
set local role authenticated;
select set_config('request.jwt.claims', :'as_free', true);

select throws_ok(
  format('select public.bulk_requeue(array[%s]::bigint[])', :free_dead),
  '42501', 'only admins may requeue jobs',
  'a teacher cannot requeue, not even their own dead job'
);

select set_config('request.jwt.claims', :'as_admin', true);

select is(
  public.bulk_requeue(array[:pro_dead, :free_b, 999999, :free_dead, :pro_dead]::bigint[]),
  jsonb_build_object(
    'requeued', jsonb_build_array(:free_dead, :pro_dead),
    'skipped', jsonb_build_array(
      jsonb_build_object('job_id', :free_b, 'code', 'EQ006',
                         'reason', format('job %s is running; only dead or cancelled jobs can be requeued', :free_b)),
      jsonb_build_object('job_id', 999999, 'code', 'EQ004', 'reason', 'job 999999 not found'))),
  'an admin requeues the dead jobs once each, in id order, and is told why the others were skipped'
);
select is(
  array(select status::text from public.jobs where id in (:free_dead, :pro_dead) order by id),
  array['queued', 'queued'],
  'the requeued jobs are queued again'
);
select is(
  (select count(*)::int from public.job_events where job_id in (:free_dead, :pro_dead)
     and from_status = 'dead' and to_status = 'queued' and actor = 'admin:' || '00000000-0000-4000-8000-00000000000a'),
  2,
  'each requeue is in the job''s history, by the admin'
);
select throws_ok(
  'select public.bulk_requeue(array(select generate_series(1, 1001))::bigint[])',
  'EQ007', 'give between 0 and 1000 job ids',
  'more than 1,000 ids at once are refused'
);
select is(
  public.bulk_requeue('{}'::bigint[]),
  '{"requeued": [], "skipped": []}'::jsonb,
  'an empty list requeues nothing'
);

select * from finish();
rollback;
