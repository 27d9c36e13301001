-- What the dashboard needs: live changes through Supabase Realtime, a job list that
-- pages by keyset and stays fast on millions of jobs, and bulk requeue for admins.
--
-- Realtime: `public.jobs` and `public.job_events` join the `supabase_realtime`
-- publication, so supabase-js `postgres_changes` subscriptions receive their inserts
-- and updates. Realtime checks each change against the subscriber's SELECT policies
-- (the RLS policies of the first migration), so a teacher receives changes to their
-- own jobs only. DELETE events are not checked against RLS; with the default replica
-- identity (the primary key) the old record of a DELETE carries the id and nothing
-- else, so the tables keep it: `replica identity full` would not widen what RLS lets
-- through, but it would write whole old rows to the WAL for every update.
--
-- The list: `list_jobs` reads newest first, on `(created_at desc, id desc)`, and
-- continues after the last row of the previous page (keyset paging): a page costs the
-- same on the first page and the ten-thousandth, and no page counts the whole table.
--
-- The overview: `queue_stats` is replaced by a version with the same contract and
-- figures that reads the window's jobs once instead of five times and sorts seconds
-- as double precision rather than numeric, and a small partial index serves the
-- "queued and running now" figures and the queue_depth view, which read the whole
-- table without it. On a million jobs (bench/dashboard_queries.py) that takes the
-- 24-hour overview from 0.53 s to 0.12 s, and the 7-day one from 1.56 s to 0.67 s.

-- Realtime publication ------------------------------------------------------------

do $$
declare
  v_all_tables boolean;
begin
  select p.puballtables into v_all_tables
  from pg_catalog.pg_publication p
  where p.pubname = 'supabase_realtime';

  if not found then
    raise exception using
      errcode = 'EQ007',
      message = 'publication supabase_realtime is missing: a Supabase project has it, '
                'and examq''s local stand-in creates it';
  end if;

  -- A publication for all tables already carries these, and refuses `add table`.
  if v_all_tables then
    return;
  end if;

  if not exists (
    select from pg_catalog.pg_publication_tables t
    where t.pubname = 'supabase_realtime' and t.schemaname = 'public' and t.tablename = 'jobs'
  ) then
    alter publication supabase_realtime add table public.jobs;
  end if;

  if not exists (
    select from pg_catalog.pg_publication_tables t
    where t.pubname = 'supabase_realtime' and t.schemaname = 'public' and t.tablename = 'job_events'
  ) then
    alter publication supabase_realtime add table public.job_events;
  end if;
end
$$;

-- Stated, not changed: a DELETE then carries only the primary key (see the header).
alter table public.jobs replica identity default;
alter table public.job_events replica identity default;

-- Indexes for the list --------------------------------------------------------------

-- An admin's list, newest first, and its keyset continuation. A teacher's list uses
-- jobs_user_id_created_at_idx (user_id, created_at desc), which list_jobs reaches
-- by filtering on the caller explicitly (the RLS policies alone are an OR with
-- is_admin(), which no index can serve).
create index jobs_created_at_id_idx on public.jobs (created_at desc, id desc);

-- Jobs queued or running now, for queue_stats and queue_depth: a few thousand rows at
-- most, where a filter on status alone would read every job (the per-status partial
-- indexes above serve one status each, not `status in (...)`). The trailing columns
-- let those queries group and filter without visiting other rows.
create index jobs_active_status_tier_idx on public.jobs (status, tier, job_type, run_at, user_id)
  where status in ('queued', 'running');

-- Search in error text ("timeout", "missing column") without reading every job:
-- trigram GIN on the errors that exist. Supabase keeps extensions in their own schema;
-- where pg_trgm was already installed elsewhere, its operator class is found there.
create schema if not exists extensions;
create extension if not exists pg_trgm with schema extensions;

do $$
declare
  v_schema text;
begin
  select n.nspname into strict v_schema
  from pg_catalog.pg_extension e
  join pg_catalog.pg_namespace n on n.oid = e.extnamespace
  where e.extname = 'pg_trgm';

  execute format(
    'create index jobs_last_error_trgm_idx on public.jobs using gin (last_error %I.gin_trgm_ops) '
    'where last_error is not null',
    v_schema
  );
end
$$;

-- list_jobs -----------------------------------------------------------------------
-- Called by the dashboard (any signed-in user) and the service role. Returns up to
-- p_limit jobs, newest first (created_at desc, id desc), that match every filter
-- given: statuses, job type, tier, created_at in [p_created_from, p_created_to), and
-- p_search, which matches the job id when it is all digits (a leading '#' allowed),
-- else a job type or error text containing it (case-insensitive). With
-- p_before_created_at and p_before_id (the last row of the previous page), continues
-- after that row. A teacher gets their own jobs, an admin and the service role every
-- job: the rule of the jobs table's RLS policies, applied here as a filter. The
-- statement is built from the filters given and run with EXECUTE, so each call is
-- planned for its own filters and values (a generic plan for "filter or null" would
-- read the whole table). Locks nothing. The payload and result are left out: the
-- list never needs them, and they can be megabytes.
-- Raises 42501 for the anon role, EQ007 for a limit outside 1..500 or half a cursor.
-- Definer rights: under RLS, Postgres may not use an index for a condition whose
-- operator is not leakproof, and ILIKE is not, so the error-text search would read
-- every error in the table; running as the owner, with the policies' rule written out
-- (user_id = auth.uid() unless admin), lets the trigram index serve it.
create function public.list_jobs(
  p_statuses public.job_status[] default null,
  p_job_type text default null,
  p_tier text default null,
  p_created_from timestamptz default null,
  p_created_to timestamptz default null,
  p_search text default null,
  p_before_created_at timestamptz default null,
  p_before_id bigint default null,
  p_limit integer default 50
) returns table (
  id bigint,
  job_type text,
  user_id uuid,
  tier text,
  status public.job_status,
  attempt integer,
  max_attempts integer,
  progress numeric,
  progress_message text,
  eta_at timestamptz,
  cancel_requested_at timestamptz,
  error_kind text,
  last_error text,
  created_at timestamptz,
  started_at timestamptz,
  finished_at timestamptz,
  updated_at timestamptz
)
language plpgsql stable security definer
set search_path = ''
as $$
declare
  v_kind text := examq_internal.caller_kind();
  v_uid uuid := auth.uid();
  v_search text := nullif(btrim(coalesce(p_search, '')), '');
  v_pattern text;
  v_job_id bigint;
  v_types text[];
  v_sql text;
begin
  if v_kind = 'anon' then
    raise exception using errcode = '42501', message = 'sign in to list jobs';
  end if;

  if p_limit is null or p_limit not between 1 and 500 then
    raise exception using errcode = 'EQ007', message = format('limit must be between 1 and 500, not %s', p_limit);
  end if;

  if (p_before_created_at is null) <> (p_before_id is null) then
    raise exception using
      errcode = 'EQ007',
      message = 'give both before_created_at and before_id (the last row of the previous page), or neither';
  end if;

  v_sql := 'select j.id, j.job_type, j.user_id, j.tier, j.status, j.attempt, j.max_attempts, '
           'j.progress, j.progress_message, j.eta_at, j.cancel_requested_at, j.error_kind, '
           'left(j.last_error, 500), j.created_at, j.started_at, j.finished_at, j.updated_at '
           'from public.jobs j where true';

  -- The RLS rule of public.jobs: users read their own jobs, admins (and the service
  -- role) all. Written as an equality, the per-user index serves it.
  if v_kind = 'user' and not public.is_admin() then
    v_sql := v_sql || ' and j.user_id = $1';
  end if;

  if p_statuses is not null then
    v_sql := v_sql || ' and j.status = any ($2)';
  end if;

  if p_job_type is not null then
    v_sql := v_sql || ' and j.job_type = $3';
  end if;

  if p_tier is not null then
    v_sql := v_sql || ' and j.tier = $4';
  end if;

  if p_created_from is not null then
    v_sql := v_sql || ' and j.created_at >= $5';
  end if;

  if p_created_to is not null then
    v_sql := v_sql || ' and j.created_at < $6';
  end if;

  if v_search is not null then
    if v_search ~ '^#?[0-9]{1,18}$' then
      v_job_id := ltrim(v_search, '#')::bigint;
      v_sql := v_sql || ' and j.id = $7';
    else
      -- ILIKE's wildcards and escape in the user's text match themselves.
      v_pattern := '%' || replace(replace(replace(v_search, '\', '\\'), '%', '\%'), '_', '\_') || '%';

      -- Job types are few: the ones whose name matches become an equality test, and
      -- the error text is what the trigram index serves.
      select coalesce(array_agg(t.name), '{}') into v_types
      from public.job_types t
      where t.name ilike v_pattern;

      v_sql := v_sql || ' and (j.last_error ilike $8'
               || case when cardinality(v_types) > 0 then ' or j.job_type = any ($9)' else '' end
               || ')';
    end if;
  end if;

  if p_before_created_at is not null then
    v_sql := v_sql || ' and (j.created_at, j.id) < ($10, $11)';
  end if;

  v_sql := v_sql || ' order by j.created_at desc, j.id desc limit $12';

  return query execute v_sql
    using v_uid, p_statuses, p_job_type, p_tier, p_created_from, p_created_to, v_job_id,
          v_pattern, v_types, p_before_created_at, p_before_id, p_limit;
end
$$;

comment on function public.list_jobs(public.job_status[], text, text, timestamptz, timestamptz, text, timestamptz, bigint, integer) is
  'The dashboard''s job list: newest first, filtered, searched and paged by keyset on '
  '(created_at, id). Teachers get their own jobs, admins every job (the RLS rule).';

revoke execute on function public.list_jobs(public.job_status[], text, text, timestamptz, timestamptz, text, timestamptz, bigint, integer)
  from public, anon;
grant execute on function public.list_jobs(public.job_status[], text, text, timestamptz, timestamptz, text, timestamptz, bigint, integer)
  to authenticated, service_role;

-- bulk_requeue --------------------------------------------------------------------
-- Called by admins (the dashboard's dead-letter view) and the service role. Requeues
-- each job with requeue_job, in id order so that two bulk calls lock rows in the same
-- order and cannot deadlock; a job that is missing or no longer dead or cancelled is
-- skipped with its reason instead of failing the others. One transaction: the
-- requeues commit together. Returns {requeued: [ids], skipped: [{job_id, code,
-- reason}]}. Raises 42501 for a caller who is not an admin, EQ007 for more than
-- 1,000 ids.
create function public.bulk_requeue(
  p_job_ids bigint[],
  p_reason text default null
) returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
  v_id bigint;
  v_requeued bigint[] := '{}';
  v_skipped jsonb := '[]'::jsonb;
  v_code text;
  v_message text;
begin
  if auth.role() in ('anon', 'authenticated') and not public.is_admin() then
    raise exception using errcode = '42501', message = 'only admins may requeue jobs';
  end if;

  if p_job_ids is null or cardinality(p_job_ids) > 1000 then
    raise exception using errcode = 'EQ007', message = 'give between 0 and 1000 job ids';
  end if;

  for v_id in select distinct u.id from unnest(p_job_ids) u(id) where u.id is not null order by u.id loop
    begin
      perform public.requeue_job(v_id, coalesce(p_reason, 'bulk requeue from the dashboard'));
      v_requeued := v_requeued || v_id;
    exception when sqlstate 'EQ004' or sqlstate 'EQ006' then
      get stacked diagnostics v_code = returned_sqlstate, v_message = message_text;
      v_skipped := v_skipped || jsonb_build_object('job_id', v_id, 'code', v_code, 'reason', v_message);
    end;
  end loop;

  return jsonb_build_object('requeued', to_jsonb(v_requeued), 'skipped', v_skipped);
end
$$;

comment on function public.bulk_requeue(bigint[], text) is
  'Admin call: requeues many dead or cancelled jobs in one transaction, skipping (with '
  'the reason) those that cannot be requeued.';

revoke execute on function public.bulk_requeue(bigint[], text) from public, anon;
grant execute on function public.bulk_requeue(bigint[], text) to authenticated, service_role;

-- queue_stats ---------------------------------------------------------------------
-- The same contract as in the observability migration: called by the dashboard (any
-- signed-in user; RLS limits what is counted) and by the service role; counts queued
-- and running jobs now, and over the last p_window the jobs finished by status, the
-- success rate, wait (enqueue to first start) and run-time percentiles and the
-- throughput per bucket of p_bucket; returns one JSON object with the same keys and
-- figures. Raises EQ007 for a window outside 1 minute to 31 days or a bucket that
-- makes more than 1,000 points. What changes is the work: the window's jobs are read
-- once into a materialized CTE that every figure aggregates, the three percentiles of
-- a measure come from one sort, and seconds are double precision (date_part) instead
-- of numeric (extract), whose sorts and arithmetic are several times slower.
-- Percentiles are rounded to the millisecond.
create or replace function public.queue_stats(
  p_window interval default interval '24 hours',
  p_bucket interval default interval '1 hour'
) returns jsonb
language plpgsql stable
set search_path = ''
-- The percentile sorts of a 7-day window (a few hundred thousand rows) fit in memory.
set work_mem = '32MB'
as $$
declare
  v_since timestamptz;
  v_result jsonb;
begin
  if p_window is null or p_window < interval '1 minute' or p_window > interval '31 days' then
    raise exception using errcode = 'EQ007', message = 'window must be between 1 minute and 31 days';
  end if;

  -- date_bin cannot bin by months or years; such buckets are refused here.
  if p_bucket is null or p_bucket <= interval '0'
     or extract(month from p_bucket) <> 0 or extract(year from p_bucket) <> 0
     or extract(epoch from p_window) / extract(epoch from p_bucket) > 1000 then
    raise exception using errcode = 'EQ007', message = 'bucket must be positive and make at most 1000 points';
  end if;

  -- Windows are measured in elapsed seconds, so a window of days means the same
  -- span whatever the session's time zone and its daylight-saving changes.
  v_since := now() - make_interval(secs => extract(epoch from p_window));

  with finished as materialized (
    select j.status,
           j.finished_at,
           date_part('epoch', j.first_started_at - j.created_at) as wait_seconds,
           case when j.status = 'succeeded' then date_part('epoch', j.finished_at - j.started_at) end as run_seconds
    from public.jobs j
    where j.finished_at >= v_since
  ), percentiles as materialized (
    select percentile_cont(array[0.5, 0.95, 0.99]) within group (order by f.wait_seconds) as wait,
           (select percentile_cont(array[0.5, 0.95, 0.99]) within group (order by r.run_seconds)
            from finished r
            where r.run_seconds is not null) as run
    from finished f
    where f.wait_seconds is not null
  )
  select jsonb_build_object(
    'generated_at', now(),
    'window_seconds', extract(epoch from p_window),
    'now', (
      select coalesce(jsonb_object_agg(s.status, s.n), '{}'::jsonb)
      from (
        select j.status::text as status, count(*) as n
        from public.jobs j
        where j.status in ('queued', 'running')
        group by j.status
      ) s
    ),
    'queued_by_tier', (
      select coalesce(jsonb_object_agg(s.tier, s.n), '{}'::jsonb)
      from (select j.tier, count(*) as n from public.jobs j where j.status = 'queued' group by j.tier) s
    ),
    'oldest_queued_seconds', (
      select extract(epoch from now() - min(j.run_at))
      from public.jobs j
      where j.status = 'queued' and j.run_at <= now()
    ),
    'finished', (
      select coalesce(jsonb_object_agg(s.status, s.n), '{}'::jsonb)
      from (select f.status::text as status, count(*) as n from finished f group by f.status) s
    ),
    'success_rate', (
      select round(count(*) filter (where f.status = 'succeeded')::numeric / nullif(count(*), 0), 4)
      from finished f
      where f.status in ('succeeded', 'dead')
    ),
    'wait_seconds', (
      select jsonb_build_object('p50', round(p.wait[1]::numeric, 3), 'p95', round(p.wait[2]::numeric, 3),
                                'p99', round(p.wait[3]::numeric, 3))
      from percentiles p
    ),
    'run_seconds', (
      select jsonb_build_object('p50', round(p.run[1]::numeric, 3), 'p95', round(p.run[2]::numeric, 3),
                                'p99', round(p.run[3]::numeric, 3))
      from percentiles p
    ),
    'throughput', (
      select coalesce(jsonb_agg(jsonb_build_object('at', b.at, 'succeeded', b.succeeded, 'failed', b.failed)
                                order by b.at), '[]'::jsonb)
      from (
        select date_bin(p_bucket, f.finished_at, v_since) as at,
               count(*) filter (where f.status = 'succeeded') as succeeded,
               count(*) filter (where f.status = 'dead') as failed
        from finished f
        group by 1
      ) b
    )
  ) into v_result;

  return v_result;
end
$$;
