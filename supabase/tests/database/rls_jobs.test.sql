-- Row-level security on jobs: owners see their own jobs, admins see all, others none.
begin;
select plan(6);

-- Two jobs, one per teacher, enqueued by the service (no claims set).
select public.enqueue_job('exam.grade', '{}'::jsonb, p_user_id => '00000000-0000-4000-8000-000000000001');
select public.enqueue_job('exam.grade', '{}'::jsonb, p_user_id => '00000000-0000-4000-8000-000000000002');

set local role authenticated;
select set_config('request.jwt.claims',
  '{"sub": "00000000-0000-4000-8000-000000000001", "role": "authenticated"}', true);

select is((select count(*)::integer from public.jobs), 1, 'a teacher sees only their own jobs');
select is((select user_id from public.jobs), '00000000-0000-4000-8000-000000000001'::uuid,
  'the job a teacher sees is their own');
select throws_ok(
  $$ select public.enqueue_job('exam.grade', '{}'::jsonb, p_user_id => '00000000-0000-4000-8000-000000000002') $$,
  '42501', 'users may enqueue jobs only for themselves',
  'a teacher cannot enqueue for another user'
);

select set_config('request.jwt.claims',
  '{"sub": "00000000-0000-4000-8000-00000000000a", "role": "authenticated"}', true);
select is((select count(*)::integer from public.jobs), 2, 'an admin sees every job');

reset role;
set local role anon;
select set_config('request.jwt.claims', '{"role": "anon"}', true);
select throws_ok($$ select count(*) from public.jobs $$, '42501', null,
  'anonymous callers cannot read jobs');
select throws_ok(
  $$ select public.enqueue_job('exam.grade', '{}'::jsonb) $$, '42501', null,
  'anonymous callers cannot enqueue jobs'
);

select * from finish();
rollback;
