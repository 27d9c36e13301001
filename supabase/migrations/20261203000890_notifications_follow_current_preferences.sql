-- A notification follows the owner's preferences as they are when it is sent.
--
-- The outbox row is written when the job ends, from the preferences of that moment;
-- it is sent seconds or minutes later. An owner who turned a channel off in between
-- (or narrowed the events, job types or run time they want to hear about) was still
-- e-mailed, and their Slack row failed for want of a webhook. claim_notifications now
-- reads the owner's preferences again for every row it picks: a row they no longer
-- want ends 'skipped', with the reason in last_error, and is not returned. Admin
-- alerts are not affected. Otherwise the contract is that of the migration that
-- introduced claim_notifications.

-- unwanted_notification_reason -------------------------------------------------------
-- Why the owner's current preferences refuse a job notification, or null when they
-- still want it. The rules are those write_job_notifications applies when it writes
-- the row (no preferences row: e-mail on, Slack off, succeeded and failed jobs, jobs
-- that ran 60 seconds or more).
create function examq_internal.unwanted_notification_reason(
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
    select jj.job_type, jj.finished_at - jj.first_started_at as ran
    from public.jobs jj
    where jj.id = p_job_id
  ) j on true
$$;

comment on function examq_internal.unwanted_notification_reason(uuid, text, text, bigint) is
  'Why the owner''s current preferences refuse a job notification, or null; used by claim_notifications.';

revoke all on function examq_internal.unwanted_notification_reason(uuid, text, text, bigint)
  from public, anon, authenticated;
grant execute on function examq_internal.unwanted_notification_reason(uuid, text, text, bigint) to service_role;

-- claim_notifications ---------------------------------------------------------------
-- As before, except that a picked row its owner no longer wants ends 'skipped' and is
-- not returned.
create or replace function public.claim_notifications(
  p_dispatcher_id text,
  p_limit integer default 20,
  p_lease_seconds integer default 120
) returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  v_result jsonb;
begin
  if p_dispatcher_id is null or length(p_dispatcher_id) not between 1 and 200 then
    raise exception using errcode = 'EQ007', message = 'dispatcher_id must be 1 to 200 characters';
  end if;

  if p_limit is null or p_limit not between 1 and 1000 then
    raise exception using errcode = 'EQ007', message = format('limit must be between 1 and 1000, not %s', p_limit);
  end if;

  if p_lease_seconds is null or p_lease_seconds not between 5 and 3600 then
    raise exception using
      errcode = 'EQ007',
      message = format('lease_seconds must be between 5 and 3600, not %s', p_lease_seconds);
  end if;

  perform examq_internal.reclaim_expired_notifications(greatest(p_limit, 100));

  with picked as (
    select o.id,
           case when o.audience = 'owner'
             then examq_internal.unwanted_notification_reason(o.user_id, o.channel, o.kind, o.job_id)
           end as unwanted
    from public.notification_outbox o
    where o.status = 'pending' and o.run_at <= now()
    order by o.run_at, o.id
    limit p_limit
    for update skip locked
  ), skipped as (
    update public.notification_outbox o
    set status = 'skipped',
        last_error = p.unwanted,
        updated_at = now()
    from picked p
    where o.id = p.id and o.status = 'pending' and p.unwanted is not null
  ), claimed as (
    update public.notification_outbox o
    set status = 'claimed',
        lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => p_lease_seconds),
        dispatcher_id = p_dispatcher_id,
        updated_at = now()
    from picked p
    where o.id = p.id and o.status = 'pending' and p.unwanted is null
    returning o.*
  )
  select coalesce(jsonb_agg(jsonb_build_object(
           'id', c.id,
           'lease_token', c.lease_token,
           'job_id', c.job_id,
           'event_id', c.event_id,
           'user_id', c.user_id,
           'audience', c.audience,
           'channel', c.channel,
           'kind', c.kind,
           'attempts', c.attempts,
           'details', c.details,
           'created_at', c.created_at,
           'recipient_email', case when c.audience = 'owner' and c.channel = 'email' then u.email end,
           'recipient_name', left(u.raw_user_meta_data ->> 'name', 200),
           'slack_webhook_url', case
             when c.audience = 'owner' and c.channel = 'slack' and p.slack_enabled then p.slack_webhook_url
           end,
           'job', case when j.id is not null then jsonb_build_object(
             'id', j.id,
             'job_type', j.job_type,
             'tier', j.tier,
             'status', e.to_status,
             'attempt', e.attempt,
             'max_attempts', j.max_attempts,
             'error', left(e.error, 2000),
             'error_kind', case when e.to_status = j.status then j.error_kind end,
             'title', left(j.payload ->> 'title', 200),
             'created_at', j.created_at,
             'first_started_at', j.first_started_at,
             'finished_at', e.at,
             'summary', case
               when e.to_status = 'succeeded' and jsonb_typeof(j.result -> 'summary') = 'object'
                 then j.result -> 'summary'
             end
           ) end
         ) order by c.run_at, c.id), '[]'::jsonb)
  into v_result
  from claimed c
  left join auth.users u on u.id = c.user_id
  left join public.notification_preferences p on p.user_id = c.user_id
  left join public.jobs j on j.id = c.job_id
  left join public.job_events e on e.id = c.event_id;

  return v_result;
end
$$;

