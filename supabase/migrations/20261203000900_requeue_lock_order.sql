-- Requeuing a chain step cannot deadlock with requeuing its parent.
--
-- requeue_job locked the step's row, then share-locked its parent's to decide by the
-- parent's state. Requeuing the parent at the same moment locks the parent, then (in
-- advance_chain, which revives the steps its ending cancelled) the step: the two
-- calls waited for each other until PostgreSQL aborted one with a deadlock error. The
-- parent is now locked first, as everywhere else. bulk_requeue also retries an
-- element whose requeue was chosen as a deadlock's victim (each element runs in a
-- subtransaction, so only that element is rolled back), and such an element that
-- still deadlocks is skipped with its reason rather than failing the whole call.
-- A requeued job's start times are also cleared, as its attempts are: its run time
-- (first start to finish, which decides whether a success is worth a notification)
-- counted the time it lay dead. Otherwise the contracts are those of the migrations
-- that introduced them.

-- requeue_job -----------------------------------------------------------------------
create or replace function public.requeue_job(
  p_job_id bigint,
  p_reason text default null
) returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  v_kind text := examq_internal.caller_kind();
  v_job public.jobs;
  v_parent public.jobs;
  v_parent_id bigint;
  v_actor text;
  v_status public.job_status := 'queued';
begin
  if v_kind = 'anon' or (v_kind = 'user' and not public.is_admin()) then
    raise exception using errcode = '42501', message = 'only admins may requeue jobs';
  end if;

  v_actor := case when v_kind = 'service' then 'service' else 'admin:' || auth.uid() end;

  -- The parent's row is locked before the job's: requeuing (or finishing) the parent
  -- locks the parent, then its steps, through advance_chain; taking the two locks in
  -- the other order here would deadlock with it.
  select j.parent_id into v_parent_id from public.jobs j where j.id = p_job_id;

  if not found then
    raise exception using errcode = 'EQ004', message = format('job %s not found', p_job_id);
  end if;

  if v_parent_id is not null then
    select * into v_parent from public.jobs p where p.id = v_parent_id for share;
  end if;

  select * into v_job from public.jobs j where j.id = p_job_id for update;

  if not found then
    raise exception using errcode = 'EQ004', message = format('job %s not found', p_job_id);
  end if;

  if v_job.status not in ('dead', 'cancelled') then
    raise exception using
      errcode = 'EQ006',
      message = format('job %s is %s; only dead or cancelled jobs can be requeued', p_job_id, v_job.status);
  end if;

  -- parent_id only changes to null (the parent was pruned): then the job has no parent.
  if v_job.parent_id is distinct from v_parent_id then
    v_parent := null;
  end if;

  if v_job.parent_id is not null then
    if v_parent.id is not null then
      if v_parent.status in ('dead', 'cancelled') then
        raise exception using
          errcode = 'EQ006',
          message = format('job %s follows job %s, which is %s; requeue job %s instead',
                           p_job_id, v_parent.id, v_parent.status, v_parent.id);
      end if;

      if v_parent.status <> 'succeeded' then
        v_status := 'waiting';
      end if;
    end if;
  end if;

  update public.jobs j
  set status = v_status,
      attempt = 0,
      run_at = now(),
      sort_at = now() - make_interval(secs => t.head_start_seconds),
      payload = case
                  when v_parent.id is null then j.payload
                  when v_status = 'queued' then
                    j.payload || jsonb_build_object('parent_result', coalesce(v_parent.result, 'null'::jsonb))
                  else j.payload - 'parent_result'
                end,
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
      -- A requeued job starts a new life (its attempts start again too): its run
      -- time, which decides whether a success is worth a notification, is measured
      -- from its next start, not from a start before it died.
      first_started_at = null,
      started_at = null,
      finished_at = null,
      updated_at = now()
  from public.tiers t
  where j.id = p_job_id and t.name = j.tier;

  insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt, details)
  values (v_job.id, v_job.user_id, v_actor, v_job.status, v_status, 0,
          jsonb_build_object('reason', left(coalesce(p_reason, 'requeued'), 500),
                             'previous_attempts', v_job.attempt)
          || case when v_status = 'waiting'
                  then jsonb_build_object('waiting_for', v_parent.id)
                  else '{}'::jsonb end);

  return jsonb_build_object('job_id', v_job.id, 'status', v_status, 'outcome', 'requeued');
end
$$;

comment on function public.requeue_job(bigint, text) is
  'Admin call: returns a dead or cancelled job to the queue with fresh attempts; a chain '
  'step waits for its parent, or gets its result.';

-- bulk_requeue --------------------------------------------------------------------
-- As before, except that an element chosen as a deadlock's victim is tried again (up
-- to three times in all), then skipped with code 40P01.
create or replace function public.bulk_requeue(
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
  v_try integer;
begin
  if auth.role() in ('anon', 'authenticated') and not public.is_admin() then
    raise exception using errcode = '42501', message = 'only admins may requeue jobs';
  end if;

  if p_job_ids is null or cardinality(p_job_ids) > 1000 then
    raise exception using errcode = 'EQ007', message = 'give between 0 and 1000 job ids';
  end if;

  for v_id in select distinct u.id from unnest(p_job_ids) u(id) where u.id is not null order by u.id loop
    for v_try in 1 .. 3 loop
      begin
        perform public.requeue_job(v_id, coalesce(p_reason, 'bulk requeue from the dashboard'));
        v_requeued := v_requeued || v_id;
        exit;
      exception
        when sqlstate 'EQ004' or sqlstate 'EQ006' then
          get stacked diagnostics v_code = returned_sqlstate, v_message = message_text;
          v_skipped := v_skipped || jsonb_build_object('job_id', v_id, 'code', v_code, 'reason', v_message);
          exit;
        when deadlock_detected then
          -- Only this element was rolled back; the concurrent call that won has
          -- committed or moved on by now, so the element is tried again.
          if v_try = 3 then
            v_skipped := v_skipped || jsonb_build_object(
              'job_id', v_id, 'code', '40P01',
              'reason', 'a concurrent change to this job or its chain kept it locked; try again');
          end if;
      end;
    end loop;
  end loop;

  return jsonb_build_object('requeued', to_jsonb(v_requeued), 'skipped', v_skipped);
end
$$;

