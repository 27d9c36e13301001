-- A chain notifies its owner once, with the chain's outcome.
--
-- Each step of a chain (the exam pipeline's check, import, grade and report) was a job
-- of its own to the notifications: a teacher who wanted every outcome got one e-mail
-- per step, and the first could say "finished successfully" for the check step of a
-- chain whose import then failed. Now:
-- - a step that succeeds while a step after it is still to run (waiting, queued or
--   running) writes no notification; a step whose later steps ended (cancelled with
--   a cancel request, say) reports its own success;
-- - a step cancelled before it started (from waiting, with its chain) writes none:
--   the step where the chain stopped reports the outcome (as before, steps cancelled
--   by the chain's trigger wrote none either);
-- - the run time the success rule compares with success_min_seconds is, for a chain
--   step, the sum of its own and its earlier steps' run times (each from its first
--   start to its end, so neither the waits between steps nor a requeue days later
--   count), and a job type filter matches if it names the step's type or an earlier
--   step's (a teacher who asked for exam.grade hears of the pipeline that graded).
-- Both write_job_notifications (when the row is written) and
-- unwanted_notification_reason (when it is sent) apply them. Otherwise the contracts
-- are those of the migrations that introduced them.

-- job_ancestors -----------------------------------------------------------------------
-- A job's earlier steps: its parent, the parent's parent, and so on (at most 100 levels,
-- as get_chain reads).
create function examq_internal.job_ancestors(p_parent_id bigint) returns setof public.jobs
language sql stable
set search_path = ''
as $$
  with recursive up as (
    select j, 1 as depth from public.jobs j where j.id = p_parent_id
    union all
    select p, u.depth + 1 from up u join public.jobs p on p.id = (u.j).parent_id where u.depth < 100
  )
  select (u.j).* from up u
$$;

comment on function examq_internal.job_ancestors(bigint) is
  'The jobs a job descends from (parent first, at most 100 levels).';

-- job_run_time ------------------------------------------------------------------------
-- How long a finished job ran, from its first start to its end, plus, for a chain
-- step, its earlier steps' run times. Null while unfinished or never started.
create function examq_internal.job_run_time(p_job public.jobs) returns interval
language sql stable
set search_path = ''
as $$
  select (p_job.finished_at - p_job.first_started_at)
         + coalesce((select sum(a.finished_at - a.first_started_at)
                     from examq_internal.job_ancestors(p_job.parent_id) a), interval '0')
$$;

comment on function examq_internal.job_run_time(public.jobs) is
  'How long a finished job ran; for a chain step, with its earlier steps'' run times.';

-- chain_job_types ---------------------------------------------------------------------
-- A job's type and its earlier steps' types.
create function examq_internal.chain_job_types(p_job public.jobs) returns text[]
language sql stable
set search_path = ''
as $$
  select array[p_job.job_type] || array(select a.job_type from examq_internal.job_ancestors(p_job.parent_id) a)
$$;

comment on function examq_internal.chain_job_types(public.jobs) is
  'A job''s type and those of the chain steps before it.';

revoke all on function examq_internal.job_ancestors(bigint) from public, anon, authenticated;
revoke all on function examq_internal.job_run_time(public.jobs) from public, anon, authenticated;
revoke all on function examq_internal.chain_job_types(public.jobs) from public, anon, authenticated;
grant execute on function examq_internal.job_ancestors(bigint) to service_role;
grant execute on function examq_internal.job_run_time(public.jobs) to service_role;
grant execute on function examq_internal.chain_job_types(public.jobs) to service_role;

-- write_job_notifications -------------------------------------------------------------
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
      -- A chain step that never started, cancelled with its chain, is not the chain's
      -- outcome: the step where the chain stopped reports it.
      and not (n.to_status = 'cancelled' and n.from_status = 'waiting')
  ) e
  left join public.notification_preferences p on p.user_id = e.user_id
  cross join lateral (
    values ('email', coalesce(p.email_enabled, true)),
           ('slack', coalesce(p.slack_enabled and p.slack_webhook_url is not null, false))
  ) c (channel, wanted)
  -- The job is read only when a rule needs its type or its run time.
  left join lateral (
    select case when j.parent_id is null then array[j.job_type] else examq_internal.chain_job_types(j) end
             as job_types,
           case when j.parent_id is null then j.finished_at - j.first_started_at
                else examq_internal.job_run_time(j) end as ran
    from public.jobs j
    where j.id = e.job_id
      and (p.job_types is not null or (e.event = 'succeeded' and coalesce(p.success_min_seconds, 60) > 0))
  ) j on true
  where c.wanted
    and e.event = any (coalesce(p.events, array['succeeded', 'failed']))
    -- `is not false`: a list holding a null filters out nothing, as before.
    and (p.job_types is null
         or exists (select from unnest(j.job_types) t (name) where (t.name = any (p.job_types)) is not false))
    and not (e.event = 'succeeded'
             and coalesce(p.success_min_seconds, 60) > 0
             and (j.ran is null or j.ran < make_interval(secs => coalesce(p.success_min_seconds, 60))))
    -- Nor is a step that succeeded while the chain goes on (advance_chain, which runs
    -- first, has already made its next step queued). Checked last, so only for a
    -- success the rules above would notify: most successes of a busy queue are short
    -- and never reach the probe.
    and not (e.event = 'succeeded'
             and exists (select from public.jobs s
                         where s.parent_id = e.job_id and s.status in ('waiting', 'queued', 'running')))
  order by e.id, c.channel
  on conflict on constraint notification_outbox_event_id_audience_channel_key do nothing;

  return null;
end
$$;

-- unwanted_notification_reason ------------------------------------------------------
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
    when p.job_types is not null
         and not exists (select from unnest(j.job_types) t (name) where (t.name = any (p.job_types)) is not false) then
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
    select jj.job_type, examq_internal.chain_job_types(jj) as job_types, examq_internal.job_run_time(jj) as ran
    from public.jobs jj
    where jj.id = p_job_id
  ) j on true
$$;
