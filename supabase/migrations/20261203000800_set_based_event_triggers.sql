-- The job_events triggers, once per statement instead of once per row.
--
-- The outbox trigger (notifications) and the chain trigger (exam pipelines) used to
-- run for each event that ended a job. A worker that finishes 200 jobs with one
-- complete_jobs call then paid for 400 PL/pgSQL calls, each with its own lookups of
-- preferences, the job and its children: measured on a queue of no-op jobs, more
-- than the update of the jobs themselves. Both now run once per INSERT statement on
-- job_events, with the statement's new rows as a transition table, and do their work
-- as one set-based statement per kind of change. The rules are unchanged: the same
-- notifications are written, the same children move on, end or come back.
--
-- A statement that ends no job (a claim, a heartbeat's cancel request, a retry)
-- costs one call that finds nothing to do. The chain trigger's own inserts (the
-- children's events) run the triggers again, as the row triggers did, so the rules
-- apply down the whole chain.

drop trigger job_events_write_notifications on public.job_events;
drop trigger job_events_advance_chain on public.job_events;

-- write_job_notifications -----------------------------------------------------------
-- Trigger function, AFTER INSERT on public.job_events, once per statement. For every
-- new event that enters a final state (succeeded, dead, cancelled) of a job with an
-- owner, writes one outbox row per channel the owner wants, by their preferences or
-- the defaults (email on; success and failure; no job-type filter; successes only of
-- jobs that ran 60 seconds or more). A step of a chain cancelled because the step
-- before it ended (an event by the system naming its parent) is covered by the notice
-- about that parent and gets none. A row that exists already is left alone.
-- Definer rights: it must write the outbox whatever role caused the transition.
create or replace function examq_internal.write_job_notifications() returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  insert into public.notification_outbox (job_id, event_id, user_id, audience, channel, kind)
  select e.job_id, e.id, e.user_id, 'owner', c.channel, 'job.' || e.event
  from (
    select n.*,
           case n.to_status when 'succeeded' then 'succeeded' when 'dead' then 'failed' else 'cancelled' end
             as event
    from new_events n
    where n.to_status in ('succeeded', 'dead', 'cancelled')
      and n.user_id is not null
      and not (n.to_status = 'cancelled' and n.actor = 'system' and coalesce(n.details ? 'parent_id', false))
  ) e
  left join public.notification_preferences p on p.user_id = e.user_id
  cross join lateral (
    values ('email', coalesce(p.email_enabled, true)),
           ('slack', coalesce(p.slack_enabled and p.slack_webhook_url is not null, false))
  ) c (channel, wanted)
  -- The job is read only when a rule needs its type or its run time.
  left join lateral (
    select j.job_type, j.finished_at - j.first_started_at as ran
    from public.jobs j
    where j.id = e.job_id
      and (p.job_types is not null or (e.event = 'succeeded' and coalesce(p.success_min_seconds, 60) > 0))
  ) j on true
  where c.wanted
    and e.event = any (coalesce(p.events, array['succeeded', 'failed']))
    -- `is not false`: a list holding a null filters out nothing, as before.
    and (p.job_types is null or (j.job_type = any (p.job_types)) is not false)
    and not (e.event = 'succeeded'
             and coalesce(p.success_min_seconds, 60) > 0
             and (j.ran is null or j.ran < make_interval(secs => coalesce(p.success_min_seconds, 60))))
  order by e.id, c.channel
  on conflict on constraint notification_outbox_event_id_audience_channel_key do nothing;

  return null;
end
$$;

comment on function examq_internal.write_job_notifications() is
  'Trigger on job_events, once per statement: writes the owners'' notifications for the '
  'jobs that succeeded, went to the dead-letter queue or were cancelled, by their '
  'preferences or the defaults.';

create trigger job_events_write_notifications
  after insert on public.job_events
  referencing new table as new_events
  for each statement
  execute function examq_internal.write_job_notifications();

comment on trigger job_events_write_notifications on public.job_events is
  'Writes the outbox in the transaction of every transition to a final state, once per '
  'statement for all of its events.';

-- advance_chain ---------------------------------------------------------------------
-- Trigger function, AFTER INSERT on public.job_events, once per statement. Of the new
-- events it looks only at endings and requeues of jobs that have children (one probe
-- of jobs_parent_id_idx each), then, as one statement per case:
-- - a job requeued from dead or cancelled: its children that ended because of it go
--   back to waiting;
-- - a job that succeeded with no cancel requested: its waiting children become
--   queued, with the job's result as parent_result;
-- - any other ending: its waiting children end cancelled, naming the reason.
-- Locks the children it changes (by updating them). Definer rights: it runs inside
-- the service role's worker calls and the users' definer functions alike.
create or replace function examq_internal.advance_chain() returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  v_parents bigint[];
begin
  select array_agg(n.job_id) into v_parents
  from new_events n
  where (n.to_status in ('succeeded', 'dead', 'cancelled')
         or (n.to_status in ('queued', 'waiting') and n.from_status in ('dead', 'cancelled')))
    and exists (select from public.jobs c where c.parent_id = n.job_id);

  if v_parents is null then
    return null;
  end if;

  -- Requeues (from dead or cancelled): revive the children that ended because of the
  -- parent; each revival's event revives its own children in turn.
  with parents as (
    select distinct n.job_id
    from new_events n
    where n.job_id = any (v_parents)
      and n.to_status in ('queued', 'waiting') and n.from_status in ('dead', 'cancelled')
  ), revived as (
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
    from parents p
    where c.parent_id = p.job_id
      and c.status = 'cancelled'
      and c.last_error like format('parent job %s %%', p.job_id)
    returning c.id, c.user_id, p.job_id as parent_id
  )
  insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt, details)
  select r.id, r.user_id, 'system', 'cancelled', 'waiting', 0,
         jsonb_build_object('parent_id', r.parent_id, 'reason', 'parent job requeued')
  from revived r
  order by r.id;

  -- Successes with no cancel requested: the waiting children move on.
  with parents as (
    select distinct p.id, p.result
    from new_events n
    join public.jobs p on p.id = n.job_id
    where n.job_id = any (v_parents)
      and n.to_status = 'succeeded'
      and p.cancel_requested_at is null
  ), promoted as (
    update public.jobs c
    set status = 'queued',
        payload = c.payload || jsonb_build_object('parent_result', coalesce(p.result, 'null'::jsonb)),
        run_at = now(),
        sort_at = now() - make_interval(secs => t.head_start_seconds),
        updated_at = now()
    from parents p, public.tiers t
    where c.parent_id = p.id and c.status = 'waiting' and t.name = c.tier
    returning c.id, c.user_id, p.id as parent_id
  )
  insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt, details)
  select r.id, r.user_id, 'system', 'waiting', 'queued', 0,
         jsonb_build_object('parent_id', r.parent_id, 'reason', 'parent job succeeded')
  from promoted r
  order by r.id;

  -- Every other ending (dead, cancelled, or succeeded after a cancel request): the
  -- waiting children end cancelled, with the reason.
  with parents as (
    select distinct on (p.id) p.id,
           left(case
             when n.to_status = 'succeeded' then
               format('parent job %s was cancelled while it finished; the chain stops', p.id)
             when n.to_status = 'cancelled' then
               format('parent job %s was cancelled: %s', p.id, coalesce(p.last_error, 'no reason given'))
             else
               format('parent job %s failed: %s', p.id, coalesce(p.last_error, 'no reason given'))
           end, 4000) as reason
    from new_events n
    join public.jobs p on p.id = n.job_id
    where n.job_id = any (v_parents)
      and (n.to_status in ('dead', 'cancelled')
           or (n.to_status = 'succeeded' and p.cancel_requested_at is not null))
    order by p.id, n.id
  ), ended as (
    update public.jobs c
    set status = 'cancelled',
        finished_at = now(),
        error_kind = 'cancelled',
        last_error = p.reason,
        updated_at = now()
    from parents p
    where c.parent_id = p.id and c.status = 'waiting'
    returning c.id, c.user_id, c.attempt, p.id as parent_id, p.reason
  )
  insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt, error, details)
  select e.id, e.user_id, 'system', 'waiting', 'cancelled', e.attempt, e.reason,
         jsonb_build_object('parent_id', e.parent_id)
  from ended e
  order by e.id;

  return null;
end
$$;

comment on function examq_internal.advance_chain() is
  'Trigger on job_events, once per statement: moves the waiting children of jobs that '
  'succeeded to queued (with parent_result), ends them cancelled when their parent failed '
  'or was cancelled, and revives them when it is requeued.';

create trigger job_events_advance_chain
  after insert on public.job_events
  referencing new table as new_events
  for each statement
  execute function examq_internal.advance_chain();

comment on trigger job_events_advance_chain on public.job_events is
  'Moves chains on in the transaction of every ending or requeue of a step, once per '
  'statement for all of its events.';
