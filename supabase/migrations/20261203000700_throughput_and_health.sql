-- Set-based calls for high throughput, and a health report for operators.
--
-- A worker that runs many short jobs spends most of its time in round trips and
-- per-statement overhead, not in the jobs. Two functions let it do in one statement
-- what took one call per job, with the same rules as the single-job functions:
--
-- - complete_jobs: the compare-and-set of complete_job for many (id, lease token,
--   result) at once, with one multi-row insert into job_events. A job whose lease was
--   lost is reported as such in its own entry; it does not fail the others.
-- - enqueue_jobs: the checks of enqueue_job (caller, job type, tier, payload size,
--   attempts, run time, parent, queued-job quota, idempotency keys) for many jobs at
--   once, all or nothing, inserted by one statement over unnest.
--
-- queue_health reports what an operator or an uptime check needs at a glance:
-- queue depth by tier, the oldest ready job's wait, the dead-letter count, expired
-- leases not yet reclaimed, the last successful cron tick (public.cron_runs, written
-- by record_cron_tick) and the recent failure rate.

-- complete_jobs -------------------------------------------------------------------
-- Called by the worker holding the leases, with the service role. p_jobs is a JSON
-- array of at most 1,000 objects {job_id, lease_token, result}. Each job that is
-- running under the given lease becomes succeeded with its result, exactly as
-- complete_job does, and gets its event; all of them in one update and one insert.
-- Locks the rows it completes (waiting, as complete_job does, for a concurrent
-- cancel_job or heartbeat on the same row). Returns a JSON array in input order, one
-- object {job_id, status, outcome} per entry, where outcome is completed,
-- already_completed (the same lease already completed it: a repeat), lease_lost
-- (another lease holds it, or it went back to the queue), invalid_state (the same
-- lease already ended it otherwise) or not_found. Raises EQ007 for a malformed
-- array or a job id given twice.
create function public.complete_jobs(p_jobs jsonb) returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
  v_count integer;
  v_ids bigint[];
  v_tokens uuid[];
  v_results jsonb[];
  v_done bigint[];
  v_ok boolean;
  v_distinct bigint;
begin
  if p_jobs is null or jsonb_typeof(p_jobs) <> 'array' then
    raise exception using errcode = 'EQ007', message = 'jobs must be a JSON array of {job_id, lease_token, result}';
  end if;

  v_count := jsonb_array_length(p_jobs);

  if v_count > 1000 then
    raise exception using errcode = 'EQ007', message = format('give at most 1000 jobs, not %s', v_count);
  end if;

  if v_count = 0 then
    return '[]'::jsonb;
  end if;

  -- One pass over the input: the fields into arrays in input order, whether every
  -- element has the right shape, and how many distinct ids there are.
  begin
    select array_agg((e ->> 'job_id')::bigint order by x.ord),
           array_agg((e ->> 'lease_token')::uuid order by x.ord),
           array_agg(e -> 'result' order by x.ord),
           bool_and(jsonb_typeof(e) = 'object'
                    and jsonb_typeof(e -> 'job_id') is not distinct from 'number'
                    and jsonb_typeof(e -> 'lease_token') is not distinct from 'string'),
           count(distinct e ->> 'job_id')
    into v_ids, v_tokens, v_results, v_ok, v_distinct
    from jsonb_array_elements(p_jobs) with ordinality as x (e, ord);
  exception
    when invalid_text_representation or numeric_value_out_of_range then
      raise exception using errcode = 'EQ007', message = format('a job has an invalid job_id or lease_token: %s', sqlerrm);
  end;

  if not v_ok then
    raise exception using errcode = 'EQ007', message = 'each job needs a numeric job_id and a lease_token';
  end if;

  if v_distinct <> v_count then
    raise exception using errcode = 'EQ007', message = 'a job id is given twice';
  end if;

  -- Each job is reached through the primary key, driven by the input. The status is
  -- compared as text so that the planner cannot answer `status = 'running'` from a
  -- partial index on running jobs: the statistics of a queue say that almost no job
  -- is running, which makes a walk over every running job (and a nested loop over
  -- the input for each) look cheaper than it is.
  with done as (
    update public.jobs j
    set status = 'succeeded',
        result = i.result,
        -- As complete_job: errors of earlier attempts stay in job_events only.
        last_error = null,
        error_kind = null,
        progress = 100,
        progress_message = null,
        eta_at = null,
        lease_expires_at = null,
        finished_at = now(),
        updated_at = now()
    from unnest(v_ids, v_tokens, v_results) as i (job_id, lease_token, result)
    where j.id = i.job_id and j.status::text = 'running' and j.lease_token = i.lease_token
    returning j.id, j.user_id, j.worker_id, j.attempt
  ), logged as (
    insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt)
    select d.id, d.user_id, 'worker:' || d.worker_id, 'running', 'succeeded', d.attempt
    from done d
  )
  select array_agg(d.id) into v_done from done d;

  if cardinality(v_done) = v_count then
    return (
      select jsonb_agg(jsonb_build_object('job_id', u.id, 'status', 'succeeded', 'outcome', 'completed')
                       order by u.ord)
      from unnest(v_ids) with ordinality u (id, ord)
    );
  end if;

  -- Some jobs did not match: explain each by the state it has now, which is the state
  -- that made it not match (the update waited for, and re-read, any row locked by a
  -- concurrent transition).
  return (
    select jsonb_agg(
             case
               when u.id = any (coalesce(v_done, '{}')) then
                 jsonb_build_object('job_id', u.id, 'status', 'succeeded', 'outcome', 'completed')
               when j.id is null then
                 jsonb_build_object('job_id', u.id, 'status', null, 'outcome', 'not_found')
               when j.lease_token = u.lease_token and j.status = 'succeeded' then
                 jsonb_build_object('job_id', u.id, 'status', j.status, 'outcome', 'already_completed')
               when j.lease_token = u.lease_token and j.status <> 'running' then
                 jsonb_build_object('job_id', u.id, 'status', j.status, 'outcome', 'invalid_state')
               else
                 jsonb_build_object('job_id', u.id, 'status', j.status, 'outcome', 'lease_lost')
             end
             order by u.ord)
    from unnest(v_ids, v_tokens) with ordinality u (id, lease_token, ord)
    left join public.jobs j on j.id = u.id
  );
end
$$;

comment on function public.complete_jobs(jsonb) is
  'Worker call: marks many running jobs succeeded in one statement, each under its own '
  'lease, and reports per job: completed, already_completed, lease_lost, invalid_state '
  'or not_found.';

revoke execute on function public.complete_jobs(jsonb) from public, anon, authenticated;
grant execute on function public.complete_jobs(jsonb) to service_role;

-- claim_job_batch -----------------------------------------------------------------
-- Called by workers with the service role; the same contract as claim_jobs, built for
-- large batches and many concurrent workers. It reclaims expired leases, takes up to
-- p_limit ready queued jobs in claim order (sort_at, id) with skip locked, leaves out
-- users at their tier's running cap, and leases each job with a new token, writing one
-- event per job. Returns the claimed jobs in claim order. Raises EQ007 for bad
-- arguments.
--
-- How it differs from claim_jobs, which takes the per-owner advisory locks first and
-- then counts, admits, updates and logs while holding them: every claim touching the
-- same owners waits for all of that, and the locks are held until commit. Here the
-- claim is made first, admitting candidates by the running counts already committed;
-- only then are the owners' locks taken (the same keys, in the same order, as
-- claim_jobs, so both functions may run side by side), and a new statement counts each
-- owner's running jobs again: everything committed before the lock, plus this claim's
-- own. A claim that now finds an owner over the cap (a concurrent claim took the last
-- slots meanwhile) gives back its newest jobs of that owner, restoring them as they
-- were and deleting their events, before it returns. The cap therefore holds exactly
-- as with claim_jobs: claims count one at a time under the lock, each seeing those
-- that counted before it, while the expensive part, the update and the event insert,
-- runs outside the lock. A claim that gives jobs back returns fewer than it could have.
-- Each owner's running jobs are counted once, not once per candidate.
-- Locks: the claimed rows; the per-owner advisory locks from the count to the commit.
create function public.claim_job_batch(
  p_worker_id text,
  p_limit integer default 100,
  p_job_types text[] default null,
  p_lease_seconds integer default null
) returns setof public.jobs
language plpgsql volatile
set search_path = ''
as $$
declare
  v_capped uuid[];
  v_ids bigint[];
  v_rows public.jobs[];
  v_before jsonb;
  v_events bigint[];
  v_users uuid[];
  v_user uuid;
  v_over bigint[];
begin
  if p_worker_id is null or length(p_worker_id) not between 1 and 200 then
    raise exception using errcode = 'EQ007', message = 'worker_id must be 1 to 200 characters';
  end if;

  if p_limit is null or p_limit not between 1 and 1000 then
    raise exception using errcode = 'EQ007', message = format('limit must be between 1 and 1000, not %s', p_limit);
  end if;

  if p_lease_seconds is not null and p_lease_seconds not between 5 and 86400 then
    raise exception using
      errcode = 'EQ007',
      message = format('lease_seconds must be between 5 and 86400, not %s', p_lease_seconds);
  end if;

  perform examq_internal.reclaim_expired_leases(greatest(p_limit, 100));

  select coalesce(array_agg(r.user_id), '{}') into v_capped
  from (
    select j.user_id, count(*) as running
    from public.jobs j
    where j.status = 'running' and j.user_id is not null
    group by j.user_id
  ) r
  left join public.accounts a on a.user_id = r.user_id
  join public.tiers t on t.name = coalesce(a.tier, 'free')
  where r.running >= t.max_running_per_user;

  -- Exactly the batch is locked, as in claim_jobs: a candidate locked here but left
  -- unclaimed would be skipped by a concurrent claim, letting later jobs overtake it.
  select array_agg(c.id) into v_ids
  from (
    select j.id
    from public.jobs j
    where j.status = 'queued'
      and j.sort_at <= now()
      and j.run_at <= now()
      and (p_job_types is null or j.job_type = any (p_job_types))
      and (j.user_id is null or not (j.user_id = any (v_capped)))
    order by j.sort_at, j.id
    limit p_limit
    for update skip locked
  ) c;

  if v_ids is null then
    return;
  end if;

  -- The claim, admitted by committed counts. What a give-back must restore is kept
  -- from the rows as they were (the update's FROM list still has them).
  with running as (
    select r.user_id, count(*) as n
    from public.jobs r
    where r.user_id = any (
            select distinct c.user_id from public.jobs c where c.id = any (v_ids) and c.user_id is not null)
      and r.status = 'running'
    group by r.user_id
  ), candidates as (
    select j.id, j.user_id, j.sort_at, j.first_started_at, j.started_at, j.progress, j.progress_message,
           j.eta_at, j.updated_at,
           row_number() over (partition by j.user_id order by j.sort_at, j.id) as nth
    from public.jobs j
    where j.id = any (v_ids) and j.status = 'queued'
  ), admitted as (
    select c.*
    from candidates c
    left join running r on r.user_id = c.user_id
    left join public.accounts a on a.user_id = c.user_id
    left join public.tiers t on t.name = coalesce(a.tier, 'free')
    where c.user_id is null or c.nth + coalesce(r.n, 0) <= t.max_running_per_user
    order by c.sort_at, c.id
    limit p_limit
  ), claimed as (
    update public.jobs j
    set status = 'running',
        attempt = j.attempt + 1,
        lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => coalesce(p_lease_seconds, jt.lease_seconds)),
        worker_id = p_worker_id,
        first_started_at = coalesce(j.first_started_at, now()),
        started_at = now(),
        progress = 0,
        progress_message = null,
        eta_at = null,
        updated_at = now()
    from admitted ad, public.job_types jt
    where j.id = ad.id and jt.name = j.job_type and j.status = 'queued'
    returning j, jsonb_build_object('first_started_at', ad.first_started_at, 'started_at', ad.started_at,
                                    'progress', ad.progress, 'progress_message', ad.progress_message,
                                    'eta_at', ad.eta_at, 'updated_at', ad.updated_at) as before
  ), logged as (
    insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt)
    select (c.j).id, (c.j).user_id, 'worker:' || p_worker_id, 'queued', 'running', (c.j).attempt
    from claimed c
    returning id
  )
  select (select array_agg(c.j order by (c.j).sort_at, (c.j).id) from claimed c),
         (select jsonb_object_agg((c.j).id::text, c.before) from claimed c),
         (select array_agg(l.id) from logged l)
  into v_rows, v_before, v_events;

  if v_rows is null then
    return;
  end if;

  select array_agg(distinct r.user_id) into v_users
  from unnest(v_rows) r
  where r.user_id is not null;

  -- array_agg(distinct ...) sorts, so the locks are taken in a fixed order.
  foreach v_user in array coalesce(v_users, '{}') loop
    perform pg_advisory_xact_lock(hashtextextended('examq.claim:' || v_user::text, 0));
  end loop;

  -- A new statement, so a new snapshot: every claim committed by whoever held the
  -- locks before, and this claim's own jobs.
  select array_agg(o.id) into v_over
  from (
    select r.id, cnt.n, t.max_running_per_user as cap,
           row_number() over (partition by r.user_id order by r.sort_at desc, r.id desc) as from_last
    from unnest(v_rows) r
    join (
      select j.user_id, count(*) as n
      from public.jobs j
      where j.user_id = any (v_users) and j.status = 'running'
      group by j.user_id
    ) cnt on cnt.user_id = r.user_id
    left join public.accounts a on a.user_id = r.user_id
    left join public.tiers t on t.name = coalesce(a.tier, 'free')
  ) o
  where o.n > o.cap and o.from_last <= o.n - o.cap;

  if v_over is not null then
    update public.jobs j
    set status = 'queued',
        attempt = j.attempt - 1,
        lease_token = null,
        lease_expires_at = null,
        worker_id = null,
        first_started_at = (v_before -> j.id::text ->> 'first_started_at')::timestamptz,
        started_at = (v_before -> j.id::text ->> 'started_at')::timestamptz,
        progress = (v_before -> j.id::text ->> 'progress')::numeric,
        progress_message = v_before -> j.id::text ->> 'progress_message',
        eta_at = (v_before -> j.id::text ->> 'eta_at')::timestamptz,
        updated_at = (v_before -> j.id::text ->> 'updated_at')::timestamptz
    where j.id = any (v_over);

    delete from public.job_events e where e.id = any (v_events) and e.job_id = any (v_over);
  end if;

  return query
  select r.*
  from unnest(v_rows) r
  where v_over is null or not (r.id = any (v_over))
  order by r.sort_at, r.id;
end
$$;

comment on function public.claim_job_batch(text, integer, text[], integer) is
  'Worker call: claim_jobs for large batches and many workers (the same order, caps, '
  'locks and leases), holding the per-owner locks only while it recounts. Returns the '
  'claimed jobs.';

revoke execute on function public.claim_job_batch(text, integer, text[], integer) from public, anon, authenticated;
grant execute on function public.claim_job_batch(text, integer, text[], integer) to service_role;

-- enqueue_jobs --------------------------------------------------------------------
-- Called by signed-in users (for themselves) and by the service role (for any users,
-- or for nobody: system jobs). p_jobs is a JSON array of 1 to 10,000 objects, each
-- {job_type, payload, user_id, idempotency_key, run_at, delay_seconds, max_attempts,
-- parent_id} with the meaning and the defaults of enqueue_job's arguments (only
-- job_type is required). Every job passes every check of enqueue_job (caller, job
-- type, tier, payload size, attempts, run time, parent) or none is enqueued: the
-- first job that fails one raises, its position in the message. The queued-job quota
-- counts the whole batch. A job whose idempotency key its owner already used (before,
-- or earlier in the same batch) is not added: its entry names the existing job.
-- The input is read once, into one array per field; every later statement works on
-- those arrays (unnest), and the jobs and their events are inserted by one statement.
-- Locks: the enqueue advisory lock of each owner, in a fixed order, as enqueue_job
-- takes it, so quotas and idempotency keys hold under concurrent enqueues of either
-- kind. Returns a JSON array in input order, one {job_id, created} per element.
-- Raises EQ001, EQ002, EQ003, EQ004, EQ007, 42501.
-- Definer rights: users have no write privilege on public.jobs.
create function public.enqueue_jobs(p_jobs jsonb) returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  v_kind text := examq_internal.caller_kind();
  v_caller uuid := auth.uid();
  v_actor text;
  v_count integer;
  v_bad record;
  v_owner text;
  v_types text[];
  v_payloads jsonb[];
  v_owners uuid[];
  v_keys text[];
  v_run_ats timestamptz[];
  v_attempts integer[];
  v_parents bigint[];
  v_tiers text[];
  v_head_starts integer[];
  v_default_attempts integer[];
  v_error text[];
  v_existing bigint[];
  v_ids bigint[];
  v_has_keys boolean;
begin
  if v_kind = 'anon' then
    raise exception using errcode = '42501', message = 'sign in to enqueue jobs';
  end if;

  if p_jobs is null or jsonb_typeof(p_jobs) <> 'array' then
    raise exception using errcode = 'EQ007', message = 'jobs must be a JSON array of {job_type, payload, ...}';
  end if;

  v_count := jsonb_array_length(p_jobs);

  if v_count = 0 then
    return '[]'::jsonb;
  end if;

  if v_count > 10000 then
    raise exception using errcode = 'EQ007', message = format('give at most 10000 jobs, not %s', v_count);
  end if;

  v_actor := case when v_kind = 'user' then 'user:' || v_caller else 'service' end;

  -- Shapes first, so that the casts below only meet values of the right JSON type.
  select e.ord, case
      when jsonb_typeof(e.value) <> 'object' then 'must be a JSON object'
      when jsonb_typeof(e.value -> 'job_type') is distinct from 'string' then 'needs a job_type'
      when jsonb_typeof(e.value -> 'payload') not in ('object', 'null') then
        format('payload must be a JSON object, not %s', jsonb_typeof(e.value -> 'payload'))
      when jsonb_typeof(e.value -> 'user_id') not in ('string', 'null') then 'user_id must be a uuid'
      when jsonb_typeof(e.value -> 'idempotency_key') not in ('string', 'null') then 'idempotency_key must be text'
      when jsonb_typeof(e.value -> 'run_at') not in ('string', 'null') then 'run_at must be a timestamp'
      when jsonb_typeof(e.value -> 'delay_seconds') not in ('number', 'null') then 'delay_seconds must be a number'
      when jsonb_typeof(e.value -> 'max_attempts') not in ('number', 'null') then 'max_attempts must be a number'
      else 'parent_id must be a number'
    end as problem
  into v_bad
  from jsonb_array_elements(p_jobs) with ordinality as e (value, ord)
  where jsonb_typeof(e.value) <> 'object'
     or jsonb_typeof(e.value -> 'job_type') is distinct from 'string'
     or jsonb_typeof(e.value -> 'payload') not in ('object', 'null')
     or jsonb_typeof(e.value -> 'user_id') not in ('string', 'null')
     or jsonb_typeof(e.value -> 'idempotency_key') not in ('string', 'null')
     or jsonb_typeof(e.value -> 'run_at') not in ('string', 'null')
     or jsonb_typeof(e.value -> 'delay_seconds') not in ('number', 'null')
     or jsonb_typeof(e.value -> 'max_attempts') not in ('number', 'null')
     or jsonb_typeof(e.value -> 'parent_id') not in ('number', 'null')
  order by e.ord
  limit 1;

  if found then
    raise exception using errcode = 'EQ007', message = format('job %s: %s', v_bad.ord, v_bad.problem);
  end if;

  -- One pass: each field into its array (in input order), the owner's tier, and the
  -- first element that fails a check of enqueue_job, as {code, message}.
  begin
    with specs as (
      select e.ord,
             e.value ->> 'job_type' as job_type,
             -- A JSON null (or no payload) is an empty object, as in enqueue_job.
             case when jsonb_typeof(e.value -> 'payload') = 'object' then e.value -> 'payload'
                  else '{}'::jsonb end as payload,
             (e.value ->> 'user_id')::uuid as given_user_id,
             e.value ->> 'idempotency_key' as idempotency_key,
             (e.value ->> 'run_at')::timestamptz as run_at,
             (e.value ->> 'delay_seconds')::double precision as delay_seconds,
             (e.value ->> 'max_attempts')::integer as max_attempts,
             (e.value ->> 'parent_id')::bigint as parent_id
      from jsonb_array_elements(p_jobs) with ordinality as e (value, ord)
    ), owned as (
      select s.*,
             case when v_kind = 'user' then coalesce(s.given_user_id, v_caller) else s.given_user_id end as owner_id
      from specs s
    ), checked as (
      select o.*, t.name as tier, t.head_start_seconds, t.default_max_attempts,
             case
               when v_kind = 'user' and o.given_user_id is not null and o.given_user_id <> v_caller then
                 array['42501', 'users may enqueue jobs only for themselves']
               when jt.name is null then
                 array['EQ001', format('unknown job type %L', left(o.job_type, 100))]
               when o.owner_id is not null and u.id is null then
                 array['EQ007', format('no user with id %s', o.owner_id)]
               when t.allowed_job_types is not null and not (o.job_type = any (t.allowed_job_types)) then
                 array['EQ001', format('job type %L is not available in the %s tier', o.job_type, t.name)]
               when octet_length(o.payload::text) > t.max_payload_bytes then
                 array['EQ002', format('payload is %s bytes; the %s tier accepts at most %s',
                                       octet_length(o.payload::text), t.name, t.max_payload_bytes)]
               -- What clients could not read back, refused as enqueue_job refuses it.
               when jsonb_path_exists(o.payload, 'strict $.**{64}') then
                 array['EQ007', 'payload is nested more than 64 levels deep']
               when jsonb_path_exists(o.payload, 'strict $.** ? (@.type() == "number" && (@ > 1e300 || @ < -1e300))') then
                 array['EQ007', 'payload holds a number beyond 1e300, which JSON readers cannot represent']
               when o.run_at is not null and o.delay_seconds is not null then
                 array['EQ007', 'give either run_at or delay_seconds, not both']
               when o.delay_seconds is not null and not (o.delay_seconds between 0 and 31536000) then
                 array['EQ007', format('delay_seconds must be between 0 and 31536000, not %s', o.delay_seconds)]
               when o.run_at is not null
                    and not (o.run_at between now() - interval '8784 hours' and now() + interval '8784 hours') then
                 array['EQ007', format('run_at must be within a year of now, not %s', o.run_at)]
               when o.max_attempts is not null
                    and not (o.max_attempts between 1 and case when v_kind = 'user' then t.default_max_attempts else 1000 end) then
                 array['EQ007', format('max_attempts must be between 1 and %s, not %s',
                                       case when v_kind = 'user' then t.default_max_attempts else 1000 end, o.max_attempts)]
               when o.idempotency_key is not null and length(o.idempotency_key) not between 1 and 200 then
                 array['EQ007', 'idempotency_key must be 1 to 200 characters']
               when o.parent_id is not null and not exists (
                      select from public.jobs p
                      where p.id = o.parent_id and (v_kind = 'service' or p.user_id = o.owner_id)) then
                 array['EQ004', format('parent job %s not found', o.parent_id)]
             end as error
      from owned o
      left join public.job_types jt on jt.name = o.job_type
      left join auth.users u on u.id = o.owner_id
      left join public.accounts a on a.user_id = o.owner_id
      left join public.tiers t on t.name = case when o.owner_id is null then 'system' else coalesce(a.tier, 'free') end
    )
    select array_agg(c.job_type order by c.ord), array_agg(c.payload order by c.ord),
           array_agg(c.owner_id order by c.ord), array_agg(c.idempotency_key order by c.ord),
           -- A run_at in the past means now, as in enqueue_job: it buys no place ahead of
           -- jobs enqueued earlier.
           array_agg(greatest(now(), coalesce(c.run_at, now() + make_interval(secs => coalesce(c.delay_seconds, 0))))
                     order by c.ord),
           array_agg(coalesce(c.max_attempts, c.default_max_attempts) order by c.ord),
           array_agg(c.parent_id order by c.ord), array_agg(c.tier order by c.ord),
           array_agg(c.head_start_seconds order by c.ord),
           (array_agg(array[c.ord::text] || c.error order by c.ord) filter (where c.error is not null))[1:1],
           bool_or(c.idempotency_key is not null)
    into v_types, v_payloads, v_owners, v_keys, v_run_ats, v_attempts, v_parents, v_tiers, v_head_starts,
         v_error, v_has_keys
    from checked c;
  exception
    when invalid_text_representation or invalid_datetime_format or datetime_field_overflow
         or numeric_value_out_of_range or invalid_parameter_value then
      raise exception using errcode = 'EQ007', message = format('a job has an invalid field: %s', sqlerrm);
  end;

  if v_error is not null then
    raise exception using errcode = v_error[1][2], message = format('job %s: %s', v_error[1][1], v_error[1][3]);
  end if;

  -- Serialise with every other enqueue of these owners (enqueue_job takes the same
  -- keys): the quota counts and idempotency lookups below must not interleave with
  -- theirs. A fixed order, so two batches cannot deadlock.
  for v_owner in
    select distinct coalesce(o::text, 'system') from unnest(v_owners) o order by 1
  loop
    perform pg_advisory_xact_lock(hashtextextended('examq.enqueue:' || v_owner, 0));
  end loop;

  -- Idempotent repeats: the job an element's key already names, in the table or
  -- earlier in the batch (0 marks "the first element with this key makes it").
  if v_has_keys then
    select array_agg(
             case
               when x.idempotency_key is null then null
               when e.id is not null then e.id
               when x.first_ord < x.ord then -x.first_ord
             end
             order by x.ord)
    into v_existing
    from (
      select u.ord, u.owner_id, u.idempotency_key,
             min(u.ord) over (partition by u.owner_id, u.idempotency_key) as first_ord
      from unnest(v_owners, v_keys) with ordinality as u (owner_id, idempotency_key, ord)
    ) x
    left join public.jobs e
      on x.idempotency_key is not null
     and e.user_id is not distinct from x.owner_id
     and e.idempotency_key = x.idempotency_key;
  end if;

  select f.owner_id, t.name as tier, t.max_queued_per_user as quota, f.n, f.queued
  into v_bad
  from (
    select u.owner_id, count(*) as n,
           -- As enqueue_job: jobs waiting for a parent count too.
           (select count(*) from public.jobs q
            where q.user_id = u.owner_id and q.status not in ('running', 'succeeded', 'dead', 'cancelled')) as queued
    from unnest(v_owners, v_existing) with ordinality as u (owner_id, existing, ord)
    where u.owner_id is not null and u.existing is null
    group by u.owner_id
  ) f
  left join public.accounts a on a.user_id = f.owner_id
  join public.tiers t on t.name = coalesce(a.tier, 'free')
  where f.n + f.queued > t.max_queued_per_user
  order by f.owner_id
  limit 1;

  if found then
    raise exception using
      errcode = 'EQ003',
      message = format('queued-job quota reached: the %s tier allows %s queued jobs per user; user %s has %s '
                       'and this batch adds %s', v_bad.tier, v_bad.quota, v_bad.owner_id, v_bad.queued, v_bad.n);
  end if;

  -- Ids are drawn from the table's own sequence in input order first, so that each
  -- element knows its job and jobs enqueued together are claimed in input order.
  select array_agg(case when x.existing is null then nextval(pg_get_serial_sequence('public.jobs', 'id')) end
                   order by x.ord)
  into v_ids
  from unnest(coalesce(v_existing, array_fill(null::bigint, array[v_count])))
         with ordinality as x (existing, ord);

  with inserted as (
    insert into public.jobs
      (id, job_type, user_id, tier, payload, run_at, sort_at, max_attempts, idempotency_key, parent_id)
    overriding system value
    select n.id, n.job_type, n.owner_id, n.tier, n.payload, n.run_at,
           n.run_at - make_interval(secs => n.head_start), n.max_attempts, n.idempotency_key, n.parent_id
    from unnest(v_ids, v_types, v_owners, v_tiers, v_payloads, v_run_ats, v_head_starts, v_attempts, v_keys,
                v_parents)
           as n (id, job_type, owner_id, tier, payload, run_at, head_start, max_attempts, idempotency_key, parent_id)
    where n.id is not null
    order by n.id
    returning id, user_id
  )
  insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt)
  select i.id, i.user_id, v_actor, null, 'queued', 0
  from inserted i
  order by i.id;

  -- An element that repeats an earlier one of the batch (-ord) names that one's job.
  return (
    select jsonb_agg(
             jsonb_build_object(
               'job_id', case when x.existing < 0 then v_ids[-x.existing] else coalesce(x.existing, x.id) end,
               'created', x.id is not null)
             order by x.ord)
    from unnest(v_ids, coalesce(v_existing, array_fill(null::bigint, array[v_count])))
           with ordinality as x (id, existing, ord)
  );
end
$$;

comment on function public.enqueue_jobs(jsonb) is
  'Adds many jobs at once with enqueue_job''s rules, all or none; returns {job_id, '
  'created} per element in input order (created is false for an idempotent repeat).';

revoke execute on function public.enqueue_jobs(jsonb) from public, anon;
grant execute on function public.enqueue_jobs(jsonb) to authenticated, service_role;

-- queue_health --------------------------------------------------------------------
-- Called by the health function (GET /api/health, with the service role), by admins
-- (supabase-js, Studio) and by direct connections. Reports, now: jobs queued, ready
-- and running by tier, with the oldest ready job's wait; the dead-letter count;
-- running jobs whose lease expired and that no claim has reclaimed yet; the last
-- successful cron tick (public.cron_runs, written by record_cron_tick); and over the
-- last p_window_seconds the jobs that succeeded and went dead, with the failure rate.
-- ok is false, naming each problem, when no tick succeeded within
-- p_tick_stale_seconds (or none ever did) or the oldest ready job waited longer than
-- p_queue_age_seconds. Reads the queued and running jobs through their partial
-- indexes, dead jobs through jobs_status_dead_finished_at_idx and the window through
-- jobs_finished_at_idx. Returns one JSON object. Raises 42501 for callers other than
-- the service role and admins, EQ007 for thresholds out of range.
-- Definer rights: an admin's figures must cover every user's jobs, and the result is
-- the same whoever asks; the function checks the caller itself.
create function public.queue_health(
  p_window_seconds integer default 900,
  p_tick_stale_seconds integer default 300,
  p_queue_age_seconds integer default 900
) returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
declare
  v_by_tier jsonb;
  v_oldest double precision;
  v_dead bigint;
  v_expired bigint;
  v_tick public.cron_runs;
  v_tick_age double precision;
  v_succeeded bigint;
  v_failed bigint;
  v_problems text[] := '{}';
begin
  if examq_internal.caller_kind() <> 'service' and not public.is_admin() then
    raise exception using errcode = '42501', message = 'only admins and the service role may read the queue''s health';
  end if;

  if p_window_seconds is null or p_window_seconds not between 60 and 604800
     or p_tick_stale_seconds is null or p_tick_stale_seconds not between 60 and 604800
     or p_queue_age_seconds is null or p_queue_age_seconds not between 1 and 604800 then
    raise exception using
      errcode = 'EQ007',
      message = 'window and tick staleness must be 60-604800 s, queue age 1-604800 s';
  end if;

  select coalesce(jsonb_object_agg(d.tier, jsonb_build_object(
           'queued', d.queued, 'ready', d.ready, 'running', d.running,
           'oldest_ready_seconds', round(d.oldest::numeric, 3))), '{}'::jsonb),
         max(d.oldest)
  into v_by_tier, v_oldest
  from (
    select j.tier,
           count(*) filter (where j.status = 'queued') as queued,
           count(*) filter (where j.status = 'queued' and j.run_at <= now()) as ready,
           count(*) filter (where j.status = 'running') as running,
           extract(epoch from now() - min(j.run_at) filter (where j.status = 'queued' and j.run_at <= now()))
             as oldest
    from public.jobs j
    where j.status in ('queued', 'running')
    group by j.tier
  ) d;

  select count(*) into v_dead from public.jobs j where j.status = 'dead';

  select count(*) into v_expired
  from public.jobs j
  where j.status = 'running' and j.lease_expires_at < now();

  select * into v_tick from public.cron_runs r where r.name = 'cron';
  v_tick_age := extract(epoch from now() - v_tick.last_succeeded_at);

  select count(*) filter (where j.status = 'succeeded'), count(*) filter (where j.status = 'dead')
  into v_succeeded, v_failed
  from public.jobs j
  where j.finished_at >= now() - make_interval(secs => p_window_seconds)
    and j.status in ('succeeded', 'dead');

  if v_tick_age is null then
    v_problems := v_problems || 'no cron tick has succeeded yet'::text;
  elsif v_tick_age > p_tick_stale_seconds then
    v_problems := v_problems || format('the last successful cron tick was %s s ago', round(v_tick_age::numeric));
  end if;

  if v_oldest > p_queue_age_seconds then
    v_problems := v_problems || format('the oldest ready job has waited %s s', round(v_oldest::numeric));
  end if;

  return jsonb_build_object(
    'ok', cardinality(v_problems) = 0,
    'problems', to_jsonb(v_problems),
    'generated_at', now(),
    'queued_by_tier', v_by_tier,
    'oldest_ready_seconds', round(v_oldest::numeric, 3),
    'dead_letter', v_dead,
    'expired_leases', v_expired,
    'last_tick', case when v_tick.name is null then null else jsonb_build_object(
      'at', v_tick.last_succeeded_at,
      'seconds_ago', round(v_tick_age::numeric, 3),
      'count', v_tick.succeeded_count) end,
    'failure_rate', jsonb_build_object(
      'window_seconds', p_window_seconds,
      'succeeded', v_succeeded,
      'failed', v_failed,
      'rate', round(v_failed::numeric / nullif(v_succeeded + v_failed, 0), 4))
  );
end
$$;

comment on function public.queue_health(integer, integer, integer) is
  'Operators'' health report: depth by tier, oldest ready wait, dead letters, expired '
  'leases, the last cron tick and the failure rate, with ok and the problems found.';

revoke execute on function public.queue_health(integer, integer, integer) from public, anon;
grant execute on function public.queue_health(integer, integer, integer) to authenticated, service_role;
