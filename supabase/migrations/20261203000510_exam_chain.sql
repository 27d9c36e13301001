-- Chains of jobs (the exam pipeline: check inputs, import, grade, report) and the
-- Storage buckets the exam jobs read from and write to.
--
-- A chain is enqueued at once: its first step `queued`, every later step `waiting`
-- with parent_id pointing at the step before it. A waiting job is never claimed
-- (claim_jobs and its index only look at `queued` jobs). What moves a chain on is
-- an AFTER INSERT trigger on public.job_events: every transition of a job appends an
-- event in the transaction of the transition, on every path (complete_job, fail_job,
-- cancel_job, requeue_job, and the reclaim of expired leases inside claim_jobs), so
-- the trigger sees each ending exactly once and commits or rolls back with it.
--
-- - A step succeeds: its waiting children become `queued`, with the step's result in
--   their payload as `parent_result`. If a cancel had been requested while it ran,
--   the chain stops instead and the children end `cancelled`.
-- - A step ends `dead` or `cancelled`: its waiting children end `cancelled`, with the
--   reason "parent job N failed: ..." or "parent job N was cancelled: ...". They are
--   cancelled rather than dead so that one failure sends one failure notice and
--   leaves one job in the dead-letter queue: the one to fix and requeue.
-- - A step is requeued (from dead or cancelled): the children that ended because of
--   it go back to `waiting`, so requeuing the failed step resumes the chain.
--
-- Each of those changes appends its own event, so the trigger runs again for the
-- grandchildren: the rules apply down the whole chain. A WHEN clause keeps the
-- trigger off the hot paths (claims, heartbeats, retries), and a job without
-- children costs one probe of jobs_parent_id_idx.
--
-- cancel_job is replaced to cancel waiting jobs at once (it used to call them
-- finished) and, called on a chain's finished root, to cancel what has not finished.

comment on type public.job_status is
  'Lifecycle of a job: queued -> running -> succeeded | queued (retry) | dead | cancelled; '
  'a later step of a chain is waiting until the step before it succeeds.';

-- Job types -----------------------------------------------------------------------

insert into public.job_types (name, description, lease_seconds) values
  ('exam.pipeline', 'Check an exam submission''s inputs; the first step of the exam chain.', 60),
  ('exam.import', 'Import an exam file (GIFT, Moodle XML, QTI, answer key) into the exam model.', 120),
  ('exam.report', 'Render the HTML report and scores CSV of a graded exam and store them.', 120)
on conflict (name) do nothing;

-- Waiting jobs --------------------------------------------------------------------

-- A waiting job has never run in its current round and always has a parent to wait
-- for (deleting a parent a job still waits for is refused rather than leaving the
-- job waiting forever).
alter table public.jobs add constraint jobs_waiting_has_parent_check
  check (status <> 'waiting'
         or (parent_id is not null and lease_token is null and lease_expires_at is null and attempt = 0));

-- enqueue_chain counts a user's queued and waiting jobs against the quota.
create index jobs_user_id_waiting_idx on public.jobs (user_id) where status = 'waiting';

-- advance_chain -------------------------------------------------------------------
-- Trigger function, AFTER INSERT on public.job_events for endings and requeues (see
-- the WHEN clause of the trigger). Locks the children it changes (by updating them).
-- Definer rights: it runs inside the service role's worker calls and the users'
-- definer functions alike, and must update jobs and append events in every case.
create function examq_internal.advance_chain() returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  v_parent public.jobs;
  v_reason text;
begin
  if not exists (select from public.jobs c where c.parent_id = new.job_id) then
    return null;
  end if;

  select * into v_parent from public.jobs j where j.id = new.job_id;

  if new.to_status in ('queued', 'waiting') then
    -- A requeue (from dead or cancelled): revive the children that ended because of
    -- this job; each revival's event revives its own children in turn.
    with revived as (
      update public.jobs c
      set status = 'waiting',
          attempt = 0,
          finished_at = null,
          error_kind = null,
          last_error = null,
          cancel_requested_at = null,
          result = null,
          progress = null,
          progress_message = null,
          eta_at = null,
          lease_token = null,
          lease_expires_at = null,
          worker_id = null,
          payload = c.payload - 'parent_result',
          updated_at = now()
      where c.parent_id = new.job_id
        and c.status = 'cancelled'
        and c.last_error like format('parent job %s %%', new.job_id)
      returning c.id, c.user_id
    )
    insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt, details)
    select r.id, r.user_id, 'system', 'cancelled', 'waiting', 0,
           jsonb_build_object('parent_id', new.job_id, 'reason', 'parent job requeued')
    from revived r;

    return null;
  end if;

  if new.to_status = 'succeeded' and v_parent.cancel_requested_at is null then
    with promoted as (
      update public.jobs c
      set status = 'queued',
          payload = c.payload || jsonb_build_object('parent_result', coalesce(v_parent.result, 'null'::jsonb)),
          run_at = now(),
          sort_at = now() - make_interval(secs => t.head_start_seconds),
          updated_at = now()
      from public.tiers t
      where c.parent_id = new.job_id and c.status = 'waiting' and t.name = c.tier
      returning c.id, c.user_id
    )
    insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt, details)
    select p.id, p.user_id, 'system', 'waiting', 'queued', 0,
           jsonb_build_object('parent_id', new.job_id, 'reason', 'parent job succeeded')
    from promoted p;

    return null;
  end if;

  v_reason := left(case
    when new.to_status = 'succeeded' then
      format('parent job %s was cancelled while it finished; the chain stops', new.job_id)
    when new.to_status = 'cancelled' then
      format('parent job %s was cancelled: %s', new.job_id, coalesce(v_parent.last_error, 'no reason given'))
    else
      format('parent job %s failed: %s', new.job_id, coalesce(v_parent.last_error, 'no reason given'))
  end, 4000);

  with ended as (
    update public.jobs c
    set status = 'cancelled',
        finished_at = now(),
        error_kind = 'cancelled',
        last_error = v_reason,
        updated_at = now()
    where c.parent_id = new.job_id and c.status = 'waiting'
    returning c.id, c.user_id, c.attempt
  )
  insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt, error, details)
  select e.id, e.user_id, 'system', 'waiting', 'cancelled', e.attempt, v_reason,
         jsonb_build_object('parent_id', new.job_id)
  from ended e;

  return null;
end
$$;

comment on function examq_internal.advance_chain() is
  'Trigger on job_events: moves the waiting children of a job that succeeded to queued '
  '(with parent_result), ends them cancelled when it failed or was cancelled, and revives '
  'them when it is requeued.';

revoke all on function examq_internal.advance_chain() from public, anon, authenticated;

create trigger job_events_advance_chain
  after insert on public.job_events
  for each row
  when (new.to_status in ('succeeded', 'dead', 'cancelled')
        or (new.to_status in ('queued', 'waiting') and new.from_status in ('dead', 'cancelled')))
  execute function examq_internal.advance_chain();

-- enqueue_chain -------------------------------------------------------------------
-- Called by signed-in users (for themselves) and by the service role (for any user,
-- or for nobody). p_steps is a JSON array of 1 to 10 steps, each {"job_type": text,
-- "payload": object, "max_attempts": integer (optional)}. The first step goes
-- through enqueue_job (caller, tier, job type, payload size, quota, idempotency key);
-- the others are inserted `waiting`, each the child of the step before it, under the
-- same owner and tier and the same checks of type, payload and attempts. The quota
-- counts queued and waiting jobs, so a chain needs a free slot per step. Locks: the
-- owner's enqueue advisory lock (taken by enqueue_job, held to the end). Returns
-- {chain_id, jobs: [job, ...]} in step order; an idempotency key already used by the
-- owner returns that chain unchanged. Raises EQ001, EQ002, EQ003, EQ004, EQ007, 42501.
-- Definer rights: users have no write privilege on public.jobs.
create function public.enqueue_chain(
  p_steps jsonb,
  p_idempotency_key text default null,
  p_user_id uuid default null
) returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  v_kind text := examq_internal.caller_kind();
  v_actor text;
  v_step jsonb;
  v_index integer;
  v_count integer;
  v_root public.jobs;
  v_job public.jobs;
  v_tier public.tiers;
  v_type text;
  v_payload jsonb;
  v_attempts integer;
  v_pending integer;
  v_jobs jsonb;
begin
  if p_steps is null or jsonb_typeof(p_steps) <> 'array' then
    raise exception using errcode = 'EQ007', message = 'steps must be a JSON array of {job_type, payload}';
  end if;

  v_count := jsonb_array_length(p_steps);
  if v_count not between 1 and 10 then
    raise exception using errcode = 'EQ007', message = format('a chain has 1 to 10 steps, not %s', v_count);
  end if;

  for v_index in 0 .. v_count - 1 loop
    v_step := p_steps -> v_index;
    if jsonb_typeof(v_step) <> 'object' or jsonb_typeof(v_step -> 'job_type') is distinct from 'string' then
      raise exception using errcode = 'EQ007', message = format('step %s needs a job_type', v_index + 1);
    end if;
    if v_step ? 'payload' and jsonb_typeof(v_step -> 'payload') <> 'object' then
      raise exception using errcode = 'EQ007', message = format('step %s: payload must be a JSON object', v_index + 1);
    end if;
    if v_step ? 'max_attempts' and jsonb_typeof(v_step -> 'max_attempts') <> 'number' then
      raise exception using errcode = 'EQ007', message = format('step %s: max_attempts must be a number', v_index + 1);
    end if;
  end loop;

  v_step := p_steps -> 0;
  v_root := public.enqueue_job(
    p_job_type => v_step ->> 'job_type',
    p_payload => coalesce(v_step -> 'payload', '{}'::jsonb),
    p_idempotency_key => p_idempotency_key,
    p_max_attempts => (v_step ->> 'max_attempts')::integer,
    p_user_id => p_user_id
  );

  -- A job created earlier (found by its idempotency key) is returned with its chain.
  if v_root.created_at <> now() then
    return public.get_chain(v_root.id);
  end if;

  select * into v_tier from public.tiers t where t.name = v_root.tier;
  v_actor := case when v_kind = 'user' then 'user:' || auth.uid() else 'service' end;

  if v_root.user_id is not null then
    select count(*) into v_pending
    from public.jobs j
    where j.user_id = v_root.user_id and j.status in ('queued', 'waiting');

    if v_pending + v_count - 1 > v_tier.max_queued_per_user then
      raise exception using
        errcode = 'EQ003',
        message = format('queued-job quota reached: the %s tier allows %s queued or waiting jobs per user, '
                         'and this chain needs %s', v_tier.name, v_tier.max_queued_per_user, v_count);
    end if;
  end if;

  v_jobs := jsonb_build_array(to_jsonb(v_root));
  v_job := v_root;

  for v_index in 1 .. v_count - 1 loop
    v_step := p_steps -> v_index;
    v_type := v_step ->> 'job_type';
    v_payload := coalesce(v_step -> 'payload', '{}'::jsonb);
    v_attempts := (v_step ->> 'max_attempts')::integer;

    if not exists (select from public.job_types t where t.name = v_type) then
      raise exception using errcode = 'EQ001', message = format('unknown job type %L', left(v_type, 100));
    end if;

    if v_tier.allowed_job_types is not null and not (v_type = any (v_tier.allowed_job_types)) then
      raise exception using
        errcode = 'EQ001',
        message = format('job type %L is not available in the %s tier', v_type, v_tier.name);
    end if;

    if octet_length(v_payload::text) > v_tier.max_payload_bytes then
      raise exception using
        errcode = 'EQ002',
        message = format('step %s: payload is %s bytes; the %s tier accepts at most %s',
                         v_index + 1, octet_length(v_payload::text), v_tier.name, v_tier.max_payload_bytes);
    end if;

    if examq_internal.payload_problem(v_payload) is not null then
      raise exception using
        errcode = 'EQ007',
        message = format('step %s: %s', v_index + 1, examq_internal.payload_problem(v_payload));
    end if;

    if v_attempts is not null
       and not (v_attempts between 1 and case when v_kind = 'user' then v_tier.default_max_attempts else 1000 end) then
      raise exception using
        errcode = 'EQ007',
        message = format('step %s: max_attempts must be between 1 and %s, not %s', v_index + 1,
                         case when v_kind = 'user' then v_tier.default_max_attempts else 1000 end, v_attempts);
    end if;

    insert into public.jobs
      (job_type, user_id, tier, payload, status, run_at, sort_at, max_attempts, parent_id)
    values
      (v_type, v_root.user_id, v_tier.name, v_payload, 'waiting', now(),
       now() - make_interval(secs => v_tier.head_start_seconds),
       coalesce(v_attempts, v_tier.default_max_attempts), v_job.id)
    returning * into v_job;

    insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt, details)
    values (v_job.id, v_job.user_id, v_actor, null, 'waiting', 0,
            jsonb_build_object('parent_id', v_job.parent_id, 'chain_id', v_root.id));

    v_jobs := v_jobs || jsonb_build_array(to_jsonb(v_job));
  end loop;

  return jsonb_build_object('chain_id', v_root.id, 'jobs', v_jobs);
end
$$;

comment on function public.enqueue_chain(jsonb, text, uuid) is
  'Enqueues a chain of jobs: the first step queued, each later step waiting for the one '
  'before it to succeed. Same rules and errors as enqueue_job; returns {chain_id, jobs}.';

-- get_chain -----------------------------------------------------------------------
-- Reads the chain a job belongs to, with the caller's rights (row-level security
-- applies): its root (found by following parent_id up) and every descendant, in
-- order of depth then id. Returns {chain_id, jobs: [job, ...]}. Raises EQ004 when
-- the job does not exist or is not visible to the caller.
create function public.get_chain(p_job_id bigint) returns jsonb
language plpgsql stable
set search_path = ''
as $$
declare
  v_root bigint;
  v_jobs jsonb;
begin
  with recursive up as (
    select j.id, j.parent_id, 0 as depth from public.jobs j where j.id = p_job_id
    union all
    select p.id, p.parent_id, u.depth + 1 from public.jobs p join up u on p.id = u.parent_id where u.depth < 100
  )
  select u.id into v_root from up u order by u.depth desc limit 1;

  if v_root is null then
    raise exception using errcode = 'EQ004', message = format('job %s not found', p_job_id);
  end if;

  with recursive down as (
    select j.*, 0 as depth from public.jobs j where j.id = v_root
    union all
    select c.*, d.depth + 1 from public.jobs c join down d on c.parent_id = d.id where d.depth < 100
  )
  select jsonb_agg(to_jsonb(d) - 'depth' order by d.depth, d.id) into v_jobs from down d;

  return jsonb_build_object('chain_id', v_root, 'jobs', v_jobs);
end
$$;

comment on function public.get_chain(bigint) is
  'Reads the whole chain a job belongs to (root and descendants), subject to RLS.';

-- enqueue_chain calls get_chain for an idempotent repeat, so it is created after it
-- in this file but resolved at run time; grants follow both.
revoke execute on function public.enqueue_chain(jsonb, text, uuid) from public, anon;
grant execute on function public.enqueue_chain(jsonb, text, uuid) to authenticated, service_role;
revoke execute on function public.get_chain(bigint) from public, anon;
grant execute on function public.get_chain(bigint) to authenticated, service_role;

-- cancel_job (replaced) -----------------------------------------------------------
-- As in 20261203000200_queue_functions, plus: a waiting job is cancelled at once like
-- a queued one (the trigger then cancels its own waiting children), and a call on a
-- finished job whose descendants have not finished cancels those (outcome
-- chain_cancelled), so cancelling a chain's root cancels the chain at any stage.
-- Locks the job row, and the rows of the descendants it changes. Returns {job_id,
-- status, outcome: cancelled | cancel_requested | chain_cancelled | already_finished}.
-- Raises EQ004 (also for jobs the caller may not see), 42501.
-- Definer rights: users have no write privilege on public.jobs.
create or replace function public.cancel_job(
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
  v_changed integer;
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

  if v_job.status in ('queued', 'waiting') then
    update public.jobs j
    set status = 'cancelled', finished_at = now(), error_kind = 'cancelled', last_error = v_reason,
        updated_at = now()
    where j.id = p_job_id;

    insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt, error)
    values (v_job.id, v_job.user_id, v_actor, v_job.status, 'cancelled', v_job.attempt, v_reason);

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

  v_changed := examq_internal.cancel_descendants(v_job.id, v_actor, v_reason);
  if v_changed > 0 then
    return jsonb_build_object('job_id', v_job.id, 'status', v_job.status, 'outcome', 'chain_cancelled',
                              'descendants', v_changed);
  end if;

  return jsonb_build_object('job_id', v_job.id, 'status', v_job.status, 'outcome', 'already_finished');
end
$$;

comment on function public.cancel_job(bigint, text) is
  'Cancels a queued or waiting job at once or asks a running job''s worker to stop; on a '
  'finished job, cancels its unfinished descendants. Owners, admins and the service role '
  'may call it.';

-- cancel_descendants --------------------------------------------------------------
-- Called by cancel_job for a finished job. Cancels the job's queued and waiting
-- descendants and asks running ones to stop, nearest first; the trigger then ends
-- whatever waits below a cancelled job. Locks the rows it changes. Returns how many
-- jobs it changed.
create function examq_internal.cancel_descendants(p_job_id bigint, p_actor text, p_reason text)
returns integer
language plpgsql volatile
set search_path = ''
as $$
declare
  v_job public.jobs;
  v_changed integer := 0;
begin
  for v_job in
    with recursive down as (
      select c.id, 1 as depth from public.jobs c where c.parent_id = p_job_id
      union all
      select c.id, d.depth + 1 from public.jobs c join down d on c.parent_id = d.id where d.depth < 100
    )
    select j.* from public.jobs j join down d on d.id = j.id
    where j.status in ('queued', 'waiting', 'running')
    order by d.depth, j.id
    for update of j
  loop
    -- An earlier iteration's cancel may have ended this job through the trigger.
    select * into v_job from public.jobs j where j.id = v_job.id;

    if v_job.status in ('queued', 'waiting') then
      update public.jobs j
      set status = 'cancelled', finished_at = now(), error_kind = 'cancelled', last_error = p_reason,
          updated_at = now()
      where j.id = v_job.id;

      insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt, error, details)
      values (v_job.id, v_job.user_id, p_actor, v_job.status, 'cancelled', v_job.attempt, p_reason,
              jsonb_build_object('chain_of', p_job_id));
      v_changed := v_changed + 1;
    elsif v_job.status = 'running' and v_job.cancel_requested_at is null then
      update public.jobs j
      set cancel_requested_at = now(), last_error = p_reason, updated_at = now()
      where j.id = v_job.id;

      insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt, details)
      values (v_job.id, v_job.user_id, p_actor, 'running', 'running', v_job.attempt,
              jsonb_build_object('cancel_requested', true, 'reason', p_reason, 'chain_of', p_job_id));
      v_changed := v_changed + 1;
    end if;
  end loop;

  return v_changed;
end
$$;

comment on function examq_internal.cancel_descendants(bigint, text, text) is
  'Cancels (or asks to stop) the unfinished descendants of a job; used by cancel_job.';

revoke all on function examq_internal.cancel_descendants(bigint, text, text) from public, anon, authenticated;
grant execute on function examq_internal.cancel_descendants(bigint, text, text) to service_role;

-- Storage buckets -----------------------------------------------------------------
-- On Supabase: a private bucket for uploaded exam files and one for reports. Users
-- upload to and read from their own folder (`<user id>/...`) only; the worker uses
-- the service role. Local databases have no storage schema (examq reads a folder
-- instead), so this part is skipped there.
do $$
begin
  if to_regclass('storage.buckets') is null then
    return;
  end if;

  insert into storage.buckets (id, name, public)
  values ('exam-uploads', 'exam-uploads', false), ('exam-reports', 'exam-reports', false)
  on conflict (id) do nothing;

  if not exists (select from pg_catalog.pg_policies
                 where schemaname = 'storage' and tablename = 'objects'
                   and policyname = 'users upload exam files to their own folder') then
    create policy "users upload exam files to their own folder" on storage.objects
      for insert to authenticated
      with check (bucket_id = 'exam-uploads' and (storage.foldername(name))[1] = (select auth.uid())::text);
  end if;

  if not exists (select from pg_catalog.pg_policies
                 where schemaname = 'storage' and tablename = 'objects'
                   and policyname = 'users read their own exam files and reports') then
    create policy "users read their own exam files and reports" on storage.objects
      for select to authenticated
      using (bucket_id in ('exam-uploads', 'exam-reports')
             and (storage.foldername(name))[1] = (select auth.uid())::text);
  end if;

  if not exists (select from pg_catalog.pg_policies
                 where schemaname = 'storage' and tablename = 'objects'
                   and policyname = 'users delete their own exam files') then
    create policy "users delete their own exam files" on storage.objects
      for delete to authenticated
      using (bucket_id = 'exam-uploads' and (storage.foldername(name))[1] = (select auth.uid())::text);
  end if;
end
$$;
