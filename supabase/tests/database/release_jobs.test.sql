-- release_jobs: the unstarted rest of a claimed batch goes back to the queue in one
-- call, each job as release_job would put it back, one outcome per job.
begin;
select plan(9);

-- System jobs: no running cap keeps any of them out of the claim.
select count(*) from public.enqueue_jobs('[{"job_type": "system.noop"}, {"job_type": "system.noop"},
                                         {"job_type": "system.noop"}, {"job_type": "system.noop"}]');

create temporary table claimed on commit drop as
select j.id, j.lease_token, j.sort_at from public.claim_job_batch('w1', 4) j;

-- A cancel requested while the third job was claimed.
select public.cancel_job((select c.id from claimed c order by c.id offset 2 limit 1), 'no longer needed');

select public.release_jobs(jsonb_build_array(
  (select jsonb_build_object('job_id', c.id, 'lease_token', c.lease_token) from claimed c order by c.id offset 1 limit 1),
  (select jsonb_build_object('job_id', c.id, 'lease_token', c.lease_token) from claimed c order by c.id limit 1),
  (select jsonb_build_object('job_id', c.id, 'lease_token', c.lease_token) from claimed c order by c.id offset 2 limit 1),
  (select jsonb_build_object('job_id', c.id, 'lease_token', gen_random_uuid()) from claimed c order by c.id offset 3 limit 1),
  jsonb_build_object('job_id', 0, 'lease_token', gen_random_uuid())
)) as released \gset

select is(
  (select array_agg(e ->> 'outcome' order by o) from jsonb_array_elements(:'released'::jsonb) with ordinality x (e, o)),
  array['released', 'released', 'cancelled', 'lease_lost', 'not_found'],
  'one outcome per job in input order: released, cancelled on request, a wrong lease, a missing job'
);
select is(
  (select array_agg(j.status::text || '/' || j.attempt order by j.id) from public.jobs j where j.id in (select id from claimed)),
  array['queued/0', 'queued/0', 'cancelled/1', 'running/1'],
  'released jobs are queued with their attempt given back; the job under another lease runs on'
);
select is(
  (select count(*)::integer from public.jobs j
   where j.id in (select id from claimed) and j.status = 'queued'
     and j.lease_token is null and j.worker_id is null and j.first_started_at is null
     and j.sort_at = (select c.sort_at from claimed c where c.id = j.id)),
  2,
  'a released job has no lease or worker and keeps its place in the claim order'
);
select is(
  (select count(*)::integer from public.job_events e
   where e.job_id in (select id from claimed) and e.from_status = 'running' and e.details ->> 'released' = 'true'),
  3,
  'each released or cancelled job gets its event, marked released'
);
select is(
  (select array_agg(c.id order by c.id) from public.claim_job_batch('w2', 10) c),
  (select array_agg(c.id order by c.id) from (select id from claimed order by id limit 2) c),
  'the released jobs can be claimed again'
);
select throws_ok(
  (select format($$ select public.release_jobs('[{"job_id": %1$s, "lease_token": "%2$s"},
                                                 {"job_id": %1$s, "lease_token": "%2$s"}]') $$, c.id, c.lease_token)
   from claimed c order by c.id offset 3 limit 1),
  'EQ007', 'a job id is given twice',
  'a job given twice is refused'
);
select throws_ok(
  $$ select public.release_jobs('[{"job_id": "x", "lease_token": "y"}]') $$, 'EQ007', null,
  'a malformed entry is refused'
);
select is(public.release_jobs('[]'), '[]'::jsonb, 'an empty batch releases nothing');
select ok(
  not has_function_privilege('authenticated', 'public.release_jobs(jsonb)', 'execute')
    and has_function_privilege('service_role', 'public.release_jobs(jsonb)', 'execute'),
  'only the service role (the workers) may release jobs'
);

select * from finish();
rollback;
