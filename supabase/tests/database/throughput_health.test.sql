-- The set-based calls and the health report: enqueue_jobs (many jobs, all or none,
-- with enqueue_job's rules), claim_job_batch (claim_jobs' order, caps and events),
-- complete_jobs (a compare-and-set per job, one outcome per job) and queue_health
-- (who may read it, and what it says).
begin;
select plan(35);

\set free '00000000-0000-4000-8000-000000000001'
\set pro '00000000-0000-4000-8000-000000000002'
\set as_free '{"sub": "00000000-0000-4000-8000-000000000001", "role": "authenticated"}'
\set as_admin '{"sub": "00000000-0000-4000-8000-00000000000a", "role": "authenticated"}'
\set as_anon '{"role": "anon"}'

-- enqueue_jobs ----------------------------------------------------------------------

select public.enqueue_jobs(jsonb_build_array(
  jsonb_build_object('job_type', 'exam.grade', 'user_id', :'free', 'payload', '{"n": 1}'::jsonb),
  jsonb_build_object('job_type', 'exam.grade', 'user_id', :'free', 'idempotency_key', 'k1'),
  jsonb_build_object('job_type', 'exam.grade', 'user_id', :'free', 'idempotency_key', 'k1'),
  jsonb_build_object('job_type', 'exam.grade', 'user_id', :'pro', 'delay_seconds', 60),
  jsonb_build_object('job_type', 'system.noop')
)) as batch \gset

select is(
  (select array_agg((e ->> 'created')::boolean order by o) from jsonb_array_elements(:'batch'::jsonb) with ordinality x (e, o)),
  array[true, true, false, true, true],
  'enqueue_jobs answers one entry per element; a repeated idempotency key is not created again'
);
select is(
  (:'batch'::jsonb -> 2 ->> 'job_id'), (:'batch'::jsonb -> 1 ->> 'job_id'),
  'an element repeating an earlier key of the same batch names that element''s job'
);
select ok(
  (select bool_and(a < b) from (
     select (e ->> 'job_id')::bigint as a, lead((e ->> 'job_id')::bigint) over (order by o) as b
     from jsonb_array_elements(:'batch'::jsonb) with ordinality x (e, o) where o <> 3) s where b is not null),
  'jobs get ids in input order, so jobs enqueued together are claimed in that order'
);
select is(
  (select array_agg(row(j.tier, j.user_id, j.status)::text order by j.id) from public.jobs j),
  array[row('free', :'free'::uuid, 'queued')::text, row('free', :'free'::uuid, 'queued')::text,
        row('pro', :'pro'::uuid, 'queued')::text, row('system', null::uuid, 'queued')::text],
  'each job is queued for its owner in the owner''s tier; no owner makes a system job'
);
select is(
  (select j.run_at - j.sort_at from public.jobs j where j.user_id = :'pro'),
  interval '60 seconds',
  'a batch job keeps its tier''s head start'
);
select is(
  (select count(*)::integer from public.job_events e where e.from_status is null and e.to_status = 'queued'),
  4,
  'every new job gets its queued event, a repeat none'
);
select throws_ok(
  $$ select public.enqueue_jobs('[{"job_type": "exam.grade"}, {"job_type": "exam.nope"}]') $$,
  'EQ001', 'job 2: unknown job type ''exam.nope''',
  'an unknown job type refuses the whole batch, naming the element'
);
select throws_ok(
  format($$ select public.enqueue_jobs('[{"job_type": "system.noop", "user_id": "%s"}]') $$, :'free'),
  'EQ001', null,
  'a job type the owner''s tier does not allow is refused'
);
select throws_ok(
  $$ select public.enqueue_jobs('[{"job_type": "exam.grade", "user_id": "not-a-uuid"}]') $$,
  'EQ007', null,
  'a malformed field is an invalid argument'
);
select throws_ok(
  $$ select public.enqueue_jobs('[{"job_type": "exam.grade", "payload": 3}]') $$,
  'EQ007', 'job 1: payload must be a JSON object, not number',
  'a payload that is not an object is refused'
);
select is((select count(*)::integer from public.jobs), 4, 'a refused batch adds nothing');

update public.tiers set max_queued_per_user = 3 where name = 'free';
select throws_ok(
  format($$ select public.enqueue_jobs('[{"job_type": "exam.grade", "user_id": "%1$s"},
                                        {"job_type": "exam.grade", "user_id": "%1$s"}]') $$, :'free'),
  'EQ003', null,
  'the queued-job quota counts the whole batch'
);
update public.tiers set max_queued_per_user = 100 where name = 'free';

set local role authenticated;
select set_config('request.jwt.claims', :'as_free', true);
select lives_ok(
  $$ select public.enqueue_jobs('[{"job_type": "exam.grade"}]') $$,
  'a signed-in user enqueues a batch for themselves'
);
select throws_ok(
  format($$ select public.enqueue_jobs('[{"job_type": "exam.grade", "user_id": "%s"}]') $$, :'pro'),
  '42501', null,
  'a user may not enqueue for someone else'
);
select set_config('request.jwt.claims', :'as_anon', true);
reset role;
set local role anon;
select throws_ok(
  $$ select public.enqueue_jobs('[{"job_type": "exam.grade"}]') $$,
  '42501', null,
  'anonymous callers cannot enqueue'
);
reset role;
select set_config('request.jwt.claims', '', true);

-- claim_job_batch -------------------------------------------------------------------

delete from public.jobs;
update public.tiers set max_running_per_user = 2 where name = 'free';
select public.enqueue_jobs((select jsonb_agg(jsonb_build_object('job_type', 'exam.grade', 'user_id', :'free'))
                            from generate_series(1, 4)));
select public.enqueue_jobs((select jsonb_agg(jsonb_build_object('job_type', 'exam.grade', 'user_id', :'pro'))
                            from generate_series(1, 3)));

create temporary table claimed on commit drop as
select * from public.claim_job_batch('w1', 10);

select is(
  (select array_agg(c.tier order by c.sort_at, c.id) from claimed c),
  array['pro', 'pro', 'pro', 'free', 'free'],
  'claim_job_batch claims in claim order and stops at the free user''s running cap of 2'
);
select is(
  (select count(*)::integer from claimed c where c.status = 'running' and c.lease_token is not null
     and c.attempt = 1 and c.worker_id = 'w1'),
  5,
  'each claimed job is running under a fresh lease of this worker, on its first attempt'
);
select is(
  (select count(*)::integer from public.job_events e where e.to_status = 'running' and e.actor = 'worker:w1'),
  5,
  'each claim writes its event'
);
select is(
  (select count(*)::integer from public.claim_job_batch('w2', 10)),
  0,
  'a second claim finds nothing: the free user is at the cap, the rest are running'
);
select throws_ok(
  $$ select public.claim_job_batch('w1', 0) $$, 'EQ007', null,
  'claim_job_batch checks its limit as claim_jobs does'
);

-- complete_jobs ---------------------------------------------------------------------

select public.complete_jobs(
  (select jsonb_agg(jsonb_build_object('job_id', c.id, 'lease_token', c.lease_token, 'result', '{"ok": 1}'::jsonb)
                    order by c.id)
   from (select * from claimed order by id limit 2) c)
) as done \gset

select is(
  (select array_agg(e ->> 'outcome') from jsonb_array_elements(:'done'::jsonb) e),
  array['completed', 'completed'],
  'complete_jobs completes each job under its lease'
);
select is(
  (select count(*)::integer from public.jobs j where j.status = 'succeeded' and j.result = '{"ok": 1}'
     and j.lease_expires_at is null and j.finished_at = now() and j.progress = 100),
  2,
  'completed jobs are succeeded with their result, finished now, without a lease expiry'
);
select is(
  (select count(*)::integer from public.job_events e where e.to_status = 'succeeded' and e.actor = 'worker:w1'),
  2,
  'each completion writes its event, naming the worker'
);

select public.complete_jobs(jsonb_build_array(
  (select jsonb_build_object('job_id', c.id, 'lease_token', c.lease_token) from claimed c order by c.id limit 1),
  (select jsonb_build_object('job_id', c.id, 'lease_token', gen_random_uuid()) from claimed c order by c.id offset 2 limit 1),
  jsonb_build_object('job_id', 0, 'lease_token', gen_random_uuid()),
  (select jsonb_build_object('job_id', c.id, 'lease_token', c.lease_token) from claimed c order by c.id offset 3 limit 1)
)) as mixed \gset

select is(
  (select array_agg(e ->> 'outcome' order by o) from jsonb_array_elements(:'mixed'::jsonb) with ordinality x (e, o)),
  array['already_completed', 'lease_lost', 'not_found', 'completed'],
  'one outcome per job in input order: a repeat, a wrong lease, a missing job, and a success'
);
select is(
  (select j.status::text from public.jobs j where j.id = (select c.id from claimed c order by c.id offset 2 limit 1)),
  'running',
  'a job presented with the wrong lease is left as it was'
);
select throws_ok(
  (select format($$ select public.complete_jobs('[{"job_id": %1$s, "lease_token": "%2$s"},
                                                  {"job_id": %1$s, "lease_token": "%2$s"}]') $$, c.id, c.lease_token)
   from claimed c order by c.id offset 4 limit 1),
  'EQ007', 'a job id is given twice',
  'a job given twice is refused'
);
select throws_ok(
  $$ select public.complete_jobs('{"job_id": 1}') $$, 'EQ007', null,
  'complete_jobs takes an array'
);
select is(public.complete_jobs('[]'), '[]'::jsonb, 'an empty batch completes nothing');

-- Lease expiry: the reclaim inside the next claim returns the job, and its old lease
-- can no longer complete it.
update public.jobs set lease_expires_at = now() - interval '1 second'
where id = (select c.id from claimed c order by c.id offset 4 limit 1);
select count(*) from public.claim_job_batch('w3', 1);
select is(
  (select public.complete_jobs(jsonb_build_array(jsonb_build_object('job_id', c.id, 'lease_token', c.lease_token)))
     -> 0 ->> 'outcome'
   from (select * from claimed order by id offset 4 limit 1) c),
  'lease_lost',
  'a job reclaimed after its lease expired cannot be completed under the old lease'
);

-- queue_health ----------------------------------------------------------------------

select is(
  (public.queue_health() ->> 'ok')::boolean, false,
  'without a successful cron tick the queue is not healthy'
);
select public.record_cron_tick('cron', '{}');
select is(
  (public.queue_health() -> 'problems'), '[]'::jsonb,
  'after a successful tick and with no old ready job, no problem is reported'
);
select is(
  (public.queue_health() -> 'failure_rate' ->> 'succeeded')::integer,
  (select count(*)::integer from public.jobs j where j.status = 'succeeded'),
  'the failure rate counts the jobs that finished in the window'
);

set local role authenticated;
select set_config('request.jwt.claims', :'as_free', true);
select throws_ok(
  $$ select public.queue_health() $$, '42501', null,
  'a teacher may not read the queue''s health'
);
select set_config('request.jwt.claims', :'as_admin', true);
select is(
  (select sum((t.value ->> 'running')::integer)::integer
   from jsonb_each(public.queue_health() -> 'queued_by_tier') t),
  2,
  'an admin reads the health of every user''s jobs'
);
reset role;
select set_config('request.jwt.claims', '', true);

select is(
  (select array_agg(p.proname::text order by p.proname) from pg_proc p
   where p.pronamespace = 'public'::regnamespace
     and p.proname in ('complete_jobs', 'claim_job_batch')
     and (has_function_privilege('authenticated', p.oid, 'execute')
          or has_function_privilege('anon', p.oid, 'execute'))),
  null::text[],
  'the worker calls are executable by the service role only'
);

select * from finish();
rollback;
