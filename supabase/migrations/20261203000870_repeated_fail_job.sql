-- A repeated fail_job answers as the first call did, also when that call scheduled a
-- retry.
--
-- Every worker call is a compare-and-set under the job's lease, so a worker whose
-- connection broke before it read the answer makes the call again. A repeated
-- complete_job answers already_completed, and a repeated fail_job of a job that ended
-- answered already_failed; but a fail_job that scheduled a retry cleared the lease
-- (the job is queued, with no lease), so its repeat was told that the lease was lost,
-- and the worker counted the job as lost rather than retried. The retry's event now
-- keeps the failed lease's token, and a repeat that finds it answers retry_scheduled
-- with the retry's run_at and the status the job has now (another worker may have
-- claimed the retry already), changing nothing. Otherwise the contract is that of the
-- migration that introduced fail_job.

create or replace function public.fail_job(
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
  v_retry jsonb;
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
            v_job.attempt, v_error,
            jsonb_build_object('kind', v_job.error_kind, 'run_at', v_job.run_at)
            -- A retry clears the lease; the event keeps the failed lease's token so
            -- that a repeat of this call can be recognised (below).
            || case when v_job.status = 'queued'
                    then jsonb_build_object('lease_token', p_lease_token)
                    else '{}'::jsonb end);

    return jsonb_build_object(
      'job_id', v_job.id,
      'status', v_job.status,
      'outcome', case v_job.status when 'queued' then 'retry_scheduled' else v_job.status::text end,
      'run_at', v_job.run_at
    );
  end if;

  -- A repeat of a call that scheduled a retry: the lease is gone from the job, but
  -- the retry's event names it. The answer is the first call's.
  select e.details into v_retry
  from public.job_events e
  where e.job_id = p_job_id
    and e.from_status = 'running' and e.to_status = 'queued'
    and e.details ->> 'lease_token' = p_lease_token::text
  order by e.id desc
  limit 1;

  if found then
    select * into v_job from public.jobs j where j.id = p_job_id;
    return jsonb_build_object('job_id', p_job_id, 'status', v_job.status, 'outcome', 'retry_scheduled',
                              'run_at', (v_retry ->> 'run_at')::timestamptz);
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
  'acknowledges a cancel, by p_kind and the attempts left. A repeat answers as the first call.';
