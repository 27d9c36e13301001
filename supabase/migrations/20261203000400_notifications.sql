-- Notifications: per-user preferences, an outbox written in the same transaction as
-- the state change that causes it, a dispatch protocol that sends each notification
-- at most once, admin alerts deduplicated over a window, and a record of cron ticks.
--
-- Why a trigger: every transition of a job appends to public.job_events in the
-- transaction of the transition, whichever path caused it (a worker's complete_job or
-- fail_job, a user's or admin's cancel_job, or the reclaim of an expired lease inside
-- claim_jobs). An AFTER INSERT trigger on job_events, filtered by a WHEN condition to
-- final states, therefore writes the outbox for every path without touching the
-- lifecycle functions, and commits or rolls back with the transition itself. The
-- trigger does one primary-key lookup of the owner's preferences (and one of the job
-- when a rule needs its type or run time), so claim and complete stay cheap.
--
-- Why two sending states: a dispatcher first claims rows ('claimed', with a lease),
-- then marks each one 'attempting' just before it calls the provider. A claimed row
-- whose lease runs out was never handed to a provider and goes back to 'pending'; an
-- attempting row whose lease runs out may have been delivered (the dispatcher died
-- after the provider accepted it, or the answer was lost), and SendGrid's mail send
-- and Slack's incoming webhooks have no idempotency key, so it becomes 'uncertain'
-- for an admin to decide (public.requeue_notification) instead of being sent twice.
--
-- New SQLSTATE (examq/errors.py): EQ008 notification not found.

create type public.notification_status as enum (
  'pending', 'claimed', 'attempting', 'sent', 'failed', 'uncertain'
);

comment on type public.notification_status is
  'Lifecycle of an outbox row: pending -> claimed -> attempting -> sent | failed | '
  'uncertain | pending (retry later). A claimed row whose lease expires goes back to '
  'pending; an attempting one becomes uncertain.';

-- Preferences ---------------------------------------------------------------------

create table public.notification_preferences (
  user_id uuid primary key references auth.users (id) on delete cascade,
  email_enabled boolean not null default true,
  slack_enabled boolean not null default false,
  slack_webhook_url text,
  events text[] not null default array['succeeded', 'failed'],
  job_types text[],
  success_min_seconds integer not null default 60,
  created_at timestamptz not null default now(),
  constraint notification_preferences_events_check
    check (events <@ array['succeeded', 'failed', 'cancelled']::text[]),
  -- Only Slack's own webhook hosts: the dispatcher POSTs to this URL from the
  -- server, so any other host would let a user aim server-side requests anywhere.
  constraint notification_preferences_slack_webhook_url_check
    check (slack_webhook_url ~ '^https://hooks\.slack(-gov)?\.com/[A-Za-z0-9/_-]+$'
           and length(slack_webhook_url) <= 500),
  constraint notification_preferences_slack_needs_url_check
    check (not slack_enabled or slack_webhook_url is not null),
  constraint notification_preferences_success_min_seconds_check
    check (success_min_seconds between 0 and 604800),
  constraint notification_preferences_job_types_check
    check (cardinality(job_types) between 1 and 100)
);

comment on table public.notification_preferences is
  'What each user wants to be told about their jobs, and where. A user without a row '
  'gets the defaults of the columns: e-mail when a job fails for good, and when a job '
  'succeeds after running at least 60 s. Users read and write only their own row.';
comment on column public.notification_preferences.user_id is 'The Supabase Auth user.';
comment on column public.notification_preferences.email_enabled is
  'Send e-mail to the user''s auth address.';
comment on column public.notification_preferences.slack_enabled is
  'Post to the user''s Slack incoming webhook.';
comment on column public.notification_preferences.slack_webhook_url is
  'The user''s Slack incoming webhook (https://hooks.slack.com/...). A secret: only the '
  'user and the dispatcher read it, and it is never logged or copied to the outbox.';
comment on column public.notification_preferences.events is
  'Outcomes to notify: any of succeeded, failed (dead-letter queue), cancelled.';
comment on column public.notification_preferences.job_types is
  'Job types to notify about; null means every type.';
comment on column public.notification_preferences.success_min_seconds is
  'A success is notified only when the job ran at least this long (first start to '
  'finish); 0 notifies every success.';
comment on column public.notification_preferences.created_at is 'When the row was created.';

alter table public.notification_preferences enable row level security;

revoke all on public.notification_preferences from public, anon, authenticated;
grant select, insert, update, delete on public.notification_preferences to authenticated;
grant all on public.notification_preferences to service_role;

-- auth.uid() is wrapped in a select so Postgres evaluates it once per statement.
create policy "users read their own notification preferences" on public.notification_preferences
  for select to authenticated using (user_id = (select auth.uid()));

create policy "users add their own notification preferences" on public.notification_preferences
  for insert to authenticated with check (user_id = (select auth.uid()));

create policy "users change their own notification preferences" on public.notification_preferences
  for update to authenticated
  using (user_id = (select auth.uid())) with check (user_id = (select auth.uid()));

create policy "users delete their own notification preferences" on public.notification_preferences
  for delete to authenticated using (user_id = (select auth.uid()));

-- Outbox --------------------------------------------------------------------------

create table public.notification_outbox (
  id bigint generated always as identity primary key,
  job_id bigint references public.jobs (id) on delete cascade,
  event_id bigint,
  user_id uuid references auth.users (id) on delete cascade,
  audience text not null,
  channel text not null,
  kind text not null,
  details jsonb not null default '{}'::jsonb,
  status public.notification_status not null default 'pending',
  attempts integer not null default 0,
  max_attempts integer not null default 8,
  run_at timestamptz not null default now(),
  lease_token uuid,
  lease_expires_at timestamptz,
  dispatcher_id text,
  provider_status integer,
  provider_message_id text,
  last_error text,
  created_at timestamptz not null default now(),
  sent_at timestamptz,
  updated_at timestamptz not null default now(),
  -- At most one notification per job event, audience and channel: the trigger's
  -- insert and any replay of it collapse onto one row.
  constraint notification_outbox_event_id_audience_channel_key unique (event_id, audience, channel),
  constraint notification_outbox_audience_check check (audience in ('owner', 'admins')),
  constraint notification_outbox_channel_check check (channel in ('email', 'slack')),
  constraint notification_outbox_kind_check
    check (kind in ('job.succeeded', 'job.failed', 'job.cancelled',
                    'alert.dead_letter', 'alert.queue_age', 'alert.failure_rate', 'alert.cron_silent')),
  constraint notification_outbox_owner_has_job_check
    check (audience <> 'owner' or (job_id is not null and event_id is not null and user_id is not null)),
  constraint notification_outbox_leased_has_lease_check
    check (status not in ('claimed', 'attempting') or (lease_token is not null and lease_expires_at is not null)),
  constraint notification_outbox_pending_has_no_lease_check
    check (status <> 'pending' or (lease_token is null and lease_expires_at is null)),
  constraint notification_outbox_sent_has_sent_at_check check ((status = 'sent') = (sent_at is not null)),
  constraint notification_outbox_attempts_check check (attempts between 0 and max_attempts),
  constraint notification_outbox_max_attempts_check check (max_attempts between 1 and 100)
);

comment on table public.notification_outbox is
  'Notifications to send, written in the transaction of the state change that causes '
  'them (by the trigger on job_events, or by check_admin_alerts) and sent by the '
  'dispatcher at most once. Holds no address or webhook: those are read when sending.';
comment on column public.notification_outbox.id is 'Notification id.';
comment on column public.notification_outbox.job_id is 'The job it is about; null for admin alerts.';
comment on column public.notification_outbox.event_id is
  'The job_events row that caused it; null for admin alerts.';
comment on column public.notification_outbox.user_id is 'The job''s owner, for owner notifications.';
comment on column public.notification_outbox.audience is
  'owner (the job''s owner, by their preferences) or admins (EXAMQ_SLACK_ADMIN_WEBHOOK_URL).';
comment on column public.notification_outbox.channel is 'email (SendGrid) or slack (incoming webhook).';
comment on column public.notification_outbox.kind is
  'What happened: job.succeeded, job.failed, job.cancelled, or alert.<kind>.';
comment on column public.notification_outbox.details is 'Figures of an admin alert.';
comment on column public.notification_outbox.status is 'Where the notification is in its lifecycle.';
comment on column public.notification_outbox.attempts is 'Times it was handed to a provider.';
comment on column public.notification_outbox.max_attempts is
  'Attempts allowed before a retryable failure becomes failed.';
comment on column public.notification_outbox.run_at is
  'Earliest time it may be claimed: now, or later after a rate limit or provider error.';
comment on column public.notification_outbox.lease_token is
  'Token of the dispatcher that claimed it; every later call must present it.';
comment on column public.notification_outbox.lease_expires_at is
  'When a claimed or attempting row''s lease ends.';
comment on column public.notification_outbox.dispatcher_id is 'Dispatcher that claimed it last.';
comment on column public.notification_outbox.provider_status is 'HTTP status of the provider''s last answer.';
comment on column public.notification_outbox.provider_message_id is
  'Provider''s id for the accepted message (SendGrid''s X-Message-Id), when it gives one.';
comment on column public.notification_outbox.last_error is
  'Why the last attempt did not deliver, with the provider''s message.';
comment on column public.notification_outbox.created_at is 'When it was written.';
comment on column public.notification_outbox.sent_at is 'When the provider accepted it.';
comment on column public.notification_outbox.updated_at is 'When the row last changed.';

-- The claim walks pending rows in order and stops after its batch.
create index notification_outbox_run_at_id_idx on public.notification_outbox (run_at, id)
  where status = 'pending';
-- Expired leases are found without scanning finished rows.
create index notification_outbox_lease_expires_at_idx on public.notification_outbox (lease_expires_at)
  where status in ('claimed', 'attempting');
-- prune_jobs deletes jobs, which cascades here by job_id.
create index notification_outbox_job_id_idx on public.notification_outbox (job_id)
  where job_id is not null;
-- A user's own notifications, newest first, and the RLS filter.
create index notification_outbox_user_id_created_at_idx on public.notification_outbox (user_id, created_at desc)
  where user_id is not null;
-- What needs an admin's attention.
create index notification_outbox_attention_idx on public.notification_outbox (updated_at desc)
  where status in ('failed', 'uncertain');

alter table public.notification_outbox enable row level security;

revoke all on public.notification_outbox from public, anon, authenticated;
grant select on public.notification_outbox to authenticated;
grant all on public.notification_outbox to service_role;
-- Supabase's default privileges also grant the identity sequence to the API roles;
-- rows are written only by the trigger, the definer functions and the service role.
revoke all on sequence public.notification_outbox_id_seq from public, anon, authenticated;
grant usage, select on sequence public.notification_outbox_id_seq to service_role;

create policy "users read their own notifications" on public.notification_outbox
  for select to authenticated using (user_id = (select auth.uid()));

create policy "admins read all notifications" on public.notification_outbox
  for select to authenticated using ((select public.is_admin()));

-- Admin alerts and cron ticks -----------------------------------------------------

create table public.admin_alerts (
  kind text primary key,
  last_raised_at timestamptz not null,
  raised_count bigint not null default 1,
  watermark timestamptz,
  details jsonb not null default '{}'::jsonb,
  constraint admin_alerts_kind_check
    check (kind in ('dead_letter', 'queue_age', 'failure_rate', 'cron_silent'))
);

comment on table public.admin_alerts is
  'The last time each kind of admin alert was raised, so that each kind is raised at '
  'most once per window. Written only by check_admin_alerts.';
comment on column public.admin_alerts.kind is
  'dead_letter, queue_age, failure_rate or cron_silent.';
comment on column public.admin_alerts.last_raised_at is 'When this kind was last raised.';
comment on column public.admin_alerts.raised_count is 'How many times it was raised.';
comment on column public.admin_alerts.watermark is
  'dead_letter: finish time of the newest dead job already reported.';
comment on column public.admin_alerts.details is 'Figures of the last alert of this kind.';

create table public.cron_runs (
  name text primary key,
  last_succeeded_at timestamptz not null,
  succeeded_count bigint not null default 1,
  last_summary jsonb not null default '{}'::jsonb,
  constraint cron_runs_name_check check (length(name) between 1 and 100)
);

comment on table public.cron_runs is
  'The last successful run of each scheduled function (the Vercel cron is ''cron''), so '
  'that a cron that stopped running is noticed. Written by record_cron_tick.';
comment on column public.cron_runs.name is 'Which scheduled function.';
comment on column public.cron_runs.last_succeeded_at is 'When it last finished successfully.';
comment on column public.cron_runs.succeeded_count is 'Successful runs recorded.';
comment on column public.cron_runs.last_summary is 'Counts the last successful run reported.';

alter table public.admin_alerts enable row level security;
alter table public.cron_runs enable row level security;

revoke all on public.admin_alerts, public.cron_runs from public, anon, authenticated;
grant select on public.admin_alerts, public.cron_runs to authenticated;
grant all on public.admin_alerts, public.cron_runs to service_role;

create policy "admins read admin alerts" on public.admin_alerts
  for select to authenticated using ((select public.is_admin()));

create policy "admins read cron runs" on public.cron_runs
  for select to authenticated using ((select public.is_admin()));

-- The outbox trigger ----------------------------------------------------------------
-- Fires for each job event that enters a final state (the WHEN condition keeps every
-- other event, claims included, from calling it) of a job with an owner. Reads the
-- owner's preferences by primary key, or uses the defaults; reads the job by primary
-- key only when a rule needs its type or run time. Writes one outbox row per wanted
-- channel; a row that exists already is left alone. Raises nothing of its own.
-- Definer rights: it must write the outbox whatever role caused the transition (the
-- service role, a definer function, an admin in Studio); no user may write it.
create function examq_internal.write_job_notifications() returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  v_event text := case new.to_status
    when 'succeeded' then 'succeeded'
    when 'dead' then 'failed'
    else 'cancelled'
  end;
  v_pref public.notification_preferences;
  v_events text[] := array['succeeded', 'failed'];
  v_email boolean := true;
  v_slack boolean := false;
  v_job_types text[];
  v_min_seconds integer := 60;
  v_job_type text;
  v_ran interval;
begin
  select * into v_pref from public.notification_preferences p where p.user_id = new.user_id;

  if found then
    v_events := v_pref.events;
    v_email := v_pref.email_enabled;
    v_slack := v_pref.slack_enabled and v_pref.slack_webhook_url is not null;
    v_job_types := v_pref.job_types;
    v_min_seconds := v_pref.success_min_seconds;
  end if;

  if not (v_event = any (v_events)) or not (v_email or v_slack) then
    return null;
  end if;

  -- A step of a chain cancelled because the step before it ended (an event by the
  -- system naming its parent) is covered by the notice about that parent.
  if v_event = 'cancelled' and new.actor = 'system' and new.details ? 'parent_id' then
    return null;
  end if;

  if v_job_types is not null or (v_event = 'succeeded' and v_min_seconds > 0) then
    select j.job_type, j.finished_at - j.first_started_at into v_job_type, v_ran
    from public.jobs j
    where j.id = new.job_id;

    if v_job_types is not null and not (v_job_type = any (v_job_types)) then
      return null;
    end if;

    if v_event = 'succeeded' and v_min_seconds > 0
       and (v_ran is null or v_ran < make_interval(secs => v_min_seconds)) then
      return null;
    end if;
  end if;

  insert into public.notification_outbox (job_id, event_id, user_id, audience, channel, kind)
  select new.job_id, new.id, new.user_id, 'owner', c.channel, 'job.' || v_event
  from (values ('email', v_email), ('slack', v_slack)) c (channel, wanted)
  where c.wanted
  on conflict on constraint notification_outbox_event_id_audience_channel_key do nothing;

  return null;
end
$$;

comment on function examq_internal.write_job_notifications() is
  'Trigger on job_events: writes the owner''s notifications for a job that succeeded, '
  'went to the dead-letter queue or was cancelled, by their preferences or the defaults.';

create trigger job_events_write_notifications
  after insert on public.job_events
  for each row
  when (new.to_status in ('succeeded', 'dead', 'cancelled') and new.user_id is not null)
  execute function examq_internal.write_job_notifications();

comment on trigger job_events_write_notifications on public.job_events is
  'Writes the outbox in the transaction of every transition to a final state.';

-- Moves outbox rows whose lease expired: a claimed row was never handed to a
-- provider and goes back to pending; an attempting row may have been delivered, so it
-- becomes uncertain and is not sent again without an admin. Locks with skip locked
-- so concurrent claims split the work. Returns the number of rows moved.
create function examq_internal.reclaim_expired_notifications(p_limit integer) returns integer
language plpgsql volatile
set search_path = ''
as $$
declare
  v_count integer;
begin
  with expired as (
    select o.id
    from public.notification_outbox o
    where o.status in ('claimed', 'attempting') and o.lease_expires_at < now()
    order by o.lease_expires_at
    limit p_limit
    for update skip locked
  )
  update public.notification_outbox o
  set status = case when o.status = 'claimed' then 'pending' else 'uncertain' end::public.notification_status,
      last_error = case
        when o.status = 'attempting' then
          'the dispatcher stopped while sending: the provider may have delivered it, '
          'so it is not sent again unless an admin requeues it'
        else o.last_error
      end,
      lease_token = case when o.status = 'claimed' then null else o.lease_token end,
      lease_expires_at = null,
      updated_at = now()
  from expired e
  where o.id = e.id;

  get diagnostics v_count = row_count;

  return v_count;
end
$$;

comment on function examq_internal.reclaim_expired_notifications(integer) is
  'Returns expired claimed outbox rows to pending and marks expired attempting rows '
  'uncertain; called by claim_notifications.';

revoke all on function examq_internal.write_job_notifications() from public, anon, authenticated;
revoke all on function examq_internal.reclaim_expired_notifications(integer) from public, anon, authenticated;
grant execute on function examq_internal.reclaim_expired_notifications(integer) to service_role;

-- claim_notifications ---------------------------------------------------------------
-- Called by the dispatcher with the service role. First resolves expired leases
-- (reclaim_expired_notifications), then takes up to p_limit pending rows whose run_at
-- has come, in (run_at, id) order, skipping rows other claims hold (skip locked), and
-- gives each a lease token and a lease of p_lease_seconds. Locks the claimed rows.
-- Returns a JSON array, one object per claimed row, with what the dispatcher needs to
-- render and address it: the job as of its event (type, outcome, attempt, error,
-- title, result summary), the owner's name, and the recipient (auth e-mail address
-- or Slack webhook URL, read now so that the outbox never holds them). Raises EQ007.
-- Definer rights: it reads auth.users, which the service role may not read.
create function public.claim_notifications(
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
    select o.id
    from public.notification_outbox o
    where o.status = 'pending' and o.run_at <= now()
    order by o.run_at, o.id
    limit p_limit
    for update skip locked
  ), claimed as (
    update public.notification_outbox o
    set status = 'claimed',
        lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => p_lease_seconds),
        dispatcher_id = p_dispatcher_id,
        updated_at = now()
    from picked p
    where o.id = p.id and o.status = 'pending'
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

comment on function public.claim_notifications(text, integer, integer) is
  'Dispatcher call: leases up to p_limit pending notifications and returns them with '
  'their recipient and the job''s figures, as a JSON array.';

revoke execute on function public.claim_notifications(text, integer, integer) from public, anon, authenticated;
grant execute on function public.claim_notifications(text, integer, integer) to service_role;

-- start_notification_send ---------------------------------------------------------
-- Called by the dispatcher holding the lease, right before it calls the provider.
-- Moves the row from claimed to attempting, counts the attempt and renews the lease
-- for p_lease_seconds; from here on, a lease that runs out means "maybe delivered".
-- Returns {id, status, attempts}. Raises EQ008 (no such notification), EQ005 (the
-- lease is gone: another dispatcher or the reclaim took the row), EQ007.
create function public.start_notification_send(
  p_id bigint,
  p_lease_token uuid,
  p_lease_seconds integer default 120
) returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
  v_row public.notification_outbox;
begin
  if p_lease_seconds is null or p_lease_seconds not between 5 and 3600 then
    raise exception using
      errcode = 'EQ007',
      message = format('lease_seconds must be between 5 and 3600, not %s', p_lease_seconds);
  end if;

  update public.notification_outbox o
  set status = 'attempting',
      attempts = o.attempts + 1,
      lease_expires_at = now() + make_interval(secs => p_lease_seconds),
      updated_at = now()
  where o.id = p_id and o.status = 'claimed' and o.lease_token = p_lease_token
  returning o.* into v_row;

  if not found then
    perform examq_internal.explain_notification_miss(p_id, p_lease_token);
  end if;

  return jsonb_build_object('id', v_row.id, 'status', v_row.status, 'attempts', v_row.attempts);
end
$$;

comment on function public.start_notification_send(bigint, uuid, integer) is
  'Dispatcher call: marks a claimed notification attempting just before it is sent.';

-- Raises the error that explains why a dispatcher call matched no row under its lease.
create function examq_internal.explain_notification_miss(p_id bigint, p_lease_token uuid) returns void
language plpgsql stable
set search_path = ''
as $$
declare
  v_row public.notification_outbox;
begin
  select * into v_row from public.notification_outbox o where o.id = p_id;

  if not found then
    raise exception using errcode = 'EQ008', message = format('notification %s not found', p_id);
  end if;

  raise exception using
    errcode = 'EQ005',
    message = format('lease lost on notification %s: it is %s under another lease or none', p_id, v_row.status),
    detail = format('notification_id=%s', p_id);
end
$$;

comment on function examq_internal.explain_notification_miss(bigint, uuid) is
  'Raises notification-not-found or lease-lost for a dispatcher call that matched no row.';

revoke all on function examq_internal.explain_notification_miss(bigint, uuid) from public, anon, authenticated;
grant execute on function examq_internal.explain_notification_miss(bigint, uuid) to service_role;

revoke execute on function public.start_notification_send(bigint, uuid, integer) from public, anon, authenticated;
grant execute on function public.start_notification_send(bigint, uuid, integer) to service_role;

-- finish_notification -------------------------------------------------------------
-- Called by the dispatcher holding the lease, with what the provider answered:
--   'sent'      attempting -> sent (the provider accepted it);
--   'retry'     attempting -> pending, run_at = now() + the larger of the capped
--               exponential backoff and the provider's hint (p_retry_after_seconds,
--               e.g. Slack's Retry-After, or p_retry_at_epoch, e.g. SendGrid's
--               X-RateLimit-Reset, read against the database clock), capped at one
--               day; a retry after the last attempt becomes failed;
--   'failed'    claimed or attempting -> failed (a permanent refusal, or nothing to
--               send to);
--   'uncertain' attempting -> uncertain (the request may have reached the provider);
--   'released'  claimed -> pending, attempt not counted (the pass ran out of time).
-- A row the reclaim marked uncertain while its send was still in flight keeps its
-- lease token, so the answer that arrives late with that token is still recorded
-- (sent, retry, failed) instead of leaving the row for an admin. The same call
-- repeated with the same lease returns outcome already_recorded. Locks the row. Returns {id, status, outcome, run_at}. Raises EQ005, EQ007, EQ008.
create function public.finish_notification(
  p_id bigint,
  p_lease_token uuid,
  p_outcome text,
  p_error text default null,
  p_provider_status integer default null,
  p_provider_message_id text default null,
  p_retry_after_seconds double precision default null,
  p_retry_at_epoch double precision default null
) returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
  v_row public.notification_outbox;
  v_error text := left(nullif(p_error, ''), 2000);
  v_hint double precision;
  v_delay double precision;
  v_target public.notification_status;
begin
  if p_outcome is null or p_outcome not in ('sent', 'retry', 'failed', 'uncertain', 'released') then
    raise exception using
      errcode = 'EQ007',
      message = format('outcome must be sent, retry, failed, uncertain or released, not %L', p_outcome);
  end if;

  select * into v_row from public.notification_outbox o where o.id = p_id for update;

  if not found then
    raise exception using errcode = 'EQ008', message = format('notification %s not found', p_id);
  end if;

  if v_row.lease_token is distinct from p_lease_token
     or v_row.status not in ('claimed', 'attempting', 'uncertain')
     or (p_outcome in ('sent', 'retry', 'uncertain') and v_row.status = 'claimed')
     or (p_outcome = 'released' and v_row.status <> 'claimed')
     or (p_outcome = 'uncertain' and v_row.status = 'uncertain') then
    v_target := case p_outcome
      when 'sent' then 'sent' when 'failed' then 'failed' when 'uncertain' then 'uncertain'
    end::public.notification_status;
    -- A repeated call: the same lease already recorded this very outcome.
    if v_row.lease_token is not distinct from p_lease_token and v_row.status = v_target then
      return jsonb_build_object('id', v_row.id, 'status', v_row.status, 'outcome', 'already_recorded',
                                'run_at', v_row.run_at);
    end if;

    raise exception using
      errcode = 'EQ005',
      message = format('lease lost on notification %s: it is %s, cannot record %s', p_id, v_row.status, p_outcome),
      detail = format('notification_id=%s', p_id);
  end if;

  if p_outcome = 'retry' and v_row.attempts < v_row.max_attempts then
    -- Hints are clamped to a day, so a bogus header cannot park a row for years.
    v_hint := greatest(
      coalesce(p_retry_after_seconds, 0),
      coalesce(p_retry_at_epoch - extract(epoch from now()), 0)
    );
    v_delay := least(86400, greatest(
      examq_internal.retry_delay_seconds(v_row.attempts, 10, 1800),
      v_hint
    ));

    update public.notification_outbox o
    set status = 'pending',
        run_at = now() + make_interval(secs => v_delay),
        lease_token = null,
        lease_expires_at = null,
        provider_status = p_provider_status,
        last_error = v_error,
        updated_at = now()
    where o.id = p_id
    returning o.* into v_row;

    return jsonb_build_object('id', v_row.id, 'status', v_row.status, 'outcome', 'retry_scheduled',
                              'run_at', v_row.run_at);
  end if;

  if p_outcome = 'released' then
    update public.notification_outbox o
    set status = 'pending', lease_token = null, lease_expires_at = null, updated_at = now()
    where o.id = p_id
    returning o.* into v_row;

    return jsonb_build_object('id', v_row.id, 'status', v_row.status, 'outcome', 'released',
                              'run_at', v_row.run_at);
  end if;

  update public.notification_outbox o
  set status = case p_outcome
        when 'sent' then 'sent'
        when 'uncertain' then 'uncertain'
        else 'failed'
      end::public.notification_status,
      sent_at = case when p_outcome = 'sent' then now() end,
      lease_expires_at = null,
      provider_status = p_provider_status,
      provider_message_id = left(p_provider_message_id, 200),
      last_error = case
        when p_outcome = 'sent' then null
        when p_outcome = 'retry' then
          format('gave up after %s attempts: %s', o.attempts, coalesce(v_error, 'no reason given'))
        else coalesce(v_error, 'no reason given')
      end,
      updated_at = now()
  where o.id = p_id
  returning o.* into v_row;

  return jsonb_build_object('id', v_row.id, 'status', v_row.status, 'outcome', v_row.status::text,
                            'run_at', v_row.run_at);
end
$$;

comment on function public.finish_notification(bigint, uuid, text, text, integer, text, double precision, double precision) is
  'Dispatcher call: records what the provider answered (sent, retry later, failed, '
  'uncertain) or hands back an unstarted notification.';

revoke execute on function public.finish_notification(bigint, uuid, text, text, integer, text, double precision, double precision)
  from public, anon, authenticated;
grant execute on function public.finish_notification(bigint, uuid, text, text, integer, text, double precision, double precision)
  to service_role;

-- requeue_notification --------------------------------------------------------------
-- Called by admins (from Studio or the dashboard) and the service role, after
-- checking with the provider that an uncertain notification was not delivered, or
-- after fixing what made one fail. Puts a failed or uncertain row back to pending
-- with a fresh set of attempts. Locks the row. Returns {id, status, outcome:
-- requeued}. Raises EQ006 (not failed or uncertain), EQ008, 42501.
-- Definer rights: admins are ordinary authenticated users without write privileges.
create function public.requeue_notification(p_id bigint) returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  v_kind text := examq_internal.caller_kind();
  v_row public.notification_outbox;
begin
  if v_kind = 'anon' or (v_kind = 'user' and not public.is_admin()) then
    raise exception using errcode = '42501', message = 'only admins may requeue notifications';
  end if;

  select * into v_row from public.notification_outbox o where o.id = p_id for update;

  if not found then
    raise exception using errcode = 'EQ008', message = format('notification %s not found', p_id);
  end if;

  if v_row.status not in ('failed', 'uncertain') then
    raise exception using
      errcode = 'EQ006',
      message = format('notification %s is %s; only failed or uncertain ones can be requeued', p_id, v_row.status);
  end if;

  update public.notification_outbox o
  set status = 'pending', attempts = 0, run_at = now(), lease_token = null, lease_expires_at = null,
      last_error = format('requeued by %s after: %s',
                          case when v_kind = 'service' then 'the service' else 'an admin' end,
                          coalesce(o.last_error, 'no reason given')),
      updated_at = now()
  where o.id = p_id;

  return jsonb_build_object('id', p_id, 'status', 'pending', 'outcome', 'requeued');
end
$$;

comment on function public.requeue_notification(bigint) is
  'Admin call: sends a failed or uncertain notification again (after checking it was '
  'not delivered).';

revoke execute on function public.requeue_notification(bigint) from public, anon;
grant execute on function public.requeue_notification(bigint) to authenticated, service_role;

-- set_notification_preferences --------------------------------------------------------
-- Called by signed-in users for themselves (row-level security applies) and by the
-- service role for any user (the demo, admin tooling). Creates or replaces the whole
-- row; a null argument takes the column's default. p_events is a JSON array of
-- strings (both transports pass lists as jsonb). Returns the row as JSON, with
-- has_slack_webhook in place of the webhook URL (a secret). Raises 42501 when a
-- user names someone else, 23514 (check violation) for values out of range, EQ007
-- when no user is named or p_events is not an array of strings.
create function public.set_notification_preferences(
  p_email_enabled boolean default true,
  p_slack_enabled boolean default false,
  p_slack_webhook_url text default null,
  p_events jsonb default null,
  p_job_types text[] default null,
  p_success_min_seconds integer default null,
  p_user_id uuid default null
) returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
  -- examq_internal.caller_kind(), spelled out: this function runs with the caller's
  -- rights (so row-level security applies to users), and users have no access to
  -- the examq_internal schema.
  v_kind text := case
    when auth.role() = 'service_role' then 'service'
    when auth.uid() is not null then 'user'
    when auth.role() in ('anon', 'authenticated') then 'anon'
    else 'service'
  end;
  v_user uuid := coalesce(p_user_id, auth.uid());
  v_row public.notification_preferences;
  v_events text[];
begin
  if v_kind = 'anon' then
    raise exception using errcode = '42501', message = 'sign in to set notification preferences';
  end if;

  if v_kind = 'user' and v_user is distinct from auth.uid() then
    raise exception using errcode = '42501', message = 'users may set only their own notification preferences';
  end if;

  if v_user is null then
    raise exception using errcode = 'EQ007', message = 'user_id is required';
  end if;

  if p_events is not null then
    if jsonb_typeof(p_events) <> 'array'
       or exists (select from jsonb_array_elements(p_events) e where jsonb_typeof(e) <> 'string') then
      raise exception using errcode = 'EQ007', message = 'events must be a JSON array of strings';
    end if;
    v_events := array(select jsonb_array_elements_text(p_events));
  end if;

  insert into public.notification_preferences as p
    (user_id, email_enabled, slack_enabled, slack_webhook_url, events, job_types, success_min_seconds)
  values
    (v_user, coalesce(p_email_enabled, true), coalesce(p_slack_enabled, false), p_slack_webhook_url,
     coalesce(v_events, array['succeeded', 'failed']), p_job_types, coalesce(p_success_min_seconds, 60))
  on conflict (user_id) do update
  set email_enabled = excluded.email_enabled,
      slack_enabled = excluded.slack_enabled,
      slack_webhook_url = excluded.slack_webhook_url,
      events = excluded.events,
      job_types = excluded.job_types,
      success_min_seconds = excluded.success_min_seconds
  returning p.* into v_row;

  return (to_jsonb(v_row) - 'slack_webhook_url')
         || jsonb_build_object('has_slack_webhook', v_row.slack_webhook_url is not null);
end
$$;

comment on function public.set_notification_preferences(boolean, boolean, text, jsonb, text[], integer, uuid) is
  'Creates or replaces a user''s notification preferences (their own, or any with the '
  'service role).';

revoke execute on function public.set_notification_preferences(boolean, boolean, text, jsonb, text[], integer, uuid)
  from public, anon;
grant execute on function public.set_notification_preferences(boolean, boolean, text, jsonb, text[], integer, uuid)
  to authenticated, service_role;

-- record_cron_tick ----------------------------------------------------------------
-- Called by the cron function with the service role at the end of each successful
-- tick. Upserts the tick's row. Returns the time recorded. Raises EQ007.
create function public.record_cron_tick(
  p_name text default 'cron',
  p_summary jsonb default '{}'::jsonb
) returns timestamptz
language plpgsql volatile
set search_path = ''
as $$
begin
  if p_name is null or length(p_name) not between 1 and 100 then
    raise exception using errcode = 'EQ007', message = 'name must be 1 to 100 characters';
  end if;

  insert into public.cron_runs as r (name, last_succeeded_at, last_summary)
  values (p_name, now(), coalesce(p_summary, '{}'::jsonb))
  on conflict (name) do update
  set last_succeeded_at = now(), succeeded_count = r.succeeded_count + 1, last_summary = excluded.last_summary;

  return now();
end
$$;

comment on function public.record_cron_tick(text, jsonb) is
  'Cron call: records that a scheduled run finished successfully, for the cron_silent alert.';

revoke execute on function public.record_cron_tick(text, jsonb) from public, anon, authenticated;
grant execute on function public.record_cron_tick(text, jsonb) to service_role;

-- Records an alert of p_kind unless one was raised less than p_window ago; when it is
-- raised and p_notify is set, writes an outbox row for the admins' Slack channel in
-- the same transaction. The upsert locks the kind's row, so two concurrent checks
-- raise it once. Returns whether it was raised.
create function examq_internal.raise_admin_alert(
  p_kind text,
  p_details jsonb,
  p_window interval,
  p_notify boolean,
  p_watermark timestamptz default null
) returns boolean
language plpgsql volatile
set search_path = ''
as $$
declare
  v_raised boolean;
begin
  insert into public.admin_alerts as a (kind, last_raised_at, watermark, details)
  values (p_kind, now(), p_watermark, p_details)
  on conflict (kind) do update
  set last_raised_at = now(),
      raised_count = a.raised_count + 1,
      watermark = coalesce(excluded.watermark, a.watermark),
      details = excluded.details
  where a.last_raised_at <= now() - p_window
  returning true into v_raised;

  if v_raised and p_notify then
    insert into public.notification_outbox (audience, channel, kind, details)
    values ('admins', 'slack', 'alert.' || p_kind, p_details);
  end if;

  return coalesce(v_raised, false);
end
$$;

comment on function examq_internal.raise_admin_alert(text, jsonb, interval, boolean, timestamptz) is
  'Raises an admin alert at most once per window, writing its outbox row when asked.';

revoke all on function examq_internal.raise_admin_alert(text, jsonb, interval, boolean, timestamptz)
  from public, anon, authenticated;
grant execute on function examq_internal.raise_admin_alert(text, jsonb, interval, boolean, timestamptz)
  to service_role;

-- check_admin_alerts --------------------------------------------------------------
-- Called by the dispatcher (each cron tick, and `examq notify`) with the service
-- role. Checks four conditions and raises each as an admin alert at most once per
-- p_window_seconds (raise_admin_alert):
--   dead_letter   jobs entered the dead-letter queue since the last such alert
--                 (reported together: how many, and the newest few);
--   queue_age     the oldest ready queued job has waited over p_queue_age_seconds;
--   failure_rate  of the jobs finished in the last p_failure_window_seconds (at least
--                 p_failure_min_jobs of them), more than p_failure_rate went dead;
--   cron_silent   the cron has not recorded a successful tick for over
--                 p_cron_silence_seconds (never, if it has never ticked).
-- Dead jobs are found through jobs_status_dead_finished_at_idx, finished ones through
-- jobs_finished_at_idx; the queue age reads the queued jobs only. A job that dies in
-- a transaction that started before the newest job already reported and commits
-- after the check is counted in no alert (it is still in dead_letter_jobs). With
-- p_notify false the alerts are recorded in admin_alerts but not sent. Returns a JSON
-- array of the alerts raised now, each {kind, ...figures}. Raises EQ007.
create function public.check_admin_alerts(
  p_window_seconds integer default 1800,
  p_queue_age_seconds integer default 900,
  p_failure_rate double precision default 0.25,
  p_failure_min_jobs integer default 10,
  p_failure_window_seconds integer default 900,
  p_cron_silence_seconds integer default 300,
  p_notify boolean default true
) returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
  v_window interval;
  v_since timestamptz;
  v_dead bigint;
  v_newest timestamptz;
  v_examples jsonb;
  v_oldest double precision;
  v_queued bigint;
  v_succeeded bigint;
  v_failed bigint;
  v_last_tick timestamptz;
  v_details jsonb;
  v_raised jsonb := '[]'::jsonb;
begin
  if p_window_seconds is null or p_window_seconds not between 60 and 604800
     or p_queue_age_seconds is null or p_queue_age_seconds not between 1 and 604800
     or p_failure_rate is null or not (p_failure_rate > 0 and p_failure_rate <= 1)
     or p_failure_min_jobs is null or p_failure_min_jobs not between 1 and 1000000
     or p_failure_window_seconds is null or p_failure_window_seconds not between 60 and 604800
     or p_cron_silence_seconds is null or p_cron_silence_seconds not between 60 and 604800 then
    raise exception using
      errcode = 'EQ007',
      message = 'alert thresholds out of range: window 60-604800 s, queue age 1-604800 s, '
                'failure rate in (0, 1], failure min jobs >= 1, failure window and cron '
                'silence 60-604800 s';
  end if;

  v_window := make_interval(secs => p_window_seconds);

  -- Dead-letter queue: every job that died since the newest one already reported.
  select coalesce(
           (select a.watermark from public.admin_alerts a where a.kind = 'dead_letter'),
           now() - v_window)
  into v_since;

  select count(*), max(d.finished_at),
         coalesce(jsonb_agg(jsonb_build_object('job_id', d.id, 'job_type', d.job_type, 'error_kind', d.error_kind,
                                               'error', left(d.last_error, 200))
                            order by d.finished_at desc) filter (where d.nth <= 5), '[]'::jsonb)
  into v_dead, v_newest, v_examples
  from (
    select j.id, j.job_type, j.error_kind, j.last_error, j.finished_at,
           row_number() over (order by j.finished_at desc) as nth
    from public.jobs j
    where j.status = 'dead' and j.finished_at > v_since
  ) d;

  if v_dead > 0 then
    v_details := jsonb_build_object('kind', 'dead_letter', 'count', v_dead, 'since', v_since, 'jobs', v_examples);
    if examq_internal.raise_admin_alert('dead_letter', v_details, v_window, p_notify, v_newest) then
      v_raised := v_raised || jsonb_build_array(v_details);
    end if;
  end if;

  -- Queue age: the oldest job that could run now and has not been claimed.
  select extract(epoch from now() - min(j.run_at)), count(*)
  into v_oldest, v_queued
  from public.jobs j
  where j.status = 'queued' and j.run_at <= now();

  if v_oldest > p_queue_age_seconds then
    v_details := jsonb_build_object('kind', 'queue_age', 'oldest_seconds', round(v_oldest::numeric, 1),
                                    'threshold_seconds', p_queue_age_seconds, 'ready', v_queued);
    if examq_internal.raise_admin_alert('queue_age', v_details, v_window, p_notify) then
      v_raised := v_raised || jsonb_build_array(v_details);
    end if;
  end if;

  -- Failure rate over the recent window.
  select count(*) filter (where j.status = 'succeeded'), count(*) filter (where j.status = 'dead')
  into v_succeeded, v_failed
  from public.jobs j
  where j.finished_at >= now() - make_interval(secs => p_failure_window_seconds)
    and j.status in ('succeeded', 'dead');

  if v_succeeded + v_failed >= p_failure_min_jobs
     and v_failed::double precision / (v_succeeded + v_failed) > p_failure_rate then
    v_details := jsonb_build_object(
      'kind', 'failure_rate',
      'rate', round(v_failed::numeric / (v_succeeded + v_failed), 4),
      'threshold', p_failure_rate, 'failed', v_failed, 'finished', v_succeeded + v_failed,
      'window_seconds', p_failure_window_seconds);
    if examq_internal.raise_admin_alert('failure_rate', v_details, v_window, p_notify) then
      v_raised := v_raised || jsonb_build_array(v_details);
    end if;
  end if;

  -- Cron silence: read before this tick records itself, so the gap since the
  -- previous successful tick is what is measured.
  select r.last_succeeded_at into v_last_tick from public.cron_runs r where r.name = 'cron';

  if v_last_tick < now() - make_interval(secs => p_cron_silence_seconds) then
    v_details := jsonb_build_object('kind', 'cron_silent', 'last_succeeded_at', v_last_tick,
                                    'silent_seconds', round(extract(epoch from now() - v_last_tick)::numeric, 0),
                                    'threshold_seconds', p_cron_silence_seconds);
    if examq_internal.raise_admin_alert('cron_silent', v_details, v_window, p_notify) then
      v_raised := v_raised || jsonb_build_array(v_details);
    end if;
  end if;

  return v_raised;
end
$$;

comment on function public.check_admin_alerts(integer, integer, double precision, integer, integer, integer, boolean) is
  'Dispatcher call: raises the dead-letter, queue-age, failure-rate and cron-silence '
  'admin alerts, each at most once per window. Returns the alerts raised now.';

revoke execute on function public.check_admin_alerts(integer, integer, double precision, integer, integer, integer, boolean)
  from public, anon, authenticated;
grant execute on function public.check_admin_alerts(integer, integer, double precision, integer, integer, integer, boolean)
  to service_role;
