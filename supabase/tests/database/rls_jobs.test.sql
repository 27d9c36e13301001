-- Row-level security on jobs and job events, and get_job, for every kind of caller:
-- anonymous, the owner, another user, a request without a user, an admin and the
-- service role. Owners see their own jobs, admins see all, nobody but the queue
-- functions writes them.
begin;
select plan(35);

\set free '00000000-0000-4000-8000-000000000001'
\set pro '00000000-0000-4000-8000-000000000002'
\set as_free '{"sub": "00000000-0000-4000-8000-000000000001", "role": "authenticated"}'
\set as_pro '{"sub": "00000000-0000-4000-8000-000000000002", "role": "authenticated"}'
\set as_admin '{"sub": "00000000-0000-4000-8000-00000000000a", "role": "authenticated"}'
\set as_signed_out '{"role": "authenticated"}'
\set as_anon '{"role": "anon"}'
\set as_service '{"role": "service_role"}'

-- One job per teacher and a system job, enqueued by the service (no claims set); the
-- free teacher's job is claimed, so it has two events.
select id as free_job from public.enqueue_job('exam.grade', '{}'::jsonb, p_user_id => :'free') \gset
select count(*) from public.claim_jobs('w1', 1);
select id as pro_job from public.enqueue_job('exam.grade', '{}'::jsonb, p_user_id => :'pro') \gset
select id as system_job from public.enqueue_job('system.noop') \gset

-- The owner ------------------------------------------------------------------------------

set local role authenticated;
select set_config('request.jwt.claims', :'as_free', true);

select is((select count(*)::integer from public.jobs), 1, 'a teacher sees only their own jobs');
select is((select user_id from public.jobs), :'free'::uuid,
  'the job a teacher sees is their own');
select is(
  (select array_agg(distinct e.job_id) from public.job_events e), array[:free_job]::bigint[],
  'a teacher sees only the events of their own jobs'
);
select is((select count(*)::integer from public.job_events), 2,
  'a teacher sees every event of their own job');
select is((public.get_job(:free_job)).id, :free_job::bigint,
  'a teacher can read their own job with get_job');
select throws_ok(
  format($$ select public.get_job(%s) $$, :pro_job),
  'EQ004', format('job %s not found', :pro_job),
  'get_job reports another user''s job as not found'
);
select throws_ok(
  format($$ select public.get_job(%s) $$, :system_job),
  'EQ004', format('job %s not found', :system_job),
  'get_job reports a system job as not found to a teacher'
);
select throws_ok(
  $$ select public.get_job(999999999) $$,
  'EQ004', 'job 999999999 not found',
  'get_job reports a missing job as not found'
);
select throws_ok(
  $$ insert into public.jobs (job_type, tier, sort_at, max_attempts)
     values ('exam.grade', 'free', now(), 3) $$,
  '42501', 'permission denied for table jobs',
  'a teacher cannot insert jobs directly'
);
select throws_ok(
  format($$ update public.jobs set status = 'succeeded' where id = %s $$, :free_job),
  '42501', 'permission denied for table jobs',
  'a teacher cannot update their own job directly'
);
select throws_ok(
  format($$ delete from public.jobs where id = %s $$, :free_job),
  '42501', 'permission denied for table jobs',
  'a teacher cannot delete their own job'
);
select throws_ok(
  format($$ insert into public.job_events (job_id, actor, to_status, attempt)
            values (%s, 'x', 'queued', 0) $$, :free_job),
  '42501', 'permission denied for table job_events',
  'a teacher cannot write job events'
);
select throws_ok(
  format($$ select public.enqueue_job('exam.grade', '{}'::jsonb, p_user_id => %L) $$, :'pro'),
  '42501', 'users may enqueue jobs only for themselves',
  'a teacher cannot enqueue for another user'
);

-- Another user ----------------------------------------------------------------------------

select set_config('request.jwt.claims', :'as_pro', true);

select is(
  (select array_agg(j.id) from public.jobs j), array[:pro_job]::bigint[],
  'another teacher sees their own job and not the first teacher''s'
);
select is(
  (select count(*)::integer from public.job_events e where e.job_id = :free_job), 0,
  'another teacher sees none of the first teacher''s job events'
);

-- A request without a user ---------------------------------------------------------------

select set_config('request.jwt.claims', :'as_signed_out', true);

select is((select count(*)::integer from public.jobs), 0,
  'the authenticated role without a user id sees no jobs');
select is((select count(*)::integer from public.job_events), 0,
  'the authenticated role without a user id sees no job events');

-- An admin ----------------------------------------------------------------------------------

select set_config('request.jwt.claims', :'as_admin', true);

select is((select count(*)::integer from public.jobs), 3,
  'an admin sees every job, system jobs included');
select is((select count(*)::integer from public.job_events), 4, 'an admin sees every job event');
select is((public.get_job(:system_job)).id, :system_job::bigint,
  'an admin can read any job with get_job');
select throws_ok(
  format($$ update public.jobs set status = 'succeeded' where id = %s $$, :pro_job),
  '42501', 'permission denied for table jobs',
  'an admin cannot update jobs directly either'
);
select throws_ok(
  format($$ delete from public.job_events where job_id = %s $$, :pro_job),
  '42501', 'permission denied for table job_events',
  'an admin cannot delete job history'
);

-- The service role ---------------------------------------------------------------------------

reset role;
set local role service_role;
select set_config('request.jwt.claims', :'as_service', true);

select is((select count(*)::integer from public.jobs), 3, 'the service role sees every job');
select is((select count(*)::integer from public.job_events), 4,
  'the service role sees every job event');
select is((public.get_job(:pro_job)).id, :pro_job::bigint,
  'the service role can read any job with get_job');
select throws_ok(
  $$ select public.get_job(999999999) $$,
  'EQ004', 'job 999999999 not found',
  'get_job reports a missing job as not found to the service role too'
);

-- Anonymous callers ----------------------------------------------------------------------------

reset role;
set local role anon;
select set_config('request.jwt.claims', :'as_anon', true);

select throws_ok(
  $$ select count(*) from public.jobs $$, '42501', 'permission denied for table jobs',
  'anonymous callers cannot read jobs');
select throws_ok(
  $$ select count(*) from public.job_events $$, '42501', 'permission denied for table job_events',
  'anonymous callers cannot read job events');
select throws_ok(
  format($$ select public.get_job(%s) $$, :free_job),
  '42501', 'permission denied for function get_job',
  'anonymous callers cannot call get_job'
);
select throws_ok(
  $$ select public.enqueue_job('exam.grade', '{}'::jsonb) $$, '42501', null,
  'anonymous callers cannot enqueue jobs'
);
select throws_ok(
  $$ select * from public.queue_depth $$, '42501', 'permission denied for view queue_depth',
  'anonymous callers cannot read the queue depth view'
);
select throws_ok(
  $$ select * from public.dead_letter_jobs $$,
  '42501', 'permission denied for view dead_letter_jobs',
  'anonymous callers cannot read the dead-letter view'
);
select throws_ok(
  $$ select * from public.job_type_health $$, '42501', 'permission denied for view job_type_health',
  'anonymous callers cannot read the job type health view'
);

reset role;

select is(
  (select row(j.status, j.user_id)::text from public.jobs j where j.id = :free_job),
  row('running'::public.job_status, :'free'::uuid)::text,
  'none of the refused writes changed the teacher''s job'
);
select is((select count(*)::integer from public.job_events), 4,
  'none of the refused writes changed the history');

select * from finish();
rollback;
