-- Requeuing one step of a chain: it waits for a parent still to run, gets the result
-- of a parent that succeeded, and is refused while its parent is dead or cancelled.
begin;
select plan(10);

create temporary table ids as
select (x.value ->> 'id')::bigint as id, ordinality as step
from (select public.enqueue_chain(
        '[{"job_type": "system.noop", "payload": {"step": 1}},
          {"job_type": "system.noop", "payload": {"step": 2}},
          {"job_type": "system.noop", "payload": {"step": 3}}]'::jsonb,
        p_user_id => '00000000-0000-4000-8000-000000000002') as c) chain,
     jsonb_array_elements(c -> 'jobs') with ordinality as x(value, ordinality);

create function pg_temp.job(p_step integer) returns public.jobs language sql as $$
  select j.* from public.jobs j join ids i on i.id = j.id where i.step = p_step
$$;

create function pg_temp.start(p_id bigint) returns uuid language sql as $$
  update public.jobs
  set status = 'running', attempt = attempt + 1, lease_token = gen_random_uuid(),
      lease_expires_at = now() + interval '5 minutes', worker_id = 'test', started_at = now()
  where id = p_id and status = 'queued'
  returning lease_token
$$;

-- Step 2 cancelled while step 1 is still queued (step 3 ends with it).
select public.cancel_job((pg_temp.job(2)).id, 'wrong file');

select is(
  public.requeue_job((pg_temp.job(2)).id) ->> 'status', 'waiting',
  'a step requeued while its parent has not run yet waits for it'
);
select is((pg_temp.job(2)).status, 'waiting'::public.job_status, 'it is waiting, not queued');
select is((pg_temp.job(3)).status, 'waiting'::public.job_status,
  'the step its cancel had ended waits again too');
select is(
  (select array_agg(j.id) from public.claim_jobs('w', 10) j where j.id in (select id from ids)),
  array[(pg_temp.job(1)).id],
  'a claim takes the parent only'
);

-- Step 1 succeeds: step 2 moves on with its result, as the chain would have moved it.
select public.complete_job((pg_temp.job(1)).id, (pg_temp.job(1)).lease_token, '{"graded": 25}');
select is((pg_temp.job(2)).status, 'queued'::public.job_status, 'the waiting step is queued when its parent succeeds');
select is((pg_temp.job(2)).payload -> 'parent_result', '{"graded": 25}'::jsonb, 'with the parent''s result');

-- Step 2 cancelled again once its parent had succeeded: requeued, it gets the result.
select public.cancel_job((pg_temp.job(2)).id, 'again');
update public.jobs set payload = payload - 'parent_result' where id = (pg_temp.job(2)).id;
select is(
  public.requeue_job((pg_temp.job(2)).id) ->> 'status', 'queued',
  'a step requeued after its parent succeeded is queued'
);
select is((pg_temp.job(2)).payload -> 'parent_result', '{"graded": 25}'::jsonb,
  'with the parent''s result, whatever its payload held');

-- Step 2 fails for good: step 3 cannot be requeued on its own.
select public.fail_job((pg_temp.job(2)).id, pg_temp.start((pg_temp.job(2)).id), 'broken', 'permanent');
select throws_ok(
  format('select public.requeue_job(%s)', (pg_temp.job(3)).id),
  'EQ006',
  format('job %s follows job %s, which is dead; requeue job %s instead',
         (pg_temp.job(3)).id, (pg_temp.job(2)).id, (pg_temp.job(2)).id),
  'a step whose parent is dead is refused, naming the parent'
);
select is(
  public.bulk_requeue(array[(pg_temp.job(3)).id]) -> 'skipped' -> 0 ->> 'code', 'EQ006',
  'bulk_requeue skips it with the reason'
);

select * from finish();
rollback;
