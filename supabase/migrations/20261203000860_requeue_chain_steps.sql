-- Requeuing a step of a chain respects the step before it.
--
-- requeue_job put every dead or cancelled job straight back in the queue. For a step
-- of a chain (a job with a parent) that broke the chain's order: a step requeued
-- while its parent was still queued or running ran at once, beside its parent and
-- without the parent's result, and when the parent then succeeded nothing gave the
-- step that result (only waiting steps are moved on). A step requeued after its
-- parent had succeeded ran without the result too, if it had been cancelled before
-- its turn came.
--
-- Now a requeued step goes by its parent's state, read under a share lock on the
-- parent's row (so the parent cannot finish in between, which would leave the step
-- waiting for an event that has passed):
-- - parent succeeded: the step is queued with the parent's result as parent_result,
--   as the chain would have queued it;
-- - parent queued, running or waiting: the step waits for it (status waiting), and
--   moves on, or ends, with it;
-- - parent dead or cancelled: refused with EQ006, naming the parent to requeue
--   instead (requeuing the parent revives the steps its ending cancelled).
-- A job without a parent (or whose parent was pruned) is queued as before. The answer
-- says the status the job now has.

-- requeue_job -----------------------------------------------------------------------
-- Called by admins and the service role. Returns {job_id, status, outcome:
-- requeued}, status queued or waiting. Raises 42501 for other callers, EQ004 for a
-- job that does not exist, EQ006 for a job that is not dead or cancelled, or whose
-- parent is dead or cancelled. Locks the job's row, and its parent's (share).
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
  v_actor text;
  v_status public.job_status := 'queued';
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

  if v_job.parent_id is not null then
    select * into v_parent from public.jobs p where p.id = v_job.parent_id for share;

    if found then
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
