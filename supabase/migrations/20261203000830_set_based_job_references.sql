-- The references of public.jobs are checked once per statement instead of once per row,
-- and enqueue_job counts the owner's queued jobs without reading their history.
--
-- A job names its job type, its tier and its owner. As foreign keys, each of the
-- three ran one lookup-and-lock query per inserted row: for a batch of 1,000 jobs,
-- 3,000 queries that found the same few rows again and again, a third of what
-- enqueue_jobs spent inside PostgreSQL. They are replaced by triggers that keep the
-- same guarantees:
--
-- - Inserting jobs: one statement trigger locks the job types, tiers and users the
--   new jobs name, each once, FOR KEY SHARE (the lock a foreign key check takes), then
--   raises 23503 if any is missing. A delete of one of them that is under way makes the
--   insert wait for it; a delete that committed first leaves nothing to lock and the
--   insert fails; a delete that comes later waits for the inserting transaction and
--   then sees its jobs.
-- - Changing a job's job type, tier or owner: the same check, for that row. The queue
--   functions never change them, so the trigger does not fire on their updates.
-- - Deleting or renaming a job type or a tier that jobs still name: refused with 23503,
--   as the foreign keys' default (no action) refused it.
-- - Deleting a user deletes their jobs (and, through jobs_delete_events, the jobs'
--   events), as `on delete cascade` did; changing a user's id while jobs name it is
--   refused.
--
-- The error messages name the missing row, which the foreign keys' messages did too.
-- parent_id keeps its foreign key: it is null for most jobs, where the check costs
-- nothing.

alter table public.jobs
  drop constraint jobs_job_type_fkey,
  drop constraint jobs_tier_fkey,
  drop constraint jobs_user_id_fkey;

comment on column public.jobs.job_type is
  'The job type (public.job_types.name); checked on insert, kept while jobs name it.';
comment on column public.jobs.tier is
  'The owner''s tier when the job was enqueued (public.tiers.name); checked on insert, kept while jobs name it.';
comment on column public.jobs.user_id is
  'The owner (auth.users.id), null for system jobs; checked on insert; the jobs go when the user goes.';

-- Called by the triggers below with the distinct job types, tiers and owners of the
-- jobs being written (no nulls, no repeats). Locks each referenced row FOR KEY SHARE
-- and counts what it locked; a count short of its list means a missing row, which a
-- second query names in a 23503. The locks come first: a concurrent delete of one of
-- the rows either waits for this transaction or, committed first, leaves nothing to
-- lock. Only the locking queries run on the common path, each with its one generic
-- plan: left to choose, PostgreSQL plans array parameters afresh on every call, which
-- costs more than the lookups.
create function examq_internal.check_job_references(
  p_job_types text[],
  p_tiers text[],
  p_users uuid[]
) returns void
language plpgsql volatile security definer
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
declare
  v_locked integer;
  v_missing text;
begin
  select count(*) into v_locked
  from (select from public.job_types t where t.name = any (p_job_types) for key share of t) l;

  if v_locked < coalesce(cardinality(p_job_types), 0) then
    select format('job type %L does not exist', x.name) into v_missing
    from unnest(p_job_types) x (name)
    where not exists (select from public.job_types t where t.name = x.name)
    order by x.name
    limit 1;
  end if;

  if v_missing is null then
    select count(*) into v_locked
    from (select from public.tiers t where t.name = any (p_tiers) for key share of t) l;

    if v_locked < coalesce(cardinality(p_tiers), 0) then
      select format('tier %L does not exist', x.name) into v_missing
      from unnest(p_tiers) x (name)
      where not exists (select from public.tiers t where t.name = x.name)
      order by x.name
      limit 1;
    end if;
  end if;

  if v_missing is null and p_users is not null then
    select count(*) into v_locked
    from (select from auth.users u where u.id = any (p_users) for key share of u) l;

    if v_locked < cardinality(p_users) then
      select format('no user with id %s', x.id) into v_missing
      from unnest(p_users) x (id)
      where not exists (select from auth.users u where u.id = x.id)
      order by x.id
      limit 1;
    end if;
  end if;

  if v_missing is not null then
    raise exception using
      errcode = '23503',
      message = 'a job names what is not there: ' || v_missing,
      table = 'jobs',
      schema = 'public';
  end if;
end
$$;

comment on function examq_internal.check_job_references(text[], text[], uuid[]) is
  'Locks the job types, tiers and users that jobs being written name (FOR KEY SHARE) '
  'and raises 23503 for the first that does not exist.';

revoke all on function examq_internal.check_job_references(text[], text[], uuid[]) from public, anon, authenticated;
grant execute on function examq_internal.check_job_references(text[], text[], uuid[]) to service_role;

-- AFTER INSERT on public.jobs, once per statement.
create function examq_internal.check_new_job_references() returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  v_job_types text[];
  v_tiers text[];
  v_users uuid[];
begin
  -- One pass over the new rows: a query on a transition table is planned anew each
  -- time, so the checks themselves take arrays.
  select array_agg(distinct n.job_type),
         array_agg(distinct n.tier),
         array_agg(distinct n.user_id) filter (where n.user_id is not null)
  into v_job_types, v_tiers, v_users
  from new_jobs n;

  perform examq_internal.check_job_references(v_job_types, v_tiers, v_users);

  return null;
end
$$;

comment on function examq_internal.check_new_job_references() is
  'Trigger on jobs, once per insert statement: the new jobs'' job types, tiers and owners exist.';

revoke all on function examq_internal.check_new_job_references() from public, anon, authenticated;

create trigger jobs_check_references
  after insert on public.jobs
  referencing new table as new_jobs
  for each statement
  execute function examq_internal.check_new_job_references();

comment on trigger jobs_check_references on public.jobs is
  'The new jobs'' job types, tiers and owners exist (in place of foreign keys).';

-- AFTER UPDATE of the referencing columns, per row, only when one of them changed.
create function examq_internal.check_changed_job_references() returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  perform examq_internal.check_job_references(
    array[new.job_type],
    array[new.tier],
    case when new.user_id is null then null else array[new.user_id] end
  );

  return null;
end
$$;

comment on function examq_internal.check_changed_job_references() is
  'Trigger on jobs, per row whose job type, tier or owner changed: they exist.';

revoke all on function examq_internal.check_changed_job_references() from public, anon, authenticated;

create trigger jobs_check_changed_references
  after update of job_type, tier, user_id on public.jobs
  for each row
  when (old.job_type is distinct from new.job_type
        or old.tier is distinct from new.tier
        or old.user_id is distinct from new.user_id)
  execute function examq_internal.check_changed_job_references();

comment on trigger jobs_check_changed_references on public.jobs is
  'A job whose job type, tier or owner changes still names rows that exist.';

-- The referenced side ---------------------------------------------------------------

-- AFTER DELETE or UPDATE on public.job_types and public.tiers, once per statement:
-- refuses when a name that jobs use is gone. TG_ARGV[0] is the jobs column to look in.
-- Rare admin edits: the lookup reads the jobs table, as the foreign keys' checks did
-- (neither column has an index of its own).
create function examq_internal.keep_job_references() returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  v_name text;
begin
  -- A delete has no new rows, and its trigger no table for them.
  execute format(
    'select o.name from old_rows o '
    'where %s exists (select from public.jobs j where j.%I = o.name) '
    'order by o.name limit 1',
    case when tg_op = 'UPDATE' then 'not exists (select from new_rows n where n.name = o.name) and' else '' end,
    tg_argv[0])
  into v_name;

  if v_name is not null then
    raise exception using
      errcode = '23503',
      message = format('%s %L is still named by jobs; delete or move those jobs first',
                       replace(tg_argv[0], '_', ' '), v_name),
      table = tg_table_name,
      schema = tg_table_schema;
  end if;

  return null;
end
$$;

comment on function examq_internal.keep_job_references() is
  'Trigger on job_types and tiers, once per statement: a name that jobs use may not go.';

revoke all on function examq_internal.keep_job_references() from public, anon, authenticated;

create trigger job_types_keep_job_references
  after update on public.job_types
  referencing old table as old_rows new table as new_rows
  for each statement
  execute function examq_internal.keep_job_references('job_type');

comment on trigger job_types_keep_job_references on public.job_types is
  'A job type that jobs name cannot be renamed.';

create trigger job_types_keep_job_references_on_delete
  after delete on public.job_types
  referencing old table as old_rows
  for each statement
  execute function examq_internal.keep_job_references('job_type');

comment on trigger job_types_keep_job_references_on_delete on public.job_types is
  'A job type that jobs name cannot be deleted.';

create trigger tiers_keep_job_references
  after update on public.tiers
  referencing old table as old_rows new table as new_rows
  for each statement
  execute function examq_internal.keep_job_references('tier');

comment on trigger tiers_keep_job_references on public.tiers is
  'A tier that jobs name cannot be renamed.';

create trigger tiers_keep_job_references_on_delete
  after delete on public.tiers
  referencing old table as old_rows
  for each statement
  execute function examq_internal.keep_job_references('tier');

comment on trigger tiers_keep_job_references_on_delete on public.tiers is
  'A tier that jobs name cannot be deleted.';

-- AFTER DELETE on auth.users, once per statement: the users' jobs go with them.
create function examq_internal.delete_user_jobs() returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  delete from public.jobs j
  using old_users o
  where j.user_id = o.id;

  return null;
end
$$;

comment on function examq_internal.delete_user_jobs() is
  'Trigger on auth.users, once per delete statement: deletes the users'' jobs.';

revoke all on function examq_internal.delete_user_jobs() from public, anon, authenticated;

create trigger examq_delete_user_jobs
  after delete on auth.users
  referencing old table as old_users
  for each statement
  execute function examq_internal.delete_user_jobs();

comment on trigger examq_delete_user_jobs on auth.users is
  'Deletes a deleted user''s jobs, as ON DELETE CASCADE did.';

-- AFTER UPDATE of id on auth.users, per row whose id changed: refused while jobs name
-- the old id.
create function examq_internal.keep_user_job_references() returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  if exists (select from public.jobs j where j.user_id = old.id) then
    raise exception using
      errcode = '23503',
      message = format('user %s is still named by jobs; their id cannot change', old.id),
      table = tg_table_name,
      schema = tg_table_schema;
  end if;

  return null;
end
$$;

comment on function examq_internal.keep_user_job_references() is
  'Trigger on auth.users, per row whose id changed: refused while jobs name the old id.';

revoke all on function examq_internal.keep_user_job_references() from public, anon, authenticated;

create trigger examq_keep_user_job_references
  after update of id on auth.users
  for each row
  when (old.id is distinct from new.id)
  execute function examq_internal.keep_user_job_references();

comment on trigger examq_keep_user_job_references on auth.users is
  'A user whose jobs name them keeps their id.';

-- enqueue_job ---------------------------------------------------------------------
-- Unchanged but for the quota count, which read every job the owner ever had (its
-- `status not in (...)` test matches no partial index): with a long history, a single
-- enqueue cost milliseconds. It now counts queued and waiting jobs through their
-- partial indexes, as enqueue_jobs does. The rest of the contract is that of the
-- migration that introduced it.
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

