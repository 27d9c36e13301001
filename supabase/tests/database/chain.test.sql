-- Chains of jobs: waiting steps, promotion with the parent's result, failure and
-- cancellation down the chain (on every path, lease expiry included), requeue, quota
-- and row-level security.
begin;
select plan(43);

-- A three-step chain for the pro teacher, enqueued by the service.
create temporary table chain as
select (public.enqueue_chain(
  '[{"job_type": "system.noop", "payload": {"step": 1}},
    {"job_type": "system.noop", "payload": {"step": 2}},
    {"job_type": "system.noop", "payload": {"step": 3}, "max_attempts": 2}]'::jsonb,
  p_user_id => '00000000-0000-4000-8000-000000000002')) as c;

create temporary table ids as
select (x.value ->> 'id')::bigint as id, ordinality as step
from chain, jsonb_array_elements(c -> 'jobs') with ordinality as x(value, ordinality);

create function pg_temp.job(p_step integer) returns public.jobs language sql as $$
  select j.* from public.jobs j join ids i on i.id = j.id where i.step = p_step
$$;

-- Puts a queued job in the running state as a claim would, without going through
-- the claim order (which other tests' jobs would change).
create function pg_temp.start(p_id bigint) returns uuid language sql as $$
  update public.jobs
  set status = 'running', attempt = attempt + 1, lease_token = gen_random_uuid(),
      lease_expires_at = now() + interval '5 minutes', worker_id = 'test', started_at = now()
  where id = p_id and status = 'queued'
  returning lease_token
$$;

select is((select (c ->> 'chain_id')::bigint from chain), (select id from ids where step = 1),
  'enqueue_chain returns the first step as the chain id');
select is((select array_agg((pg_temp.job(s)).status order by s) from generate_series(1, 3) s),
  array['queued', 'waiting', 'waiting']::public.job_status[],
  'the first step is queued and the later steps wait');
select is((pg_temp.job(3)).parent_id, (pg_temp.job(2)).id, 'each step is the child of the step before it');
select is((pg_temp.job(3)).max_attempts, 2, 'a step keeps its own max_attempts');
select is((select count(*)::integer from public.job_events e join ids i on i.id = e.job_id where e.to_status = 'waiting'),
  2, 'each waiting step has its creation event');

-- Claims never take waiting jobs.
select is((select array_agg(j.id) from public.claim_jobs('w1', 10) j), array[(pg_temp.job(1)).id],
  'a claim takes the queued step and leaves the waiting ones');

select public.complete_job((pg_temp.job(1)).id, (pg_temp.job(1)).lease_token, '{"answer": 42}'::jsonb);
select is((pg_temp.job(2)).status, 'queued'::public.job_status, 'when a step succeeds its child is queued');
select is((pg_temp.job(2)).payload -> 'parent_result', '{"answer": 42}'::jsonb,
  'the child receives its parent''s result in its payload');
select is((pg_temp.job(2)).payload ->> 'step', '2', 'the child keeps its own payload');
select is((pg_temp.job(3)).status, 'waiting'::public.job_status, 'the grandchild still waits');
select ok(exists (select from public.job_events e where e.job_id = (pg_temp.job(2)).id
                  and e.from_status = 'waiting' and e.to_status = 'queued' and e.actor = 'system'),
  'the promotion is recorded as an event');

-- The second step fails for good: the third ends cancelled with the reason.
select pg_temp.start((pg_temp.job(2)).id);
select public.fail_job((pg_temp.job(2)).id, (pg_temp.job(2)).lease_token, 'bad exam file', 'permanent');
select is((pg_temp.job(2)).status, 'dead'::public.job_status, 'the failed step is dead');
select is((pg_temp.job(3)).status, 'cancelled'::public.job_status, 'the step after a failed one is cancelled');
select is((pg_temp.job(3)).last_error, format('parent job %s failed: bad exam file', (pg_temp.job(2)).id),
  'its reason names the failed parent and its error');
select ok((pg_temp.job(3)).finished_at is not null, 'the cancelled step is finished');
select ok(exists (select from public.job_events e where e.job_id = (pg_temp.job(3)).id and e.to_status = 'cancelled'
                  and e.error like 'parent job % failed: bad exam file'),
  'the cancellation is recorded as an event with the reason');

-- Requeuing the failed step resumes the chain.
select public.requeue_job((pg_temp.job(2)).id);
select is((pg_temp.job(3)).status, 'waiting'::public.job_status, 'requeuing the failed step makes its child wait again');
select ok((pg_temp.job(3)).last_error is null and (pg_temp.job(3)).finished_at is null,
  'the revived step has no error and is not finished');
select pg_temp.start((pg_temp.job(2)).id);
select public.complete_job((pg_temp.job(2)).id, (pg_temp.job(2)).lease_token, '{"ok": true}'::jsonb);
select is((pg_temp.job(3)).status, 'queued'::public.job_status, 'the resumed chain moves on when the step succeeds');

-- Lease expiry on the last attempt: the reclaim inside claim_jobs ends the chain too.
create temporary table chain2 as
select (public.enqueue_chain(
  '[{"job_type": "system.noop", "max_attempts": 1}, {"job_type": "system.noop"}]'::jsonb,
  p_user_id => '00000000-0000-4000-8000-000000000003')) as c;
create temporary table ids2 as
select (x.value ->> 'id')::bigint as id, ordinality as step from chain2, jsonb_array_elements(c -> 'jobs') with ordinality as x(value, ordinality);
select pg_temp.start((select id from ids2 where step = 1));
update public.jobs set lease_expires_at = now() - interval '1 second'
where id = (select id from ids2 where step = 1);
select public.claim_jobs('w2', 1, array['exam.report']);
select is((select status from public.jobs where id = (select id from ids2 where step = 1)), 'dead'::public.job_status,
  'an expired lease on the last attempt sends the step to dead');
select is((select status from public.jobs where id = (select id from ids2 where step = 2)), 'cancelled'::public.job_status,
  'and its waiting child is cancelled in the same claim');

-- Cancelling: a waiting job at once; a chain from its finished root.
create temporary table chain3 as
select (public.enqueue_chain(
  '[{"job_type": "system.noop"}, {"job_type": "system.noop"}, {"job_type": "system.noop"}]'::jsonb)) as c;
create temporary table ids3 as
select (x.value ->> 'id')::bigint as id, ordinality as step from chain3, jsonb_array_elements(c -> 'jobs') with ordinality as x(value, ordinality);
select is(public.cancel_job((select id from ids3 where step = 2)) ->> 'outcome', 'cancelled',
  'cancel_job cancels a waiting job at once');
select is((select status from public.jobs where id = (select id from ids3 where step = 3)), 'cancelled'::public.job_status,
  'and the steps waiting behind it');
select is((select last_error from public.jobs where id = (select id from ids3 where step = 3)),
  format('parent job %s was cancelled: cancelled on request', (select id from ids3 where step = 2)),
  'their reason names the cancelled parent');

create temporary table chain4 as
select (public.enqueue_chain('[{"job_type": "system.noop"}, {"job_type": "system.noop"}, {"job_type": "system.noop"}]'::jsonb)) as c;
create temporary table ids4 as
select (x.value ->> 'id')::bigint as id, ordinality as step from chain4, jsonb_array_elements(c -> 'jobs') with ordinality as x(value, ordinality);
select public.complete_job((select id from ids4 where step = 1), pg_temp.start((select id from ids4 where step = 1)), '{}'::jsonb);
select is(public.cancel_job((select id from ids4 where step = 1)) ->> 'outcome', 'chain_cancelled',
  'cancel_job on a finished root cancels what has not finished');
select is((select array_agg(status order by id) from public.jobs where id in (select id from ids4)),
  array['succeeded', 'cancelled', 'cancelled']::public.job_status[],
  'the root stays succeeded and the rest of the chain is cancelled');

-- A running step asked to stop that completes anyway stops the chain.
create temporary table chain5 as
select (public.enqueue_chain('[{"job_type": "system.noop"}, {"job_type": "system.noop"}]'::jsonb)) as c;
create temporary table ids5 as
select (x.value ->> 'id')::bigint as id, ordinality as step from chain5, jsonb_array_elements(c -> 'jobs') with ordinality as x(value, ordinality);
select pg_temp.start((select id from ids5 where step = 1));
select public.cancel_job((select id from ids5 where step = 1));
select public.complete_job(j.id, j.lease_token, '{}'::jsonb) from public.jobs j where j.id = (select id from ids5 where step = 1);
select is((select status from public.jobs where id = (select id from ids5 where step = 2)), 'cancelled'::public.job_status,
  'a step that finishes after a cancel request does not start the next one');

-- Row-level security, idempotency and quota, as teachers.
select set_config('test.chain_id', (select c ->> 'chain_id' from chain), true);
set local role authenticated;
select set_config('request.jwt.claims',
  '{"sub": "00000000-0000-4000-8000-000000000002", "role": "authenticated"}', true);
select is(jsonb_array_length(public.get_chain(current_setting('test.chain_id')::bigint) -> 'jobs'), 3,
  'get_chain returns the whole chain to its owner');

select set_config('request.jwt.claims',
  '{"sub": "00000000-0000-4000-8000-000000000001", "role": "authenticated"}', true);
select throws_ok(format('select public.get_chain(%s)', current_setting('test.chain_id')),
  'EQ004', null, 'another teacher cannot read the chain');
select is(
  (public.enqueue_chain('[{"job_type": "exam.pipeline"}, {"job_type": "exam.import"}]'::jsonb, 'k1') ->> 'chain_id'),
  (public.enqueue_chain('[{"job_type": "exam.pipeline"}, {"job_type": "exam.import"}]'::jsonb, 'k1') ->> 'chain_id'),
  'an idempotency key returns the same chain');
select is(
  (select count(*)::integer from public.jobs j
   where j.parent_id = (select k.id from public.jobs k where k.idempotency_key = 'k1')), 1,
  'the repeat, in the same transaction, adds no step');
select throws_ok(
  $$ select public.enqueue_chain('[{"job_type": "exam.pipeline"}, {"job_type": "exam.import", "payload": {"x": 2}}]'::jsonb, 'k1') $$,
  'EQ009', null, 'a repeat whose later step has another payload is refused');
select throws_ok(
  $$ select public.enqueue_chain('[{"job_type": "exam.pipeline"}, {"job_type": "exam.grade"}]'::jsonb, 'k1') $$,
  'EQ009', null, 'a repeat whose later step has another job type is refused');
select throws_ok(
  $$ select public.enqueue_chain('[{"job_type": "exam.pipeline"}, {"job_type": "exam.import"},
                                   {"job_type": "exam.report"}]'::jsonb, 'k1') $$,
  'EQ009', null, 'a repeat with another number of steps is refused');
select throws_ok(
  $$ select public.enqueue_chain('[{"job_type": "exam.pipeline"}, {"job_type": "system.sleep"}]'::jsonb) $$,
  'EQ001', null, 'every step must be a job type the tier allows');
select throws_ok(
  $$ select public.enqueue_chain('[{"job_type": "exam.pipeline", "max_attempts": 2.5}]'::jsonb) $$,
  'EQ007', 'step 1: max_attempts must be a whole number from 1 up, not 2.5',
  'a fractional max_attempts is refused naming the step');
select throws_ok(
  $$ select public.enqueue_chain('[{"job_type": "exam.pipeline"},
                                   {"job_type": "exam.import", "max_attempts": 1e12}]'::jsonb) $$,
  'EQ007', null, 'a max_attempts beyond an integer is refused, not cast');
select throws_ok(
  $$ select public.enqueue_chain('[{"job_type": "exam.pipeline", "max_attempts": "3"}]'::jsonb) $$,
  'EQ007', 'step 1: max_attempts must be a whole number from 1 up, not "3"',
  'a max_attempts given as text is refused');
select is(
  (public.enqueue_chain('[{"job_type": "exam.pipeline", "max_attempts": 2.0},
                          {"job_type": "exam.import", "max_attempts": 2.0}]'::jsonb) -> 'jobs' -> 1 ->> 'max_attempts'),
  '2', 'a whole number written with a fraction part is accepted');
select throws_ok(
  $$ select public.enqueue_chain('[{"job_type": "exam.pipeline"}]'::jsonb,
                                 p_user_id => '00000000-0000-4000-8000-000000000002') $$,
  '42501', null, 'a teacher cannot enqueue a chain for another user');

reset role;
update public.tiers set max_queued_per_user = 3 where name = 'free';
set local role authenticated;
select throws_ok(
  $$ select public.enqueue_chain('[{"job_type": "exam.pipeline"}, {"job_type": "exam.import"},
                                   {"job_type": "exam.grade"}, {"job_type": "exam.report"}]'::jsonb) $$,
  'EQ003', null, 'a chain needs a quota slot for each of its steps');

reset role;
select set_config('request.jwt.claims', '', true);
select public.enqueue_chain('[{"job_type": "system.noop"}, {"job_type": "system.noop"}]'::jsonb,
  p_user_id => '00000000-0000-4000-8000-000000000003');
select lives_ok($$ delete from auth.users where id = '00000000-0000-4000-8000-000000000003' $$,
  'deleting a teacher deletes their chains, waiting steps included');
select is((select count(*)::integer from public.jobs where user_id = '00000000-0000-4000-8000-000000000003'), 0,
  'no job of the deleted teacher is left');

select * from finish();
rollback;
