-- A repeated fail_job answers as the first call did, also when that call scheduled a
-- retry (which clears the lease), and changes nothing.
begin;
select plan(7);

select id as job from public.enqueue_job('system.noop', p_max_attempts => 3) \gset
select lease_token as token from public.claim_jobs('w1', 1) \gset

select public.fail_job(:job, :'token', 'timeout', 'retryable') as first \gset
select is(:'first'::jsonb ->> 'outcome', 'retry_scheduled', 'the first call schedules a retry');

select public.fail_job(:job, :'token', 'timeout', 'retryable') as again \gset
select is(:'again'::jsonb ->> 'outcome', 'retry_scheduled', 'a repeat answers retry_scheduled, not lease lost');
select is(:'again'::jsonb ->> 'run_at', :'first'::jsonb ->> 'run_at', 'with the same run_at');
select is(
  (select count(*)::integer from public.job_events e where e.job_id = :job and e.to_status = 'queued' and e.from_status = 'running'),
  1,
  'and no second retry is recorded'
);

-- The retry is claimed by another worker; the first worker's repeat changes nothing.
update public.jobs set run_at = now(), sort_at = now() where id = :job;
select lease_token as token2 from public.claim_jobs('w2', 1) \gset
select is(
  public.fail_job(:job, :'token', 'timeout', 'retryable') ->> 'status', 'running',
  'a late repeat reports the job as it is now'
);
select is(
  (select row(j.status, j.lease_token, j.attempt)::text from public.jobs j where j.id = :job),
  row('running'::public.job_status, :'token2'::uuid, 2)::text,
  'and leaves the other worker''s lease alone'
);

select throws_ok(
  format('select public.fail_job(%s, %L, %L)', :job, gen_random_uuid(), 'x'),
  'EQ005', null,
  'a token that never held the job is still a lost lease'
);

select * from finish();
rollback;
