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
  v_ids bigint[];
  v_given jsonb;
  v_moved jsonb;
begin
  select b.ids, b.given into v_ids, v_given
  from examq_internal.read_lease_batch(p_jobs, 'job_id, lease_token') b;

  if v_ids is null then
    return '[]'::jsonb;
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
