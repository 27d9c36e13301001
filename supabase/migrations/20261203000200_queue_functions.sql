-- The queue's lifecycle functions: enqueue, claim, heartbeat, complete, fail, cancel,
-- requeue, and reading one job.
--
-- Each function is one transaction and each transition is a compare-and-set on the
-- state it expects (status, and for worker calls the lease token), so a late,
-- repeated or concurrent call changes nothing and says why. All time arithmetic uses
-- the database clock. Errors that callers branch on carry examq's own SQLSTATEs
-- (class EQ), mapped to exceptions in examq/errors.py:
--   EQ001 unknown or disallowed job type     EQ005 lease lost
--   EQ002 payload too large                  EQ006 job not in a state that allows it
--   EQ003 queued-job quota reached           EQ007 invalid argument
--   EQ004 job not found (or not visible)     42501 caller's role may not do this

create schema examq_internal;

comment on schema examq_internal is
  'Helpers of the queue functions. Not exposed through the API.';

revoke all on schema examq_internal from public;
grant usage on schema examq_internal to service_role;

-- Who is calling: 'user' (a signed-in user, from the JWT claims), 'anon', or
-- 'service' (the service role through the API, or a trusted direct connection that
-- sets no claims at all).
create function examq_internal.caller_kind() returns text
language sql stable
set search_path = ''
as $$
  select case
    when auth.role() = 'service_role' then 'service'
    when auth.uid() is not null then 'user'
    when auth.role() in ('anon', 'authenticated') then 'anon'
    -- A session in an API role without claims is not trusted as the service; the
    -- role setting survives into security definer functions.
    when current_setting('role', true) in ('anon', 'authenticated') then 'anon'
    else 'service'
  end
$$;

comment on function examq_internal.caller_kind() is
  'Classifies the caller from the request''s JWT claims: user, anon or service.';

-- The delay before retry number p_attempt: exponential, capped, with jitter. The
-- exponent is capped so any attempt number gives a finite delay; the result lies in
-- [max(base, d/2), d] where d = min(max, base * 2^attempt), so it is never shorter
-- than the base delay, never longer than the maximum, and jobs that fail together
-- come back spread over the interval.
create function examq_internal.retry_delay_seconds(
  p_attempt integer,
  p_base_seconds double precision,
  p_max_seconds double precision
) returns double precision
language plpgsql volatile
set search_path = ''
as $$
declare
  v_high double precision;
  v_low double precision;
begin
  v_high := least(p_max_seconds, p_base_seconds * power(2::double precision, least(greatest(p_attempt, 1), 60)));
  v_low := greatest(p_base_seconds, v_high / 2);

  return v_low + random() * (v_high - v_low);
end
$$;

comment on function examq_internal.retry_delay_seconds(integer, double precision, double precision) is
  'Capped exponential backoff with jitter, in seconds, for a given attempt number.';

-- What is wrong with a payload that PostgreSQL accepts but clients cannot read back:
-- nesting deeper than 64 levels (JSON parsers recurse) and numbers outside the range
-- of a double (Python refuses integers of more than 4,300 digits). Returns null when
-- the payload is fine. Such a payload, once claimed, would break the claim of every
-- job in its batch, so it is refused at enqueue.
create function examq_internal.payload_problem(p_payload jsonb) returns text
language sql immutable
set search_path = ''
as $$
  select case
    when jsonb_path_exists(p_payload, 'strict $.**{64}') then 'payload is nested more than 64 levels deep'
    when jsonb_path_exists(p_payload, 'strict $.** ? (@.type() == "number" && (@ > 1e300 || @ < -1e300))')
      then 'payload holds a number beyond 1e300, which JSON readers cannot represent'
  end
$$;

comment on function examq_internal.payload_problem(jsonb) is
  'Names what makes a payload unreadable for clients (too deep, number too large), or null.';

-- Raises the error that explains why a worker call found no running job under the
-- given lease, or returns the job when the same lease already finished it (so the
-- caller can treat a repeated call as a no-op).
create function examq_internal.explain_lease_miss(
  p_job_id bigint,
  p_lease_token uuid
) returns public.jobs
language plpgsql stable
set search_path = ''
as $$
declare
  v_job public.jobs;
begin
  select * into v_job from public.jobs j where j.id = p_job_id;

  if not found then
    raise exception using errcode = 'EQ004', message = format('job %s not found', p_job_id);
  end if;

  if p_lease_token is not null and v_job.lease_token = p_lease_token and v_job.status <> 'running' then
    return v_job;
  end if;

  raise exception using
    errcode = 'EQ005',
    message = format('lease lost on job %s: it is %s under another lease or none', p_job_id, v_job.status),
    detail = format('job_id=%s', p_job_id);
end
$$;

comment on function examq_internal.explain_lease_miss(bigint, uuid) is
  'Raises job-not-found or lease-lost for a worker call that matched no running job, or '
  'returns the job when the same lease already finished it.';

-- Moves jobs whose lease expired: back to queued (keeping their place in the claim
-- order), to dead when that was their last attempt, or to cancelled when a cancel was
-- requested. Locks with skip locked so concurrent claims split the work, and clears
-- the lease token so the stale worker's late calls are refused.
create function examq_internal.reclaim_expired_leases(p_limit integer) returns integer
language plpgsql volatile
set search_path = ''
as $$
declare
  v_count integer;
begin
  with expired as (
    select j.id
    from public.jobs j
    where j.status = 'running' and j.lease_expires_at < now()
    order by j.lease_expires_at
    limit p_limit
    for update skip locked
  ), moved as (
    update public.jobs j
    set status = case
          when j.cancel_requested_at is not null then 'cancelled'::public.job_status
          when j.attempt >= j.max_attempts then 'dead'::public.job_status
          else 'queued'::public.job_status
        end,
        finished_at = case
          when j.cancel_requested_at is not null or j.attempt >= j.max_attempts then now()
        end,
        error_kind = case when j.cancel_requested_at is not null then 'cancelled' else 'lease_expired' end,
        last_error = format('lease expired: the worker stopped responding during attempt %s', j.attempt),
        eta_at = null,
        lease_token = null,
        lease_expires_at = null,
        worker_id = null,
        updated_at = now()
    from expired e
    where j.id = e.id
    returning j.id, j.user_id, j.status, j.attempt, j.last_error
  )
  insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt, error)
  select m.id, m.user_id, 'system', 'running', m.status, m.attempt, m.last_error
  from moved m;

  get diagnostics v_count = row_count;

  return v_count;
end
$$;

comment on function examq_internal.reclaim_expired_leases(integer) is
  'Returns running jobs whose lease expired to the queue (or dead / cancelled); called by claim_jobs.';

revoke all on all functions in schema examq_internal from public, anon, authenticated;
grant execute on all functions in schema examq_internal to service_role;

-- enqueue_job ---------------------------------------------------------------------
-- Called by signed-in users (for themselves) and by the service role (for any user,
-- or for nobody: a system job). Checks the owner's tier: allowed job types, payload
-- size, attempts and queued-job quota. Locks the owner with an advisory lock so that
-- concurrent enqueues cannot overrun the quota or duplicate an idempotency key.
-- Returns the job; with an idempotency key already used by the owner, returns that
-- job unchanged, whatever its state. Raises EQ001, EQ002, EQ003, EQ004, EQ007, 42501.
-- Definer rights: users have no write privilege on public.jobs.
create function public.enqueue_job(
  p_job_type text,
  p_payload jsonb default '{}'::jsonb,
  p_run_at timestamptz default null,
  p_delay_seconds double precision default null,
  p_idempotency_key text default null,
  p_parent_id bigint default null,
  p_max_attempts integer default null,
  p_user_id uuid default null
) returns public.jobs
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  v_kind text := examq_internal.caller_kind();
  v_user uuid;
  v_actor text;
  v_tier public.tiers;
  v_payload jsonb := coalesce(p_payload, '{}'::jsonb);
  v_run_at timestamptz;
  v_queued integer;
  v_job public.jobs;
begin
  if v_kind = 'anon' then
    raise exception using errcode = '42501', message = 'sign in to enqueue jobs';
  elsif v_kind = 'user' then
    if p_user_id is not null and p_user_id <> auth.uid() then
      raise exception using errcode = '42501', message = 'users may enqueue jobs only for themselves';
    end if;
    v_user := auth.uid();
    v_actor := 'user:' || v_user;
  else
    v_user := p_user_id;
    v_actor := 'service';
  end if;

  if p_job_type is null or not exists (select from public.job_types t where t.name = p_job_type) then
    raise exception using errcode = 'EQ001', message = format('unknown job type %L', left(p_job_type, 100));
  end if;

  if v_user is null then
    select * into v_tier from public.tiers t where t.name = 'system';
  else
    select t.* into v_tier
    from public.tiers t
    where t.name = coalesce((select a.tier from public.accounts a where a.user_id = v_user), 'free');

    if not exists (select from auth.users u where u.id = v_user) then
      raise exception using errcode = 'EQ007', message = format('no user with id %s', v_user);
    end if;
  end if;

  if v_tier.allowed_job_types is not null and not (p_job_type = any (v_tier.allowed_job_types)) then
    raise exception using
      errcode = 'EQ001',
      message = format('job type %L is not available in the %s tier', p_job_type, v_tier.name);
  end if;

  if jsonb_typeof(v_payload) <> 'object' then
    raise exception using
      errcode = 'EQ007',
      message = format('payload must be a JSON object, not %s', jsonb_typeof(v_payload));
  end if;

  if octet_length(v_payload::text) > v_tier.max_payload_bytes then
    raise exception using
      errcode = 'EQ002',
      message = format('payload is %s bytes; the %s tier accepts at most %s',
                       octet_length(v_payload::text), v_tier.name, v_tier.max_payload_bytes);
  end if;

  if examq_internal.payload_problem(v_payload) is not null then
    raise exception using errcode = 'EQ007', message = examq_internal.payload_problem(v_payload);
  end if;

  if p_run_at is not null and p_delay_seconds is not null then
    raise exception using errcode = 'EQ007', message = 'give either run_at or delay_seconds, not both';
  end if;

  if p_delay_seconds is not null and not (p_delay_seconds between 0 and 31536000) then
    raise exception using
      errcode = 'EQ007',
      message = format('delay_seconds must be between 0 and 31536000, not %s', p_delay_seconds);
  end if;

  if p_run_at is not null and not (p_run_at between now() - interval '8784 hours' and now() + interval '8784 hours') then
    raise exception using
      errcode = 'EQ007',
      message = format('run_at must be within a year of now, not %s', p_run_at);
  end if;

  if p_max_attempts is not null
     and not (p_max_attempts between 1 and case when v_kind = 'user' then v_tier.default_max_attempts else 1000 end) then
    raise exception using
      errcode = 'EQ007',
      message = format('max_attempts must be between 1 and %s, not %s',
                       case when v_kind = 'user' then v_tier.default_max_attempts else 1000 end, p_max_attempts);
  end if;

  if p_idempotency_key is not null and length(p_idempotency_key) not between 1 and 200 then
    raise exception using errcode = 'EQ007', message = 'idempotency_key must be 1 to 200 characters';
  end if;

  if p_parent_id is not null and not exists (
    select from public.jobs j where j.id = p_parent_id and (v_kind = 'service' or j.user_id = v_user)
  ) then
    raise exception using errcode = 'EQ004', message = format('parent job %s not found', p_parent_id);
  end if;

  -- Serialise this owner's enqueues: the quota count and the idempotency lookup below
  -- must not interleave with another enqueue of the same owner.
  perform pg_advisory_xact_lock(hashtextextended('examq.enqueue:' || coalesce(v_user::text, 'system'), 0));

  if p_idempotency_key is not null then
    select * into v_job
    from public.jobs j
    where j.user_id is not distinct from v_user and j.idempotency_key = p_idempotency_key;

    if found then
      return v_job;
    end if;
  end if;

  if v_user is not null then
    -- Jobs waiting for a parent count too: they become queued without another check.
    select count(*) into v_queued
    from public.jobs j
    where j.user_id = v_user and j.status not in ('running', 'succeeded', 'dead', 'cancelled');

    if v_queued >= v_tier.max_queued_per_user then
      raise exception using
        errcode = 'EQ003',
        message = format('queued-job quota reached: the %s tier allows %s queued jobs per user',
                         v_tier.name, v_tier.max_queued_per_user);
    end if;
  end if;

  -- A run_at in the past means "now": it must not buy a place ahead of jobs that
  -- were enqueued earlier.
  v_run_at := greatest(now(), coalesce(p_run_at, now() + make_interval(secs => coalesce(p_delay_seconds, 0))));

  insert into public.jobs
    (job_type, user_id, tier, payload, run_at, sort_at, max_attempts, idempotency_key, parent_id)
  values
    (p_job_type, v_user, v_tier.name, v_payload, v_run_at,
     v_run_at - make_interval(secs => v_tier.head_start_seconds),
     coalesce(p_max_attempts, v_tier.default_max_attempts), p_idempotency_key, p_parent_id)
  returning * into v_job;

  insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt)
  values (v_job.id, v_job.user_id, v_actor, null, 'queued', 0);

  return v_job;
end
$$;

comment on function public.enqueue_job(text, jsonb, timestamptz, double precision, text, bigint, integer, uuid) is
  'Adds a job for the signed-in user (or, with the service role, for p_user_id or the '
  'system), enforcing the owner''s tier limits. Returns the job; an idempotency key '
  'already used by the owner returns the existing job unchanged.';

revoke execute on function public.enqueue_job(text, jsonb, timestamptz, double precision, text, bigint, integer, uuid)
  from public, anon;
grant execute on function public.enqueue_job(text, jsonb, timestamptz, double precision, text, bigint, integer, uuid)
  to authenticated, service_role;

-- claim_jobs ----------------------------------------------------------------------
-- Called by workers with the service role. First returns expired leases to the
-- queue, then takes up to p_limit queued jobs whose run_at has come, in claim order
-- (sort_at, id), skipping rows other claims hold (skip locked) and users already at
-- their tier's running cap. Each claimed job gets a new lease token and lease expiry.
-- Locks: the claimed rows, and an advisory lock per owner of a candidate job for the
-- rest of the transaction, so that two claims cannot both fill a user's last slot.
-- Returns the claimed jobs. Raises EQ007 for bad arguments.
create function public.claim_jobs(
  p_worker_id text,
  p_limit integer default 10,
  p_job_types text[] default null,
  p_lease_seconds integer default null
) returns setof public.jobs
language plpgsql volatile
set search_path = ''
as $$
declare
  v_capped uuid[];
  v_ids bigint[];
  v_user uuid;
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

  -- Exactly the batch is locked: a candidate locked here but left unclaimed would be
  -- skipped by a concurrent claim, letting later jobs overtake it. A batch may come
  -- back short when a user's cap drops a candidate; those jobs could not run anyway.
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

  for v_user in
    select distinct j.user_id from public.jobs j
    where j.id = any (v_ids) and j.user_id is not null
    order by 1
  loop
    perform pg_advisory_xact_lock(hashtextextended('examq.claim:' || v_user::text, 0));
  end loop;

  -- A new statement, so a new snapshot: it sees every claim committed by whoever held
  -- the advisory locks before us.
  return query
  with candidates as (
    select j.id, j.user_id, j.sort_at,
           row_number() over (partition by j.user_id order by j.sort_at, j.id) as nth
    from public.jobs j
    where j.id = any (v_ids) and j.status = 'queued'
  ), admitted as (
    select c.id
    from candidates c
    left join public.accounts a on a.user_id = c.user_id
    left join public.tiers t on t.name = coalesce(a.tier, 'free')
    where c.user_id is null
       or c.nth + (select count(*) from public.jobs r where r.user_id = c.user_id and r.status = 'running')
          <= t.max_running_per_user
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
    returning j.*
  ), logged as (
    insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt)
    select c.id, c.user_id, 'worker:' || p_worker_id, 'queued', 'running', c.attempt
    from claimed c
  )
  select c.* from claimed c order by c.sort_at, c.id;
end
$$;

comment on function public.claim_jobs(text, integer, text[], integer) is
  'Worker call: reclaims expired leases, then leases up to p_limit ready jobs in '
  'tier-fair order within per-user caps. Returns the claimed jobs with their lease tokens.';

revoke execute on function public.claim_jobs(text, integer, text[], integer) from public, anon, authenticated;
grant execute on function public.claim_jobs(text, integer, text[], integer) to service_role;

-- heartbeat_job -------------------------------------------------------------------
-- Called by the worker holding the lease. Extends the lease, records progress (0 to
-- 100) and a message, and derives an ETA from the rate observed since the attempt
-- started. Returns {job_id, cancel_requested, lease_expires_at, progress, eta_at}.
-- Raises EQ004, EQ005 (lease lost), EQ007.
create function public.heartbeat_job(
  p_job_id bigint,
  p_lease_token uuid,
  p_progress double precision default null,
  p_message text default null,
  p_extend_seconds integer default null
) returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
  v_job public.jobs;
begin
  if p_progress is not null and not (p_progress between 0 and 100) then
    raise exception using errcode = 'EQ007', message = format('progress must be between 0 and 100, not %s', p_progress);
  end if;

  if p_extend_seconds is not null and p_extend_seconds not between 5 and 86400 then
    raise exception using
      errcode = 'EQ007',
      message = format('extend_seconds must be between 5 and 86400, not %s', p_extend_seconds);
  end if;

  update public.jobs j
  set lease_expires_at = greatest(j.lease_expires_at,
                                  now() + make_interval(secs => coalesce(p_extend_seconds, jt.lease_seconds))),
      -- Stored with two decimals; a running job never shows 100 before it ends.
      progress = case when p_progress is null then j.progress
                      when p_progress < 100 then least(round(p_progress::numeric, 2), 99.99)
                      else 100 end,
      progress_message = coalesce(left(p_message, 500), j.progress_message),
      eta_at = case
        when p_progress is null then j.eta_at
        when p_progress >= 100 then now()
        -- Below half a percent the rate says nothing yet, and the estimate could
        -- overflow; estimates beyond a year are dropped as meaningless.
        when p_progress >= 0.5 and (now() - j.started_at) * (100 / p_progress) < interval '8760 hours'
          then j.started_at + (now() - j.started_at) * (100 / p_progress)
        else null
      end,
      updated_at = now()
  from public.job_types jt
  where j.id = p_job_id and j.status = 'running' and j.lease_token = p_lease_token and jt.name = j.job_type
  returning j.* into v_job;

  if not found then
    v_job := examq_internal.explain_lease_miss(p_job_id, p_lease_token);
    raise exception using
      errcode = 'EQ005',
      message = format('lease lost on job %s: it is already %s', p_job_id, v_job.status),
      detail = format('job_id=%s', p_job_id);
  end if;

  return jsonb_build_object(
    'job_id', v_job.id,
    'cancel_requested', v_job.cancel_requested_at is not null,
    'lease_expires_at', v_job.lease_expires_at,
    'progress', v_job.progress,
    'eta_at', v_job.eta_at
  );
end
$$;

comment on function public.heartbeat_job(bigint, uuid, double precision, text, integer) is
  'Worker call: extends the lease, records progress and ETA, and reports whether a '
  'cancel was requested.';

revoke execute on function public.heartbeat_job(bigint, uuid, double precision, text, integer) from public, anon, authenticated;
grant execute on function public.heartbeat_job(bigint, uuid, double precision, text, integer) to service_role;

-- complete_job --------------------------------------------------------------------
-- Called by the worker holding the lease. Marks the job succeeded with its result.
-- A repeated call with the same lease after success is a no-op. Returns
-- {job_id, status, outcome: completed | already_completed}. Raises EQ004, EQ005,
-- EQ006 (the same lease already ended the job otherwise).
create function public.complete_job(
  p_job_id bigint,
  p_lease_token uuid,
  p_result jsonb default null
) returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
  v_job public.jobs;
begin
  update public.jobs j
  set status = 'succeeded',
      result = p_result,
      -- Errors of earlier attempts stay in job_events; the job itself succeeded.
      last_error = null,
      error_kind = null,
      progress = 100,
      progress_message = null,
      eta_at = null,
      lease_expires_at = null,
      finished_at = now(),
      updated_at = now()
  where j.id = p_job_id and j.status = 'running' and j.lease_token = p_lease_token
  returning j.* into v_job;

  if found then
    insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt)
    values (v_job.id, v_job.user_id, 'worker:' || v_job.worker_id, 'running', 'succeeded', v_job.attempt);

    return jsonb_build_object('job_id', v_job.id, 'status', v_job.status, 'outcome', 'completed');
  end if;

  v_job := examq_internal.explain_lease_miss(p_job_id, p_lease_token);

  if v_job.status = 'succeeded' then
    return jsonb_build_object('job_id', v_job.id, 'status', v_job.status, 'outcome', 'already_completed');
  end if;

  raise exception using
    errcode = 'EQ006',
    message = format('job %s is already %s; it cannot be completed', p_job_id, v_job.status),
    detail = format('job_id=%s', p_job_id);
end
$$;

comment on function public.complete_job(bigint, uuid, jsonb) is
  'Worker call: marks a running job succeeded with its result; repeated calls with the '
  'same lease are no-ops.';

revoke execute on function public.complete_job(bigint, uuid, jsonb) from public, anon, authenticated;
grant execute on function public.complete_job(bigint, uuid, jsonb) to service_role;

-- fail_job ------------------------------------------------------------------------
-- Called by the worker holding the lease. p_kind says how the attempt failed:
-- 'retryable' schedules a retry after a backoff (or sends the job to the dead-letter
-- queue when it was the last attempt), 'permanent' sends it to the dead-letter queue
-- at once, 'cancelled' acknowledges a cancel request. A retryable failure of a job
-- whose cancel was requested ends it cancelled. The error text is stored truncated;
-- any text is accepted. Returns {job_id, status, outcome: retry_scheduled | dead |
-- cancelled | already_failed, run_at}. Raises EQ004, EQ005, EQ006, EQ007.
create function public.fail_job(
  p_job_id bigint,
  p_lease_token uuid,
  p_error text,
  p_kind text default 'retryable'
) returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
  v_job public.jobs;
  v_worker_id text;
  v_error text := left(coalesce(nullif(p_error, ''), 'the job failed without a message'), 4000);
begin
  if p_kind is null or p_kind not in ('retryable', 'permanent', 'cancelled') then
    raise exception using
      errcode = 'EQ007',
      message = format('kind must be retryable, permanent or cancelled, not %L', p_kind);
  end if;

  -- The update below clears worker_id on a retry; the event names the worker.
  select j.worker_id into v_worker_id
  from public.jobs j
  where j.id = p_job_id and j.status = 'running' and j.lease_token = p_lease_token
  for update;

  update public.jobs j
  set status = case
        when p_kind = 'cancelled' or j.cancel_requested_at is not null then 'cancelled'::public.job_status
        when p_kind = 'permanent' or j.attempt >= j.max_attempts then 'dead'::public.job_status
        else 'queued'::public.job_status
      end,
      error_kind = case
        when p_kind = 'cancelled' or j.cancel_requested_at is not null then 'cancelled'
        when p_kind = 'permanent' then 'permanent'
        when j.attempt >= j.max_attempts then 'exhausted'
        else 'retryable'
      end,
      last_error = v_error,
      run_at = case
        when p_kind = 'retryable' and j.cancel_requested_at is null and j.attempt < j.max_attempts
          then now() + make_interval(secs => examq_internal.retry_delay_seconds(
                 j.attempt, jt.retry_base_seconds, jt.retry_max_seconds))
        else j.run_at
      end,
      lease_token = case
        when p_kind = 'retryable' and j.cancel_requested_at is null and j.attempt < j.max_attempts then null
        else j.lease_token
      end,
      lease_expires_at = null,
      worker_id = case
        when p_kind = 'retryable' and j.cancel_requested_at is null and j.attempt < j.max_attempts then null
        else j.worker_id
      end,
      eta_at = null,
      finished_at = case
        when p_kind = 'retryable' and j.cancel_requested_at is null and j.attempt < j.max_attempts then null
        else now()
      end,
      updated_at = now()
  from public.job_types jt
  where j.id = p_job_id and j.status = 'running' and j.lease_token = p_lease_token and jt.name = j.job_type
  returning j.* into v_job;

  if found then
    -- The retry keeps its tier's head start relative to its new run_at.
    if v_job.status = 'queued' then
      update public.jobs j
      set sort_at = j.run_at - make_interval(secs => t.head_start_seconds)
      from public.tiers t
      where j.id = v_job.id and t.name = j.tier;
    end if;

    insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt, error, details)
    values (v_job.id, v_job.user_id, 'worker:' || coalesce(v_worker_id, 'unknown'), 'running', v_job.status,
            v_job.attempt, v_error, jsonb_build_object('kind', v_job.error_kind, 'run_at', v_job.run_at));

    return jsonb_build_object(
      'job_id', v_job.id,
      'status', v_job.status,
      'outcome', case v_job.status when 'queued' then 'retry_scheduled' else v_job.status::text end,
      'run_at', v_job.run_at
    );
  end if;

  v_job := examq_internal.explain_lease_miss(p_job_id, p_lease_token);

  if v_job.status in ('dead', 'cancelled') then
    return jsonb_build_object('job_id', v_job.id, 'status', v_job.status, 'outcome', 'already_failed',
                              'run_at', v_job.run_at);
  end if;

  raise exception using
    errcode = 'EQ006',
    message = format('job %s is already %s; it cannot be failed', p_job_id, v_job.status),
    detail = format('job_id=%s', p_job_id);
end
$$;

comment on function public.fail_job(bigint, uuid, text, text) is
  'Worker call: records a failed attempt; retries with backoff, dead-letters, or '
  'acknowledges a cancel, by p_kind and the attempts left.';

revoke execute on function public.fail_job(bigint, uuid, text, text) from public, anon, authenticated;
grant execute on function public.fail_job(bigint, uuid, text, text) to service_role;

-- cancel_job ----------------------------------------------------------------------
-- Called by the job's owner, an admin, or the service role. A queued job ends
-- cancelled at once; a running job gets a cancel request that its worker sees at the
-- next heartbeat; a finished job is left as it is. Locks the job row, so it is
-- serialised with a concurrent completion and exactly one of them decides the final
-- state. Returns {job_id, status, outcome: cancelled | cancel_requested |
-- already_finished}. Raises EQ004 (also for jobs the caller may not see), 42501.
-- Definer rights: users have no write privilege on public.jobs.
create function public.cancel_job(
  p_job_id bigint,
  p_reason text default null
) returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  v_kind text := examq_internal.caller_kind();
  v_job public.jobs;
  v_actor text;
  v_reason text := left(coalesce(nullif(p_reason, ''), 'cancelled on request'), 500);
begin
  if v_kind = 'anon' then
    raise exception using errcode = '42501', message = 'sign in to cancel jobs';
  end if;

  select * into v_job from public.jobs j where j.id = p_job_id for update;

  if not found or (v_kind = 'user' and v_job.user_id is distinct from auth.uid() and not public.is_admin()) then
    raise exception using errcode = 'EQ004', message = format('job %s not found', p_job_id);
  end if;

  v_actor := case
    when v_kind = 'service' then 'service'
    when v_job.user_id = auth.uid() then 'user:' || auth.uid()
    else 'admin:' || auth.uid()
  end;

  if v_job.status = 'queued' then
    update public.jobs j
    set status = 'cancelled', finished_at = now(), error_kind = 'cancelled', last_error = v_reason,
        updated_at = now()
    where j.id = p_job_id;

    insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt, error)
    values (v_job.id, v_job.user_id, v_actor, 'queued', 'cancelled', v_job.attempt, v_reason);

    return jsonb_build_object('job_id', v_job.id, 'status', 'cancelled', 'outcome', 'cancelled');
  end if;

  if v_job.status = 'running' then
    if v_job.cancel_requested_at is null then
      update public.jobs j
      set cancel_requested_at = now(), updated_at = now()
      where j.id = p_job_id;

      insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt, details)
      values (v_job.id, v_job.user_id, v_actor, 'running', 'running', v_job.attempt,
              jsonb_build_object('cancel_requested', true, 'reason', v_reason));
    end if;

    return jsonb_build_object('job_id', v_job.id, 'status', 'running', 'outcome', 'cancel_requested');
  end if;

  return jsonb_build_object('job_id', v_job.id, 'status', v_job.status, 'outcome', 'already_finished');
end
$$;

comment on function public.cancel_job(bigint, text) is
  'Cancels a queued job at once or asks a running job''s worker to stop; owners, admins '
  'and the service role may call it.';

revoke execute on function public.cancel_job(bigint, text) from public, anon;
grant execute on function public.cancel_job(bigint, text) to authenticated, service_role;

-- requeue_job ---------------------------------------------------------------------
-- Called by admins and the service role. Puts a dead or cancelled job back in the
-- queue with a fresh set of attempts, to run now. Locks the job row. Returns
-- {job_id, status, outcome: requeued}. Raises EQ004, EQ006, 42501.
-- Definer rights: admins are ordinary authenticated users without write privileges.
create function public.requeue_job(
  p_job_id bigint,
  p_reason text default null
) returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  v_kind text := examq_internal.caller_kind();
  v_job public.jobs;
  v_actor text;
begin
  if v_kind = 'anon' or (v_kind = 'user' and not public.is_admin()) then
    raise exception using errcode = '42501', message = 'only admins may requeue jobs';
  end if;

  v_actor := case when v_kind = 'service' then 'service' else 'admin:' || auth.uid() end;

  select * into v_job from public.jobs j where j.id = p_job_id for update;

  if not found then
    raise exception using errcode = 'EQ004', message = format('job %s not found', p_job_id);
  end if;

  if v_job.status not in ('dead', 'cancelled') then
    raise exception using
      errcode = 'EQ006',
      message = format('job %s is %s; only dead or cancelled jobs can be requeued', p_job_id, v_job.status);
  end if;

  update public.jobs j
  set status = 'queued',
      attempt = 0,
      run_at = now(),
      sort_at = now() - make_interval(secs => t.head_start_seconds),
      lease_token = null,
      lease_expires_at = null,
      worker_id = null,
      cancel_requested_at = null,
      progress = null,
      progress_message = null,
      eta_at = null,
      result = null,
      last_error = null,
      error_kind = null,
      finished_at = null,
      updated_at = now()
  from public.tiers t
  where j.id = p_job_id and t.name = j.tier;

  insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt, details)
  values (v_job.id, v_job.user_id, v_actor, v_job.status, 'queued', 0,
          jsonb_build_object('reason', left(coalesce(p_reason, 'requeued'), 500),
                             'previous_attempts', v_job.attempt));

  return jsonb_build_object('job_id', v_job.id, 'status', 'queued', 'outcome', 'requeued');
end
$$;

comment on function public.requeue_job(bigint, text) is
  'Admin call: returns a dead or cancelled job to the queue with fresh attempts.';

revoke execute on function public.requeue_job(bigint, text) from public, anon;
grant execute on function public.requeue_job(bigint, text) to authenticated, service_role;

-- get_job -------------------------------------------------------------------------
-- Reads one job with the caller's rights (row-level security applies). Returns the
-- job. Raises EQ004 when it does not exist or is not visible to the caller.
create function public.get_job(p_job_id bigint) returns public.jobs
language plpgsql stable
set search_path = ''
as $$
declare
  v_job public.jobs;
begin
  select * into v_job from public.jobs j where j.id = p_job_id;

  if not found then
    raise exception using errcode = 'EQ004', message = format('job %s not found', p_job_id);
  end if;

  return v_job;
end
$$;

comment on function public.get_job(bigint) is 'Reads one job, subject to row-level security.';

revoke execute on function public.get_job(bigint) from public, anon;
grant execute on function public.get_job(bigint) to authenticated, service_role;

-- release_job ---------------------------------------------------------------------
-- Called by a worker that claimed a job but will not start it (its time budget ran
-- out). Returns the job to the queue as if this claim had not happened: the attempt
-- is given back and the job keeps its place in the claim order. A job whose cancel
-- was requested meanwhile ends cancelled instead. Returns {job_id, status, outcome:
-- released | cancelled}. Raises EQ004, EQ005.
create function public.release_job(
  p_job_id bigint,
  p_lease_token uuid
) returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
  v_job public.jobs;
begin
  update public.jobs j
  set status = case when j.cancel_requested_at is null then 'queued' else 'cancelled' end::public.job_status,
      attempt = case when j.cancel_requested_at is null then j.attempt - 1 else j.attempt end,
      lease_token = case when j.cancel_requested_at is null then null else j.lease_token end,
      lease_expires_at = null,
      worker_id = case when j.cancel_requested_at is null then null else j.worker_id end,
      first_started_at = case when j.attempt = 1 and j.cancel_requested_at is null then null else j.first_started_at end,
      finished_at = case when j.cancel_requested_at is null then null else now() end,
      error_kind = case when j.cancel_requested_at is null then j.error_kind else 'cancelled' end,
      progress = null,
      progress_message = null,
      eta_at = null,
      updated_at = now()
  where j.id = p_job_id and j.status = 'running' and j.lease_token = p_lease_token
  returning j.* into v_job;

  if not found then
    v_job := examq_internal.explain_lease_miss(p_job_id, p_lease_token);
    raise exception using
      errcode = 'EQ005',
      message = format('lease lost on job %s: it is already %s', p_job_id, v_job.status),
      detail = format('job_id=%s', p_job_id);
  end if;

  insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt, details)
  values (v_job.id, v_job.user_id, 'system', 'running', v_job.status, v_job.attempt,
          jsonb_build_object('released', true));

  return jsonb_build_object(
    'job_id', v_job.id,
    'status', v_job.status,
    'outcome', case v_job.status when 'queued' then 'released' else 'cancelled' end
  );
end
$$;

comment on function public.release_job(bigint, uuid) is
  'Worker call: gives back a claimed job that was not started, without using an attempt '
  '(or ends it cancelled when a cancel was requested meanwhile).';

revoke execute on function public.release_job(bigint, uuid) from public, anon, authenticated;
grant execute on function public.release_job(bigint, uuid) to service_role;
