-- A chain notifies its owner once, with the chain's outcome.
--
-- Each step of a chain (the exam pipeline's check, import, grade and report) was a job
-- of its own to the notifications: a teacher who wanted every outcome got one e-mail
-- per step, and the first could say "finished successfully" for the check step of a
-- chain whose import then failed. Now a step that succeeds while steps follow it
-- writes no notification; the chain's outcome is the last step's success, or the
-- failure (or cancellation) of the step where it stopped, whose waiting steps are
-- cancelled without notice, as before. The run time the success rule compares with
-- success_min_seconds is, for a chain step, the time since the chain's first step
-- started, so a long chain whose last step is short is still reported. Both
-- write_job_notifications (when the row is written) and unwanted_notification_reason
-- (when it is sent) apply it. Otherwise the contracts are those of the migrations
-- that introduced them.

-- job_run_time ----------------------------------------------------------------------
-- How long a finished job ran: from its first start, or for a step of a chain, from
-- the first start of the chain's first step (found by following parent_id up, at most
-- 100 levels as get_chain does), to its end. Null while unfinished or never started.
create function examq_internal.job_run_time(p_job public.jobs) returns interval
language sql stable
set search_path = ''
as $$
  select p_job.finished_at - coalesce(
    case when p_job.parent_id is not null then (
      with recursive up as (
        select j.id, j.parent_id, j.first_started_at, 1 as depth
        from public.jobs j where j.id = p_job.parent_id
        union all
        select j.id, j.parent_id, j.first_started_at, u.depth + 1
        from public.jobs j join up u on j.id = u.parent_id
        where u.depth < 100
      )
      select u.first_started_at from up u order by u.depth desc limit 1
    ) end,
    p_job.first_started_at)
$$;

comment on function examq_internal.job_run_time(public.jobs) is
  'How long a finished job ran; for a chain step, since the chain''s first step started.';

revoke all on function examq_internal.job_run_time(public.jobs) from public, anon, authenticated;
grant execute on function examq_internal.job_run_time(public.jobs) to service_role;

-- write_job_notifications -----------------------------------------------------------
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
      -- A chain step that succeeded with steps after it is not the chain's outcome.
      and not (n.to_status = 'succeeded' and exists (select from public.jobs c where c.parent_id = n.job_id))
  ) e
  left join public.notification_preferences p on p.user_id = e.user_id
  cross join lateral (
    values ('email', coalesce(p.email_enabled, true)),
           ('slack', coalesce(p.slack_enabled and p.slack_webhook_url is not null, false))
  ) c (channel, wanted)
  -- The job is read only when a rule needs its type or its run time.
  left join lateral (
    select j.job_type, examq_internal.job_run_time(j) as ran
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

-- unwanted_notification_reason -------------------------------------------------------
create or replace function examq_internal.unwanted_notification_reason(
  p_user_id uuid,
  p_channel text,
  p_kind text,
  p_job_id bigint
) returns text
language sql stable
set search_path = ''
as $$
  select case
    when p_channel = 'email' and not coalesce(p.email_enabled, true) then
      'the owner turned e-mail notifications off before it was sent'
    when p_channel = 'slack' and not coalesce(p.slack_enabled and p.slack_webhook_url is not null, false) then
      'the owner turned Slack notifications off before it was sent'
    when not (e.event = any (coalesce(p.events, array['succeeded', 'failed']))) then
      format('the owner no longer wants notifications of %s jobs', e.event)
    when p.job_types is not null and (j.job_type = any (p.job_types)) is false then
      format('the owner no longer wants notifications of %s jobs', j.job_type)
    when e.event = 'succeeded'
         and coalesce(p.success_min_seconds, 60) > 0
         and (j.ran is null or j.ran < make_interval(secs => coalesce(p.success_min_seconds, 60))) then
      format('the owner now wants notifications only of jobs that ran %s seconds or more',
             coalesce(p.success_min_seconds, 60))
  end
  from (select case p_kind when 'job.succeeded' then 'succeeded'
                           when 'job.failed' then 'failed'
                           else 'cancelled' end as event) e
  left join public.notification_preferences p on p.user_id = p_user_id
  left join lateral (
    select jj.job_type, examq_internal.job_run_time(jj) as ran
    from public.jobs jj
    where jj.id = p_job_id
  ) j on true
$$;
