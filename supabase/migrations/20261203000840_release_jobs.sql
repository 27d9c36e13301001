-- release_jobs: a worker gives back the unstarted rest of a claimed batch in one call.
--
-- A batched worker whose time budget runs out in the middle of a batch gives back the
-- jobs it has not started. With release_job that was one call, one transaction and one
-- commit per job: for a batch of hundreds of short jobs, longer than running them.

-- release_jobs ----------------------------------------------------------------------
-- Called by workers. p_jobs is a JSON array of at most 1,000 {job_id, lease_token}.
-- Each job running under the given lease goes back to the queue as release_job puts
-- it back (the attempt given back, its place in the claim order kept), or ends
-- cancelled when a cancel was requested meanwhile; one event per job, as release_job
-- writes. Returns one {job_id, status, outcome} per entry, in input order; outcome is
-- released, cancelled, lease_lost (the job is no longer running under this lease) or
-- not_found. Locks the released jobs' rows, in id order. Raises EQ007 for a malformed array or a job
-- id given twice.
create function public.release_jobs(p_jobs jsonb) returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
  v_count integer;
  v_ids bigint[];
  v_tokens uuid[];
  v_given jsonb;
  v_ok boolean;
  v_distinct bigint;
  v_moved jsonb;
begin
  if p_jobs is null or jsonb_typeof(p_jobs) <> 'array' then
    raise exception using errcode = 'EQ007', message = 'jobs must be a JSON array of {job_id, lease_token}';
  end if;

  v_count := jsonb_array_length(p_jobs);

  if v_count > 1000 then
    raise exception using errcode = 'EQ007', message = format('give at most 1000 jobs, not %s', v_count);
  end if;

  if v_count = 0 then
    return '[]'::jsonb;
  end if;

  begin
    select array_agg((e ->> 'job_id')::bigint order by x.ord),
           array_agg((e ->> 'lease_token')::uuid order by x.ord),
           jsonb_object_agg(coalesce(((e ->> 'job_id')::bigint)::text, ''), e),
           bool_and(jsonb_typeof(e) = 'object'
                    and jsonb_typeof(e -> 'job_id') is not distinct from 'number'
                    and jsonb_typeof(e -> 'lease_token') is not distinct from 'string'),
           count(distinct e ->> 'job_id')
    into v_ids, v_tokens, v_given, v_ok, v_distinct
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

  -- Reached through the primary key, each job's token looked up by its id in the
  -- input, as complete_jobs does (an index scan of `id = any (...)` visits, and locks,
  -- the rows in id order, so two batches cannot deadlock).
  with moved as (
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
    where j.id = any (v_ids)
      and j.status::text = 'running'
      and j.lease_token = (v_given -> j.id::text ->> 'lease_token')::uuid
    returning j.id, j.user_id, j.status, j.attempt
  ), logged as (
    insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt, details)
    select m.id, m.user_id, 'system', 'running', m.status, m.attempt, jsonb_build_object('released', true)
    from moved m
    order by m.id
  )
  select coalesce(jsonb_object_agg(m.id::text, m.status), '{}'::jsonb) into v_moved from moved m;

  return (
    select jsonb_agg(
             case
               when v_moved ? u.id::text then
                 jsonb_build_object(
                   'job_id', u.id,
                   'status', v_moved ->> u.id::text,
                   'outcome', case v_moved ->> u.id::text when 'queued' then 'released' else 'cancelled' end)
               when j.id is null then
                 jsonb_build_object('job_id', u.id, 'status', null, 'outcome', 'not_found')
               else
                 jsonb_build_object('job_id', u.id, 'status', j.status, 'outcome', 'lease_lost')
             end
             order by u.ord)
    from unnest(v_ids) with ordinality u (id, ord)
    left join public.jobs j on j.id = u.id
  );
end
$$;

comment on function public.release_jobs(jsonb) is
  'Worker call: gives back many claimed, unstarted jobs at once, as release_job does for one; '
  'one {job_id, status, outcome} per entry, in input order.';

revoke execute on function public.release_jobs(jsonb) from public, anon, authenticated;
grant execute on function public.release_jobs(jsonb) to service_role;
