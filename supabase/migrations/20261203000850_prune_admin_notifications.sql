-- Retention for the admins' notifications.
--
-- A job's notifications go with the job (the outbox's foreign key cascades), so
-- prune_jobs keeps them bounded. The admins' alerts name no job: nothing deleted them,
-- and each kind of alert may be raised once per alert window, for as long as the
-- product runs. They are now deleted, like jobs, once they are finished (sent, failed
-- or uncertain) and older than the retention period.

-- The admins' rows only: a few per day, where the outbox may hold millions of job
-- notifications.
create index notification_outbox_admin_created_at_idx on public.notification_outbox (created_at)
  where job_id is null;

-- prune_notifications ---------------------------------------------------------------
-- Called by the cron (service role). Deletes up to p_limit notifications that name no
-- job, are finished (sent, failed or uncertain) and were created longer ago than
-- p_older_than; pending and leased ones stay, whatever their age. Rows locked by a
-- concurrent dispatcher are skipped. Returns how many it deleted.
-- Raises EQ007 for an interval under 1 hour or a limit outside 1..100000.
create function public.prune_notifications(
  p_older_than interval default interval '30 days',
  p_limit integer default 10000
) returns integer
language plpgsql volatile
set search_path = ''
as $$
declare
  v_count integer;
begin
  if p_older_than is null or p_older_than < interval '1 hour' then
    raise exception using errcode = 'EQ007', message = 'older_than must be at least 1 hour';
  end if;

  if p_limit is null or p_limit not between 1 and 100000 then
    raise exception using errcode = 'EQ007', message = 'limit must be between 1 and 100000';
  end if;

  with doomed as (
    select n.id
    from public.notification_outbox n
    where n.job_id is null
      and n.created_at < now() - p_older_than
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
