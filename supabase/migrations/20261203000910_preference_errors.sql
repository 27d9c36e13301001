-- set_notification_preferences says what is wrong with a refused value.
--
-- A value the table's checks refuse (an unknown event, an empty job type list, a
-- negative run time, a webhook that is not Slack's) reached the caller as the raw
-- check-constraint error, naming the constraint rather than the field; the dashboard
-- showed it as it came. The same checks are now made first, each with an EQ007 error
-- in words. The table keeps its checks, for writes that do not go through here.
-- Otherwise the contract is that of the migration that introduced the function.

create or replace function public.set_notification_preferences(
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

  -- The table's checks, said in words before the row is written.
  if v_events is not null and not (v_events <@ array['succeeded', 'failed', 'cancelled']) then
    raise exception using
      errcode = 'EQ007',
      message = format('events may name succeeded, failed and cancelled, not %s',
                       (select string_agg(quote_literal(left(e, 50)), ', ')
                        from unnest(v_events) e
                        where e not in ('succeeded', 'failed', 'cancelled')));
  end if;

  if p_job_types is not null and cardinality(p_job_types) not between 1 and 100 then
    raise exception using
      errcode = 'EQ007',
      message = format('job_types must name 1 to 100 job types (or be null for every type), not %s',
                       cardinality(p_job_types));
  end if;

  if p_success_min_seconds is not null and p_success_min_seconds not between 0 and 604800 then
    raise exception using
      errcode = 'EQ007',
      message = format('success_min_seconds must be between 0 and 604800 (a week), not %s', p_success_min_seconds);
  end if;

  if p_slack_webhook_url is not null
     and not (p_slack_webhook_url ~ '^https://hooks\.slack(-gov)?\.com/[A-Za-z0-9/_-]+$'
              and length(p_slack_webhook_url) <= 500) then
    raise exception using
      errcode = 'EQ007',
      message = 'the Slack webhook URL must be an incoming-webhook address, https://hooks.slack.com/services/..., '
                'of at most 500 characters';
  end if;

  if coalesce(p_slack_enabled, false) and p_slack_webhook_url is null then
    raise exception using errcode = 'EQ007', message = 'Slack notifications need a webhook URL';
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

