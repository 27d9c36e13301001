-- Retention keeps a chain until all of it is past retention, and never waits long.
--
-- prune_jobs deleted any job finished before the cutoff. A chain step's parent_id
-- references its parent with ON DELETE SET NULL, so deleting an old parent whose
-- later steps were still waiting or running detached them from their chain (get_chain
-- on the old chain no longer found them), and it had to lock those rows to do so: a
-- step held locked by a worker stalled the retention step, and with it the cron tick
-- or worker loop that ran it, for as long as the worker held it. Now a chain goes as
-- a whole: p_limit counts jobs without a parent (plain jobs and chains' first steps),
-- each deleted with all its descendants once every one of them finished before the
-- cut-off, so up to ten times p_limit rows may go for chains of ten steps. The
-- function gives up after 2 s of waiting for a lock (SQLSTATE 55P03); the next
-- retention step tries again. Otherwise the
-- contract is that of the latest migration that defined the function (0850).

-- chain_settled_before ---------------------------------------------------------------
-- Whether every descendant of a job (following parent_id down, at most 100 levels as
-- get_chain does) finished before p_cutoff. True for a job without children.
create function examq_internal.chain_settled_before(p_job_id bigint, p_cutoff timestamptz) returns boolean
language sql stable
set search_path = ''
as $$
  with recursive down as (
    select c.id, c.finished_at, 1 as depth
    from public.jobs c where c.parent_id = p_job_id
    union all
    select c.id, c.finished_at, d.depth + 1
    from public.jobs c join down d on c.parent_id = d.id
    where d.depth < 100
  )
  select not exists (select from down d where d.finished_at is null or d.finished_at >= p_cutoff)
$$;

comment on function examq_internal.chain_settled_before(bigint, timestamptz) is
  'Whether every descendant of a job finished before the cutoff; used by prune_jobs.';

revoke all on function examq_internal.chain_settled_before(bigint, timestamptz) from public, anon, authenticated;
grant execute on function examq_internal.chain_settled_before(bigint, timestamptz) to service_role;

-- prune_jobs --------------------------------------------------------------------------
create or replace function public.prune_jobs(
  p_older_than interval default interval '30 days',
  p_limit integer default 10000
) returns integer
language plpgsql volatile
set search_path = ''
set lock_timeout = '2s'
as $$
declare
  v_cutoff timestamptz := now() - make_interval(secs => examq_internal.retention_seconds(p_older_than));
  v_count integer;
begin
  perform examq_internal.check_retention_limit(p_limit);

  -- A chain goes as a whole: candidates are jobs without a parent (a plain job, or a
  -- chain's first step) all of whose descendants finished before the cut-off too; each
  -- is deleted with its descendants, so no step is ever left without its parent.
  with recursive doomed as (
    select j.id
    from public.jobs j
    where j.finished_at < v_cutoff
      and j.parent_id is null
      -- Only a chain step has children: one probe of jobs_parent_id_idx for the rest.
      and case when exists (select from public.jobs c where c.parent_id = j.id)
               then examq_internal.chain_settled_before(j.id, v_cutoff)
               else true end
    order by j.finished_at
    limit p_limit
    for update skip locked
  ), tree as (
    select d.id, 0 as depth from doomed d
    union all
    select c.id, t.depth + 1 from tree t join public.jobs c on c.parent_id = t.id where t.depth < 100
  )
  delete from public.jobs j using tree t where j.id = t.id;

  get diagnostics v_count = row_count;

  return v_count;
end
$$;
