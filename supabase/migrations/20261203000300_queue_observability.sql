-- Reading the queue: statistics for the dashboard, views for admins in Studio, and a
-- bounded retention function for the cron's housekeeping.
--
-- The views run with the caller's rights (security_invoker), so row-level security
-- applies: a teacher sees figures about their own jobs, an admin about all jobs.
-- Every query here is bounded by a partial index or a time window, so none of them
-- reads the whole history of finished jobs.

-- queue_stats ---------------------------------------------------------------------
-- Called by the dashboard (any signed-in user; RLS limits what is counted) and by the
-- service role. Counts queued and running jobs now, and over the last p_window: jobs
-- finished by status, success rate, wait (enqueue to first start) and run time
-- percentiles, throughput per bucket of p_bucket. Returns one JSON object. Raises
-- EQ007 for a window outside 1 minute to 31 days or a bucket that makes more than
-- 1,000 points.
create function public.queue_stats(
  p_window interval default interval '24 hours',
  p_bucket interval default interval '1 hour'
) returns jsonb
language plpgsql stable
set search_path = ''
as $$
declare
  v_since timestamptz;
  v_result jsonb;
begin
  if p_window is null or p_window < interval '1 minute' or p_window > interval '31 days' then
    raise exception using errcode = 'EQ007', message = 'window must be between 1 minute and 31 days';
  end if;

  -- date_bin cannot bin by months or years; such buckets are refused here.
  if p_bucket is null or p_bucket <= interval '0'
     or extract(month from p_bucket) <> 0 or extract(year from p_bucket) <> 0
     or extract(epoch from p_window) / extract(epoch from p_bucket) > 1000 then
    raise exception using errcode = 'EQ007', message = 'bucket must be positive and make at most 1000 points';
  end if;

  -- Windows are measured in elapsed seconds, so a window of days means the same
  -- span whatever the session's time zone and its daylight-saving changes.
  v_since := now() - make_interval(secs => extract(epoch from p_window));

  select jsonb_build_object(
    'generated_at', now(),
    'window_seconds', extract(epoch from p_window),
    'now', (
      select coalesce(jsonb_object_agg(s.status, s.n), '{}'::jsonb)
      from (
        select j.status::text as status, count(*) as n
        from public.jobs j
        where j.status in ('queued', 'running')
        group by j.status
      ) s
    ),
    'queued_by_tier', (
      select coalesce(jsonb_object_agg(s.tier, s.n), '{}'::jsonb)
      from (select j.tier, count(*) as n from public.jobs j where j.status = 'queued' group by j.tier) s
    ),
    'oldest_queued_seconds', (
      select extract(epoch from now() - min(j.run_at))
      from public.jobs j
      where j.status = 'queued' and j.run_at <= now()
    ),
    'finished', (
      select coalesce(jsonb_object_agg(s.status, s.n), '{}'::jsonb)
      from (
        select j.status::text as status, count(*) as n
        from public.jobs j
        where j.finished_at >= v_since
        group by j.status
      ) s
    ),
    'success_rate', (
      select round(count(*) filter (where j.status = 'succeeded')::numeric / nullif(count(*), 0), 4)
      from public.jobs j
      where j.finished_at >= v_since and j.status in ('succeeded', 'dead')
    ),
    'wait_seconds', (
      select jsonb_build_object(
        'p50', percentile_cont(0.5) within group (order by extract(epoch from j.first_started_at - j.created_at)),
        'p95', percentile_cont(0.95) within group (order by extract(epoch from j.first_started_at - j.created_at)),
        'p99', percentile_cont(0.99) within group (order by extract(epoch from j.first_started_at - j.created_at))
      )
      from public.jobs j
      where j.finished_at >= v_since and j.first_started_at is not null
    ),
    'run_seconds', (
      select jsonb_build_object(
        'p50', percentile_cont(0.5) within group (order by extract(epoch from j.finished_at - j.started_at)),
        'p95', percentile_cont(0.95) within group (order by extract(epoch from j.finished_at - j.started_at)),
        'p99', percentile_cont(0.99) within group (order by extract(epoch from j.finished_at - j.started_at))
      )
      from public.jobs j
      where j.finished_at >= v_since and j.status = 'succeeded' and j.started_at is not null
    ),
    'throughput', (
      select coalesce(jsonb_agg(jsonb_build_object('at', b.at, 'succeeded', b.succeeded, 'failed', b.failed)
                                order by b.at), '[]'::jsonb)
      from (
        select date_bin(p_bucket, j.finished_at, v_since) as at,
               count(*) filter (where j.status = 'succeeded') as succeeded,
               count(*) filter (where j.status = 'dead') as failed
        from public.jobs j
        where j.finished_at >= v_since
        group by 1
      ) b
    )
  ) into v_result;

  return v_result;
end
$$;

comment on function public.queue_stats(interval, interval) is
  'Dashboard figures: queued/running now, and over a window the finished counts, success '
  'rate, wait and run-time percentiles, and throughput per bucket. Subject to RLS.';

revoke execute on function public.queue_stats(interval, interval) from public, anon;
grant execute on function public.queue_stats(interval, interval) to authenticated, service_role;

-- prune_jobs ----------------------------------------------------------------------
-- Called by the cron's housekeeping with the service role. Deletes up to p_limit jobs
-- that finished before now() - p_older_than, oldest first, with their events (by the
-- foreign key's cascade). Bounded so one call never holds locks for long; call again
-- while it returns p_limit. Returns the number of jobs deleted. Raises EQ007.
create function public.prune_jobs(
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
    select j.id
    from public.jobs j
    where j.finished_at < now() - make_interval(secs => extract(epoch from p_older_than))
    order by j.finished_at
    limit p_limit
    for update skip locked
  )
  delete from public.jobs j using doomed d where j.id = d.id;

  get diagnostics v_count = row_count;

  return v_count;
end
$$;

comment on function public.prune_jobs(interval, integer) is
  'Retention: deletes up to p_limit jobs finished longer ago than p_older_than, with their events.';

revoke execute on function public.prune_jobs(interval, integer) from public, anon, authenticated;
grant execute on function public.prune_jobs(interval, integer) to service_role;

-- Views for Studio ----------------------------------------------------------------

create view public.queue_depth with (security_invoker = true) as
select j.tier,
       j.job_type,
       count(*) filter (where j.status = 'queued') as queued,
       count(*) filter (where j.status = 'queued' and j.run_at <= now()) as ready,
       count(*) filter (where j.status = 'running') as running,
       max(now() - j.run_at) filter (where j.status = 'queued' and j.run_at <= now()) as oldest_ready_wait
from public.jobs j
where j.status in ('queued', 'running')
group by j.tier, j.job_type;

comment on view public.queue_depth is
  'Jobs waiting and running now, by tier and job type, with the longest current wait.';
comment on column public.queue_depth.tier is 'Tier of the jobs.';
comment on column public.queue_depth.job_type is 'Job type.';
comment on column public.queue_depth.queued is 'Jobs queued, including retries scheduled later.';
comment on column public.queue_depth.ready is 'Queued jobs whose run_at has come.';
comment on column public.queue_depth.running is 'Jobs running now.';
comment on column public.queue_depth.oldest_ready_wait is 'How long the oldest ready job has waited.';

create view public.dead_letter_jobs with (security_invoker = true) as
select j.id, j.job_type, j.user_id, j.tier, j.attempt, j.max_attempts, j.error_kind, j.last_error,
       j.created_at, j.finished_at
from public.jobs j
where j.status = 'dead';

comment on view public.dead_letter_jobs is
  'The dead-letter queue: jobs that failed permanently or ran out of attempts. Requeue with '
  'select public.requeue_job(id).';
comment on column public.dead_letter_jobs.id is 'Job id.';
comment on column public.dead_letter_jobs.job_type is 'Job type.';
comment on column public.dead_letter_jobs.user_id is 'Owner.';
comment on column public.dead_letter_jobs.tier is 'Owner''s tier at enqueue time.';
comment on column public.dead_letter_jobs.attempt is 'Attempts made.';
comment on column public.dead_letter_jobs.max_attempts is 'Attempts allowed.';
comment on column public.dead_letter_jobs.error_kind is 'permanent, exhausted or lease_expired.';
comment on column public.dead_letter_jobs.last_error is 'Error of the last attempt.';
comment on column public.dead_letter_jobs.created_at is 'When the job was enqueued.';
comment on column public.dead_letter_jobs.finished_at is 'When it went to the dead-letter queue.';

create index jobs_status_dead_finished_at_idx on public.jobs (finished_at desc) where status = 'dead';

create view public.job_type_health with (security_invoker = true) as
select j.job_type,
       count(*) as finished,
       count(*) filter (where j.status = 'succeeded') as succeeded,
       count(*) filter (where j.status = 'dead') as dead,
       round(count(*) filter (where j.status = 'dead')::numeric / nullif(count(*), 0), 4) as failure_rate,
       round(avg(j.attempt), 2) as mean_attempts,
       percentile_cont(0.5) within group (order by extract(epoch from j.finished_at - j.started_at))
         filter (where j.status = 'succeeded') as p50_run_seconds,
       percentile_cont(0.95) within group (order by extract(epoch from j.finished_at - j.started_at))
         filter (where j.status = 'succeeded') as p95_run_seconds
from public.jobs j
where j.finished_at >= now() - interval '168 hours'
group by j.job_type;

comment on view public.job_type_health is
  'Per job type over the last 7 days: volume, failure rate, attempts and run-time percentiles. '
  'Sort by failure_rate or p95_run_seconds to find the most failing or slowest types.';
comment on column public.job_type_health.job_type is 'Job type.';
comment on column public.job_type_health.finished is 'Jobs that reached a final state.';
comment on column public.job_type_health.succeeded is 'Of which succeeded.';
comment on column public.job_type_health.dead is 'Of which went to the dead-letter queue.';
comment on column public.job_type_health.failure_rate is 'dead / finished.';
comment on column public.job_type_health.mean_attempts is 'Average attempts per finished job.';
comment on column public.job_type_health.p50_run_seconds is 'Median run time of the succeeding attempt.';
comment on column public.job_type_health.p95_run_seconds is '95th percentile run time of the succeeding attempt.';

revoke all on public.queue_depth, public.dead_letter_jobs, public.job_type_health
  from public, anon, authenticated;
grant select on public.queue_depth, public.dead_letter_jobs, public.job_type_health
  to authenticated, service_role;
