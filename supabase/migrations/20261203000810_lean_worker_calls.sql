-- Cheaper batched worker calls and a lighter event history table.
--
-- complete_jobs found the jobs it completes by reading every row of public.jobs: its
-- update compared the status as text (to keep the planner off the partial index of
-- running jobs), which also kept it off the primary key, so each call cost a scan of
-- the whole table, finished jobs included. It now reaches its jobs through the
-- primary key, by the array of ids it was given, whatever the table holds.
--
-- claim_job_batch counted each owner's running jobs three times per call (to leave
-- out owners at their cap, to admit candidates, and again under the owners' locks)
-- and carried every claimed row's previous values as one JSON object. It now finds
-- the owners already at their cap, then counts the running jobs of the batch's owners
-- in the statement that picks and admits the candidates, and recounts under the
-- owners' locks; it updates the claimed jobs by primary key and keeps their previous
-- values in arrays. It runs with sequential scans off: the planner, seeing a small
-- table in a fresh database, would otherwise keep a plan that reads every row once
-- the table has grown. The rules are those of the migration that introduced it: claim
-- order, skip locked, exactly the batch locked, per-owner caps exact under
-- concurrency, give-back of the newest jobs of an owner found over its cap.
--
-- job_events is written twice per job on the hot path and read by job (the
-- dashboard's timeline, get_chain, admins in Studio). Its indexes on user_id and on
-- at served no query of the product, and its foreign key to jobs checked, for every
-- event, a row the same statement had just written. Those go; the cascade the
-- foreign key gave (events go with their job, on prune_jobs, when a user is deleted
-- and when jobs are truncated) is kept by statement triggers on jobs. What the foreign
-- key also refused, an event for a job that does not exist, only the queue functions
-- could write, and they write events for the jobs they have just changed.

-- job_events: indexes and the cascade ----------------------------------------------

drop index public.job_events_user_id_idx;
drop index public.job_events_at_idx;

alter table public.job_events drop constraint job_events_job_id_fkey;

comment on column public.job_events.job_id is
  'The job. Events are written only by the queue functions, for the job they change; '
  'they are deleted with their job.';

-- Trigger function, AFTER DELETE on public.jobs, once per statement: deletes the
-- events of the deleted jobs (through job_events_job_id_id_idx). Definer rights: jobs
-- are deleted by prune_jobs, by the cascade from auth.users, and by admins, and the
-- events must go in every case.
create function examq_internal.delete_job_events() returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  delete from public.job_events e
  using old_jobs o
  where e.job_id = o.id;

  return null;
end
$$;

comment on function examq_internal.delete_job_events() is
  'Trigger on jobs, once per statement: deletes the events of the deleted jobs.';

revoke all on function examq_internal.delete_job_events() from public, anon, authenticated;

create trigger jobs_delete_events
  after delete on public.jobs
  referencing old table as old_jobs
  for each statement
  execute function examq_internal.delete_job_events();

-- Trigger function, AFTER TRUNCATE on public.jobs: a truncate fires no delete
-- triggers, and the events no longer cascade through a foreign key. A truncate that
-- names job_events too has emptied it already, and may not truncate it again.
create function examq_internal.truncate_job_events() returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  if exists (select from public.job_events) then
    truncate public.job_events;
  end if;

  return null;
end
$$;

comment on function examq_internal.truncate_job_events() is
  'Trigger on jobs, after truncate: truncates job_events with them.';

revoke all on function examq_internal.truncate_job_events() from public, anon, authenticated;

create trigger jobs_truncate_events
  after truncate on public.jobs
  for each statement
  execute function examq_internal.truncate_job_events();

comment on trigger jobs_delete_events on public.jobs is
  'Deletes the events of deleted jobs, as an ON DELETE CASCADE would.';

comment on trigger jobs_truncate_events on public.jobs is
  'Truncates job_events when jobs are truncated, as TRUNCATE ... CASCADE did.';

-- The input of the batched worker calls (complete_jobs, release_jobs): a JSON array
-- of at most 1,000 objects, each with a numeric job_id, given once, and a lease_token.
-- Returns the ids and tokens in input order, and the elements keyed by job id (so a
-- caller looks each job's entry up by id rather than joining the input row by row);
-- null arrays for an empty batch. p_fields names the elements' fields in the error
-- for a value that is not an array. Raises EQ007.
create function examq_internal.read_lease_batch(
  p_jobs jsonb,
  p_fields text,
  out ids bigint[],
  out tokens uuid[],
  out given jsonb
)
language plpgsql immutable
set search_path = ''
as $$
declare
  v_count integer;
  v_ok boolean;
  v_distinct bigint;
begin
  if p_jobs is null or jsonb_typeof(p_jobs) <> 'array' then
    raise exception using errcode = 'EQ007', message = format('jobs must be a JSON array of {%s}', p_fields);
  end if;

  v_count := jsonb_array_length(p_jobs);

  if v_count > 1000 then
    raise exception using errcode = 'EQ007', message = format('give at most 1000 jobs, not %s', v_count);
  end if;

  if v_count = 0 then
    return;
  end if;

  begin
    select array_agg((e ->> 'job_id')::bigint order by x.ord),
           array_agg((e ->> 'lease_token')::uuid order by x.ord),
           jsonb_object_agg(coalesce(((e ->> 'job_id')::bigint)::text, ''), e),
           bool_and(jsonb_typeof(e) = 'object'
                    and jsonb_typeof(e -> 'job_id') is not distinct from 'number'
                    and jsonb_typeof(e -> 'lease_token') is not distinct from 'string'),
           count(distinct e ->> 'job_id')
    into ids, tokens, given, v_ok, v_distinct
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
end
$$;

comment on function examq_internal.read_lease_batch(jsonb, text) is
  'Reads and checks the input of the batched worker calls: ids, tokens and elements by id.';

revoke all on function examq_internal.read_lease_batch(jsonb, text) from public, anon, authenticated;
grant execute on function examq_internal.read_lease_batch(jsonb, text) to service_role;

-- complete_jobs ---------------------------------------------------------------------
-- The contract is unchanged (see the migration that introduced it): p_jobs is a JSON
-- array of at most 1,000 {job_id, lease_token, result}; each job running under the
-- given lease becomes succeeded; the answer is one {job_id, status, outcome} per
-- entry, in input order. Raises EQ007 for a malformed array or a job id given twice.
create or replace function public.complete_jobs(p_jobs jsonb) returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
  v_count integer;
  v_ids bigint[];
  v_tokens uuid[];
  v_given jsonb;
  v_done bigint[];
begin
  select b.ids, b.tokens, b.given into v_ids, v_tokens, v_given
  from examq_internal.read_lease_batch(p_jobs, 'job_id, lease_token, result') b;

  if v_ids is null then
    return '[]'::jsonb;
  end if;

  v_count := cardinality(v_ids);

  -- The jobs are found through the primary key, by the given ids, whatever the table
  -- holds; each one's lease token and result are looked up by its id in the input
  -- (an object keyed by id), so no plan can join the input to the jobs row by row.
  -- The status is compared as text so that the partial index of running jobs does
  -- not look like a cheaper way in.
  with done as (
    update public.jobs j
    set status = 'succeeded',
        result = v_given -> j.id::text -> 'result',
        -- As complete_job: errors of earlier attempts stay in job_events only.
        last_error = null,
        error_kind = null,
        progress = 100,
        progress_message = null,
        eta_at = null,
        lease_expires_at = null,
        finished_at = now(),
        updated_at = now()
    where j.id = any (v_ids)
      and j.status::text = 'running'
      and j.lease_token = (v_given -> j.id::text ->> 'lease_token')::uuid
    returning j.id, j.user_id, j.worker_id, j.attempt
  ), logged as (
    insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt)
    select d.id, d.user_id, 'worker:' || d.worker_id, 'running', 'succeeded', d.attempt
    from done d
    order by d.id
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

-- claim_job_batch -------------------------------------------------------------------
-- The contract is unchanged (see the migration that introduced it): reclaims expired
-- leases, takes up to p_limit ready queued jobs in claim order (sort_at, id) with
-- skip locked, leaves out owners at their tier's running cap, leases each job with a
-- new token and writes one event per job; returns the claimed jobs in claim order.
-- Raises EQ007 for bad arguments.
--
-- How: owners at their cap are found first (committed claims only). One statement
-- picks and locks exactly the batch, counts the running jobs of its owners, ranks
-- each owner's candidates and admits those within the owner's remaining slots; a
-- candidate left out stays locked until commit, as in claim_jobs. The admitted jobs
-- are updated by primary key and logged. Then the owners' advisory locks are taken
-- (the keys and the order of claim_jobs) and a new statement, with a new snapshot,
-- counts each owner's running jobs again: every claim committed by whoever held the
-- locks before, plus this one's. An owner found over its cap gets its newest jobs of
-- this claim back, restored from the values kept before the update, their events
-- deleted. Locks: the claimed rows; the per-owner advisory locks until commit.
create or replace function public.claim_job_batch(
  p_worker_id text,
  p_limit integer default 100,
  p_job_types text[] default null,
  p_lease_seconds integer default null
) returns setof public.jobs
language plpgsql volatile
set search_path = ''
set enable_seqscan = off
as $$
declare
  v_capped uuid[];
  v_ids bigint[];
  v_old_first timestamptz[];
  v_old_started timestamptz[];
  v_old_progress numeric[];
  v_old_message text[];
  v_old_eta timestamptz[];
  v_old_updated timestamptz[];
  v_rows public.jobs[];
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

  -- Owners at their cap, from committed claims: their jobs are not candidates.
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

  -- Exactly the batch is locked: a candidate locked but left unclaimed would be
  -- skipped by a concurrent claim, letting later jobs overtake it. Each owner's
  -- candidates are then admitted up to the slots its cap leaves.
  with locked as (
    select j.id, j.user_id, j.sort_at, j.first_started_at, j.started_at, j.progress,
           j.progress_message, j.eta_at, j.updated_at
    from public.jobs j
    where j.status = 'queued'
      and j.sort_at <= now()
      and j.run_at <= now()
      and (p_job_types is null or j.job_type = any (p_job_types))
      and (j.user_id is null or not (j.user_id = any (v_capped)))
    order by j.sort_at, j.id
    limit p_limit
    for update skip locked
  ), running as (
    select r.user_id, count(*) as n
    from public.jobs r
    where r.status = 'running'
      and r.user_id in (select l.user_id from locked l where l.user_id is not null)
    group by r.user_id
  ), ranked as (
    select l.*, row_number() over (partition by l.user_id order by l.sort_at, l.id) as nth
    from locked l
  )
  select array_agg(r.id order by r.sort_at, r.id),
         array_agg(r.first_started_at order by r.sort_at, r.id),
         array_agg(r.started_at order by r.sort_at, r.id),
         array_agg(r.progress order by r.sort_at, r.id),
         array_agg(r.progress_message order by r.sort_at, r.id),
         array_agg(r.eta_at order by r.sort_at, r.id),
         array_agg(r.updated_at order by r.sort_at, r.id)
  into v_ids, v_old_first, v_old_started, v_old_progress, v_old_message, v_old_eta, v_old_updated
  from ranked r
  left join running n on n.user_id = r.user_id
  left join public.accounts a on a.user_id = r.user_id
  left join public.tiers t on t.name = coalesce(a.tier, 'free')
  where r.user_id is null or r.nth + coalesce(n.n, 0) <= t.max_running_per_user;

  if v_ids is null then
    return;
  end if;

  with claimed as (
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
    from public.job_types jt
    where j.id = any (v_ids) and jt.name = j.job_type and j.status = 'queued'
    returning j
  ), logged as (
    insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt)
    select (c.j).id, (c.j).user_id, 'worker:' || p_worker_id, 'queued', 'running', (c.j).attempt
    from claimed c
    order by (c.j).sort_at, (c.j).id
    returning id
  )
  select (select array_agg(c.j order by (c.j).sort_at, (c.j).id) from claimed c),
         (select array_agg(l.id) from logged l)
  into v_rows, v_events;

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
        first_started_at = b.first_started_at,
        started_at = b.started_at,
        progress = b.progress,
        progress_message = b.progress_message,
        eta_at = b.eta_at,
        updated_at = b.updated_at
    from unnest(v_ids, v_old_first, v_old_started, v_old_progress, v_old_message, v_old_eta, v_old_updated)
           as b (id, first_started_at, started_at, progress, progress_message, eta_at, updated_at)
    where j.id = any (v_over) and j.id = b.id;

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
