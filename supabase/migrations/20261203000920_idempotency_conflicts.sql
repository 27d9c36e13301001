-- An idempotency key names one job: repeating it for another job is an error.
--
-- enqueue_job, enqueue_jobs and enqueue_chain returned the job a key already named
-- whatever was asked the second time, so a client that reused a key for another job
-- type or payload was told its job existed and got someone else's. Now a repeat must
-- ask for the same job type and payload as the job the key names (or, within one
-- enqueue_jobs batch, the first element with the key); otherwise it raises EQ009,
-- naming the key and the job it belongs to, and nothing is enqueued. The scheduling
-- options (run_at, delay, attempts) may differ: a retried request computes them
-- again. A step's parent_result is not part of the comparison: the chain adds it to
-- the stored payload. enqueue_chain checks its first step through enqueue_job, as
-- before. Otherwise the contracts are those of the migrations that introduced them.

-- idempotent_payload ----------------------------------------------------------------
-- The part of a payload a repeated enqueue must match: all of it but the
-- parent_result a chain adds.
create function examq_internal.idempotent_payload(p_payload jsonb) returns jsonb
language sql immutable
set search_path = ''
as $$
  select coalesce(p_payload, '{}'::jsonb) - 'parent_result'
$$;

-- idempotency_conflict --------------------------------------------------------------
-- The message of EQ009.
create function examq_internal.idempotency_conflict(p_key text, p_job text, p_job_type text) returns text
language sql immutable
set search_path = ''
as $$
  select format('idempotency key %s is already used by %s (%s) with another job type or payload; '
                'use a new key for a different job', '"' || left(p_key, 100) || '"', p_job, p_job_type)
$$;

revoke all on function examq_internal.idempotent_payload(jsonb) from public, anon, authenticated;
revoke all on function examq_internal.idempotency_conflict(text, text, text) from public, anon, authenticated;
grant execute on function examq_internal.idempotent_payload(jsonb) to service_role;
grant execute on function examq_internal.idempotency_conflict(text, text, text) to service_role;
comment on function examq_internal.idempotent_payload(jsonb) is
  'The part of a payload a repeated idempotency key must match: all but parent_result.';
comment on function examq_internal.idempotency_conflict(text, text, text) is
  'The message of EQ009: which key, and which job it already names.';

-- enqueue_job -----------------------------------------------------------------------
create or replace function public.enqueue_job(
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
      if v_job.job_type <> p_job_type
         or examq_internal.idempotent_payload(v_job.payload) <> examq_internal.idempotent_payload(v_payload) then
        raise exception using
          errcode = 'EQ009',
          message = examq_internal.idempotency_conflict(p_idempotency_key, format('job %s', v_job.id), v_job.job_type);
      end if;
      return v_job;
    end if;
  end if;

  if v_user is not null then
    -- Jobs waiting for a parent count too: they become queued without another check.
    -- Each status through its partial index, so the count costs what is queued, not
    -- what the owner ever ran.
    select (select count(*) from public.jobs j where j.user_id = v_user and j.status = 'queued')
           + (select count(*) from public.jobs j where j.user_id = v_user and j.status = 'waiting')
    into v_queued;

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

-- enqueue_jobs ----------------------------------------------------------------------
create or replace function public.enqueue_jobs(p_jobs jsonb) returns jsonb
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
  v_payload_bytes integer[];
  v_given_users uuid[];
  v_owners uuid[];
  v_keys text[];
  v_run_ats timestamptz[];
  v_delays double precision[];
  v_attempts integer[];
  v_parents bigint[];
  v_batch_types text[];
  v_max_payload_bytes integer;
  v_has_foreign_owner boolean;
  v_has_options boolean;
  v_has_keys boolean;
  v_clear boolean;
  v_has_system boolean;
  v_user_ids uuid[];
  v_user_known boolean[];
  v_user_tiers text[];
  v_existing bigint[];
  v_queued bigint;
  v_unclear uuid[];
  v_sequence regclass;
  v_ids bigint[];
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

  -- Shapes first, so that the input functions below only meet values of the right
  -- JSON type (jsonb_to_recordset would turn a number into a job type, for one).
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

  -- One pass: each field into its array, in input order, through the input function
  -- of its type (a JSON null is an SQL null; a missing or null payload is an empty
  -- object, as in enqueue_job); and what the checks below need to know of the whole
  -- batch.
  begin
    select array_agg(x.job_type), array_agg(x.payload), array_agg(octet_length(x.payload::text)),
           array_agg(x.user_id),
           array_agg(case when v_kind = 'user' then coalesce(x.user_id, v_caller) else x.user_id end),
           array_agg(x.idempotency_key), array_agg(x.run_at), array_agg(x.delay_seconds), array_agg(x.max_attempts),
           array_agg(x.parent_id),
           array_agg(distinct x.job_type),
           max(octet_length(x.payload::text)),
           bool_or(v_kind = 'user' and x.user_id is not null and x.user_id <> v_caller),
           bool_or(x.idempotency_key is not null or x.run_at is not null or x.delay_seconds is not null
                   or x.max_attempts is not null or x.parent_id is not null),
           bool_or(x.idempotency_key is not null),
           bool_or(v_kind <> 'user' and x.user_id is null)
    into v_types, v_payloads, v_payload_bytes, v_given_users, v_owners, v_keys, v_run_ats, v_delays, v_attempts,
         v_parents, v_batch_types, v_max_payload_bytes, v_has_foreign_owner, v_has_options, v_has_keys, v_has_system
    from (
      select r.job_type, coalesce(r.payload, '{}'::jsonb) as payload, r.user_id, r.idempotency_key, r.run_at,
             r.delay_seconds, r.max_attempts, r.parent_id
      from rows from (
             jsonb_to_recordset(p_jobs) as (job_type text, payload jsonb, user_id uuid, idempotency_key text,
                                            run_at timestamptz, delay_seconds double precision,
                                            max_attempts integer, parent_id bigint)
           ) with ordinality
             as r (job_type, payload, user_id, idempotency_key, run_at, delay_seconds, max_attempts, parent_id, ord)
      -- One sort feeds every aggregate in input order (cheaper than an order by in each).
      order by r.ord
    ) x;
  exception
    when invalid_text_representation or invalid_datetime_format or datetime_field_overflow
         or numeric_value_out_of_range or invalid_parameter_value then
      raise exception using errcode = 'EQ007', message = format('a job has an invalid field: %s', sqlerrm);
  end;

  -- Each user owning jobs of the batch, once: whether they exist and their tier (a
  -- user without an account row is in the free tier). Jobs without an owner are in
  -- the system tier.
  select array_agg(o.user_id), array_agg(u.id is not null), array_agg(coalesce(a.tier, 'free'))
  into v_user_ids, v_user_known, v_user_tiers
  from (select distinct x.user_id from unnest(v_owners) as x (user_id) where x.user_id is not null) o
  left join auth.users u on u.id = o.user_id
  left join public.accounts a on a.user_id = o.user_id;

  -- Whether the batch clears enqueue_job's checks as a whole: no job for someone other
  -- than the calling user, no optional field, every owner a user, every job type
  -- registered and allowed in every tier the batch touches, and every payload shorter
  -- than 128 bytes (so readable, see the header) and within the smallest of those
  -- tiers' limits. Then no element can fail a check; otherwise the elements are
  -- checked one by one, and the first that fails raises.
  v_clear := not v_has_foreign_owner
             and not v_has_options
             and v_max_payload_bytes < 128
             and array_position(v_user_known, false) is null
             and (select count(*) from public.job_types jt where jt.name = any (v_batch_types))
                 = cardinality(v_batch_types)
             and not exists (
               select from public.tiers t
               where (t.name = any (v_user_tiers) or (v_has_system and t.name = 'system'))
                 and (t.max_payload_bytes < v_max_payload_bytes
                      or not (t.allowed_job_types is null or v_batch_types <@ t.allowed_job_types)));

  if v_clear is not true then
    -- The first element that fails a check of enqueue_job, in enqueue_job's order.
    select c.ord, c.error
    into v_bad
    from (
      select x.ord,
             case
               when v_kind = 'user' and x.given_user_id is not null and x.given_user_id <> v_caller then
                 array['42501', 'users may enqueue jobs only for themselves']
               when jt.name is null then
                 array['EQ001', format('unknown job type %L', left(x.job_type, 100))]
               when x.owner_id is not null and not o.known then
                 array['EQ007', format('no user with id %s', x.owner_id)]
               when t.allowed_job_types is not null and not (x.job_type = any (t.allowed_job_types)) then
                 array['EQ001', format('job type %L is not available in the %s tier', x.job_type, t.name)]
               when x.payload_bytes > t.max_payload_bytes then
                 array['EQ002', format('payload is %s bytes; the %s tier accepts at most %s',
                                       x.payload_bytes, t.name, t.max_payload_bytes)]
               -- What clients could not read back, refused as enqueue_job refuses it. Both
               -- need a payload of 128 bytes or more (see the header).
               when x.payload_bytes >= 128 and jsonb_path_exists(x.payload, 'strict $.**{64}') then
                 array['EQ007', 'payload is nested more than 64 levels deep']
               when x.payload_bytes >= 128
                    and jsonb_path_exists(x.payload, 'strict $.** ? (@.type() == "number" && (@ > 1e300 || @ < -1e300))') then
                 array['EQ007', 'payload holds a number beyond 1e300, which JSON readers cannot represent']
               when x.run_at is not null and x.delay_seconds is not null then
                 array['EQ007', 'give either run_at or delay_seconds, not both']
               when x.delay_seconds is not null and not (x.delay_seconds between 0 and 31536000) then
                 array['EQ007', format('delay_seconds must be between 0 and 31536000, not %s', x.delay_seconds)]
               when x.run_at is not null
                    and not (x.run_at between now() - interval '8784 hours' and now() + interval '8784 hours') then
                 array['EQ007', format('run_at must be within a year of now, not %s', x.run_at)]
               when x.max_attempts is not null
                    and not (x.max_attempts between 1 and case when v_kind = 'user' then t.default_max_attempts else 1000 end) then
                 array['EQ007', format('max_attempts must be between 1 and %s, not %s',
                                       case when v_kind = 'user' then t.default_max_attempts else 1000 end, x.max_attempts)]
               when x.idempotency_key is not null and length(x.idempotency_key) not between 1 and 200 then
                 array['EQ007', 'idempotency_key must be 1 to 200 characters']
               when x.parent_id is not null and not exists (
                      select from public.jobs p
                      where p.id = x.parent_id and (v_kind = 'service' or p.user_id = x.owner_id)) then
                 array['EQ004', format('parent job %s not found', x.parent_id)]
             end as error
      from unnest(v_types, v_payloads, v_payload_bytes, v_given_users, v_owners, v_keys, v_run_ats, v_delays,
                  v_attempts, v_parents) with ordinality
             as x (job_type, payload, payload_bytes, given_user_id, owner_id, idempotency_key, run_at, delay_seconds,
                   max_attempts, parent_id, ord)
      left join unnest(v_user_ids, v_user_known, v_user_tiers) as o (user_id, known, tier) on o.user_id = x.owner_id
      left join public.tiers t on t.name = coalesce(o.tier, 'system')
      left join public.job_types jt on jt.name = x.job_type
    ) c
    where c.error is not null
    order by c.ord
    limit 1;

    if found then
      raise exception using errcode = v_bad.error[1], message = format('job %s: %s', v_bad.ord, v_bad.error[2]);
    end if;
  end if;

  -- Serialise with every other enqueue of these owners (enqueue_job takes the same
  -- keys): the quota counts and idempotency lookups below must not interleave with
  -- theirs. A fixed order, so two batches cannot deadlock.
  for v_owner in
    select k.owner
    from (
      select u::text as owner from unnest(v_user_ids) u
      union all
      select 'system' where v_has_system
    ) k
    order by 1
  loop
    perform pg_advisory_xact_lock(hashtextextended('examq.enqueue:' || v_owner, 0));
  end loop;

  -- Idempotent repeats: the job an element's key already names, in the table or
  -- earlier in the batch (-ord names the first element with this key, which makes it).
  if v_has_keys then
    -- A key names one job: a repeat must ask for the same job (type and payload) as
    -- the job the key already names, or the earlier element with the key.
    select x.ord, x.idempotency_key, coalesce(e.id, -x.first_ord) as other, coalesce(e.job_type, f.job_type) as other_type
    into v_bad
    from (
      select u.ord, u.owner_id, u.idempotency_key, u.job_type, u.payload,
             min(u.ord) over (partition by u.owner_id, u.idempotency_key) as first_ord
      from unnest(v_owners, v_keys, v_types, v_payloads) with ordinality
             as u (owner_id, idempotency_key, job_type, payload, ord)
    ) x
    left join public.jobs e
      on x.idempotency_key is not null
     and e.user_id is not distinct from x.owner_id
     and e.idempotency_key = x.idempotency_key
    left join unnest(v_types, v_payloads) with ordinality as f (job_type, payload, ord)
      on e.id is null and f.ord = x.first_ord
    where x.idempotency_key is not null
      and (e.id is not null or x.first_ord < x.ord)
      and (coalesce(e.job_type, f.job_type) <> x.job_type
           or examq_internal.idempotent_payload(coalesce(e.payload, f.payload))
              <> examq_internal.idempotent_payload(x.payload))
    order by x.ord
    limit 1;

    if found then
      raise exception using
        errcode = 'EQ009',
        message = format('job %s: %s', v_bad.ord,
                         examq_internal.idempotency_conflict(v_bad.idempotency_key,
                           case when v_bad.other > 0 then format('job %s', v_bad.other)
                                else format('job %s of this batch', -v_bad.other) end,
                           v_bad.other_type));
    end if;

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

    -- Keys that all name new jobs make no repeats.
    if cardinality(array_remove(v_existing, null)) = 0 then
      v_existing := null;
    end if;
  end if;

  -- The quota, per owner: the jobs this batch adds, plus the owner's queued and waiting
  -- jobs (as enqueue_job: jobs waiting for a parent count too), each status counted
  -- through its partial index. The batch's owners are first counted together, in one
  -- pass: that total bounds each owner's own count, so an owner it leaves within the
  -- quota is within it. Only owners it does not clear are counted one by one.
  -- The statement is run with EXECUTE so that the planner sees the owners as a
  -- constant list, which PostgreSQL looks rows up in through a hash table; as a
  -- parameter of a cached plan the list is searched from the start for every row.
  execute 'select (select count(*) from public.jobs q where q.user_id = any ($1) and q.status = ''queued'')
                  + (select count(*) from public.jobs q where q.user_id = any ($1) and q.status = ''waiting'')'
  into v_queued
  using v_user_ids;

  select array_agg(f.owner_id)
  into v_unclear
  from (
    select u.owner_id, count(*) as n
    from unnest(v_owners, v_existing) as u (owner_id, existing)
    where u.owner_id is not null and u.existing is null
    group by u.owner_id
  ) f
  left join public.accounts a on a.user_id = f.owner_id
  join public.tiers t on t.name = coalesce(a.tier, 'free')
  where f.n + v_queued > t.max_queued_per_user;

  if v_unclear is not null then
    select f.owner_id, t.name as tier, t.max_queued_per_user as quota, f.n, f.queued
    into v_bad
    from (
      select u.owner_id, count(*) as n,
             (select count(*) from public.jobs q where q.user_id = u.owner_id and q.status = 'queued')
             + (select count(*) from public.jobs q where q.user_id = u.owner_id and q.status = 'waiting') as queued
      from unnest(v_owners, v_existing) as u (owner_id, existing)
      where u.owner_id = any (v_unclear) and u.existing is null
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
  end if;

  -- Ids are drawn from the table's own sequence in input order first, so that each
  -- element knows its job and jobs enqueued together are claimed in input order.
  v_sequence := pg_get_serial_sequence('public.jobs', 'id')::regclass;

  select array_agg(case when x.existing is null then nextval(v_sequence) end order by x.ord)
  into v_ids
  from unnest(coalesce(v_existing, array_fill(null::bigint, array[v_count]))) with ordinality as x (existing, ord);

  -- Each job gets its owner's tier (the system tier without an owner), a run time (a
  -- run_at in the past means now, as in enqueue_job: it buys no place ahead of jobs
  -- enqueued earlier), the tier's head start and, unless given, its attempts.
  with inserted as (
    insert into public.jobs
      (id, job_type, user_id, tier, payload, run_at, sort_at, max_attempts, idempotency_key, parent_id)
    overriding system value
    select n.id, n.job_type, n.owner_id, t.name, n.payload, r.run_at,
           r.run_at - make_interval(secs => t.head_start_seconds),
           coalesce(n.max_attempts, t.default_max_attempts), n.idempotency_key, n.parent_id
    from unnest(v_ids, v_types, v_owners, v_payloads, v_run_ats, v_delays, v_attempts, v_keys, v_parents)
           as n (id, job_type, owner_id, payload, run_at, delay_seconds, max_attempts, idempotency_key, parent_id)
    left join unnest(v_user_ids, v_user_tiers) as o (user_id, tier) on o.user_id = n.owner_id
    join public.tiers t on t.name = coalesce(o.tier, 'system')
    cross join lateral (
      select greatest(now(), coalesce(n.run_at, now() + make_interval(secs => coalesce(n.delay_seconds, 0))))
    ) r (run_at)
    where n.id is not null
    order by n.id
    returning id, user_id
  )
  insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt)
  select i.id, i.user_id, v_actor, null, 'queued', 0
  from inserted i
  order by i.id;

  -- Every element made a job: the answer is written as text around the ids (numbers,
  -- so nothing needs escaping) and parsed once, a fraction of the cost of building a
  -- JSON object per job.
  if v_existing is null then
    return ('[{"job_id": ' || array_to_string(v_ids, ', "created": true}, {"job_id": ') || ', "created": true}]')::jsonb;
  end if;

  -- An element that repeats an earlier one of the batch (-ord) names that one's job.
  return (
    select jsonb_agg(
             jsonb_build_object(
               'job_id', case when x.existing < 0 then v_ids[-x.existing] else coalesce(x.existing, x.id) end,
               'created', x.id is not null)
             order by x.ord)
    from unnest(v_ids, v_existing) with ordinality as x (id, existing, ord)
  );
end
$$;

