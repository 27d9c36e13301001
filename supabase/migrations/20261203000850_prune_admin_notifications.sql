-- Retention for the admins' notifications, and a sound retention period.
--
-- A job's notifications go with the job (the outbox's foreign key cascades), so
-- prune_jobs keeps them bounded. The admins' alerts name no job: nothing deleted them,
-- and each kind of alert may be raised once per alert window, for as long as the
-- product runs. They are now deleted, like jobs, once they are finished (sent, failed
-- or uncertain) and older than the retention period.
--
-- A retention period is read as seconds, and the cut-off is now() minus those
-- seconds: subtracting the interval itself would go by the calendar, so a period such
-- as '-1 mon 30 days 1 hour', which compares as 1 hour, would cut off a day in the
-- future in a 31-day month. prune_jobs already cut off by seconds; both now also
-- refuse a period over 100 years, whose cut-off would leave the timestamp range with
-- an error of PostgreSQL's own.

-- The retention period in seconds, checked. Raises EQ007.
create function examq_internal.retention_seconds(p_older_than interval) returns double precision
language plpgsql immutable
set search_path = ''
as $$
declare
  v_seconds double precision := extract(epoch from p_older_than);
begin
  if v_seconds is null or v_seconds < 3600 then
    raise exception using errcode = 'EQ007', message = 'older_than must be at least 1 hour';
  end if;

  if v_seconds > 100 * 365.25 * 86400 then
    raise exception using errcode = 'EQ007', message = 'older_than must be at most 100 years';
  end if;

  return v_seconds;
end
$$;

comment on function examq_internal.retention_seconds(interval) is
  'A retention period as seconds, refused unless between 1 hour and 100 years.';

revoke all on function examq_internal.retention_seconds(interval) from public, anon, authenticated;
grant execute on function examq_internal.retention_seconds(interval) to service_role;

-- How many rows one retention call may delete: 1 to 100,000. Raises EQ007.
create function examq_internal.check_retention_limit(p_limit integer) returns void
language plpgsql immutable
set search_path = ''
as $$
begin
  if p_limit is null or p_limit not between 1 and 100000 then
    raise exception using errcode = 'EQ007', message = 'limit must be between 1 and 100000';
  end if;
end
$$;

comment on function examq_internal.check_retention_limit(integer) is
  'Refuses a retention batch size outside 1 to 100,000.';

revoke all on function examq_internal.check_retention_limit(integer) from public, anon, authenticated;
grant execute on function examq_internal.check_retention_limit(integer) to service_role;

-- prune_jobs: the contract of the migration that introduced it, with the period
-- checked as above.
create or replace function public.prune_jobs(
  p_older_than interval default interval '30 days',
  p_limit integer default 10000
) returns integer
language plpgsql volatile
set search_path = ''
as $$
declare
  v_seconds double precision := examq_internal.retention_seconds(p_older_than);
  v_count integer;
begin
  perform examq_internal.check_retention_limit(p_limit);

  with doomed as (
    select j.id
    from public.jobs j
    where j.finished_at < now() - make_interval(secs => v_seconds)
    order by j.finished_at
    limit p_limit
    for update skip locked
  )
  delete from public.jobs j using doomed d where j.id = d.id;

  get diagnostics v_count = row_count;

  return v_count;
end
$$;

-- The admins' rows only: a few per day, where the outbox may hold millions of job
-- notifications.
create index notification_outbox_admin_created_at_idx on public.notification_outbox (created_at)
  where job_id is null;

-- prune_notifications ---------------------------------------------------------------
-- Called by the cron (service role). Deletes up to p_limit notifications that name no
-- job, are finished (sent, failed or uncertain) and were created longer ago than
-- p_older_than; pending and leased ones stay, whatever their age. Rows locked by a
-- concurrent dispatcher are skipped. Returns how many it deleted.
-- Raises EQ007 for a period under 1 hour or over 100 years, or a limit outside 1..100000.
create function public.prune_notifications(
  p_older_than interval default interval '30 days',
  p_limit integer default 10000
) returns integer
language plpgsql volatile
set search_path = ''
as $$
declare
  v_seconds double precision := examq_internal.retention_seconds(p_older_than);
  v_count integer;
begin
  perform examq_internal.check_retention_limit(p_limit);

  with doomed as (
    select n.id
    from public.notification_outbox n
    where n.job_id is null
      and n.created_at < now() - make_interval(secs => v_seconds)
      and n.status in ('sent', 'failed', 'uncertain')
    order by n.created_at
    limit p_limit
    for update skip locked
  )
  delete from public.notification_outbox n using doomed d where n.id = d.id;

  get diagnostics v_count = row_count;

  return v_count;
end
$$;

comment on function public.prune_notifications(interval, integer) is
  'Retention: deletes up to p_limit finished admin notifications created longer ago than '
  'p_older_than (job notifications go with their jobs).';

revoke execute on function public.prune_notifications(interval, integer) from public, anon, authenticated;
grant execute on function public.prune_notifications(interval, integer) to service_role;
