-- The queue's tables: tiers, accounts, job types, jobs and their event history.
--
-- Every job state lives in `public.jobs`; every transition appends to
-- `public.job_events`. Clients never write these tables directly: the functions of
-- the next migration are the only writers, so the rules hold for any client
-- (Python, supabase-js, Studio). Row-level security lets a user read only their own
-- jobs and an admin read all of them; the service role (the worker) bypasses RLS.

create type public.job_status as enum ('queued', 'running', 'succeeded', 'dead', 'cancelled');

comment on type public.job_status is
  'Lifecycle of a job: queued -> running -> succeeded | queued (retry) | dead | cancelled.';

-- Tiers ---------------------------------------------------------------------------

create table public.tiers (
  name text primary key,
  head_start_seconds integer not null,
  max_running_per_user integer not null,
  max_queued_per_user integer not null,
  default_max_attempts integer not null,
  max_payload_bytes integer not null,
  allowed_job_types text[],
  created_at timestamptz not null default now(),
  constraint tiers_head_start_seconds_check check (head_start_seconds between 0 and 86400),
  constraint tiers_max_running_per_user_check check (max_running_per_user > 0),
  constraint tiers_max_queued_per_user_check check (max_queued_per_user > 0),
  constraint tiers_default_max_attempts_check check (default_max_attempts between 1 and 1000),
  constraint tiers_max_payload_bytes_check check (max_payload_bytes between 2 and 104857600)
);

comment on table public.tiers is
  'What each user tier may do. Edited by admins in Studio; users cannot change their tier.';
comment on column public.tiers.name is 'Tier name, e.g. free, pro, enterprise.';
comment on column public.tiers.head_start_seconds is
  'How much earlier than its enqueue time a job of this tier is ordered. A job can be '
  'overtaken only by jobs of tiers with a larger head start enqueued less than the '
  'difference in seconds after it; this bounds its extra wait (no starvation).';
comment on column public.tiers.max_running_per_user is
  'Most jobs one user of this tier may have running at once.';
comment on column public.tiers.max_queued_per_user is
  'Most jobs one user of this tier may have queued at once (the enqueue quota).';
comment on column public.tiers.default_max_attempts is
  'Attempts a job gets by default; users may ask for fewer, never more.';
comment on column public.tiers.max_payload_bytes is 'Largest payload accepted, as JSON text bytes.';
comment on column public.tiers.allowed_job_types is
  'Job types users of this tier may enqueue; null allows every registered type.';
comment on column public.tiers.created_at is 'When the tier was created.';

insert into public.tiers
  (name, head_start_seconds, max_running_per_user, max_queued_per_user,
   default_max_attempts, max_payload_bytes, allowed_job_types)
values
  ('free', 0, 2, 100, 3, 262144,
   array['exam.grade', 'exam.import', 'exam.report', 'exam.pipeline']),
  ('pro', 60, 5, 1000, 5, 1048576, null),
  ('enterprise', 180, 20, 10000, 8, 5242880, null),
  ('system', 180, 1000000, 100000000, 10, 10485760, null);

-- Accounts ------------------------------------------------------------------------

create table public.accounts (
  user_id uuid primary key references auth.users (id) on delete cascade,
  tier text not null default 'free' references public.tiers (name),
  is_admin boolean not null default false,
  created_at timestamptz not null default now()
);

comment on table public.accounts is
  'A user''s tier and admin flag. Users read their own row and cannot write it; '
  'a user without a row is in the free tier.';
comment on column public.accounts.user_id is 'The Supabase Auth user.';
comment on column public.accounts.tier is 'The user''s tier; decides limits and claim preference.';
comment on column public.accounts.is_admin is 'Admins read every job and may requeue jobs.';
comment on column public.accounts.created_at is 'When the account row was created.';

create index accounts_tier_idx on public.accounts (tier);

-- Job types -----------------------------------------------------------------------

create table public.job_types (
  name text primary key,
  description text not null,
  lease_seconds integer not null default 300,
  retry_base_seconds double precision not null default 10,
  retry_max_seconds double precision not null default 3600,
  created_at timestamptz not null default now(),
  constraint job_types_name_check
    check (name ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$' and length(name) <= 100),
  constraint job_types_lease_seconds_check check (lease_seconds between 5 and 86400),
  constraint job_types_retry_base_seconds_check check (retry_base_seconds between 0.1 and 86400),
  constraint job_types_retry_max_seconds_check
    check (retry_max_seconds >= retry_base_seconds and retry_max_seconds <= 604800)
);

comment on table public.job_types is
  'The job types the workers know. Enqueueing any other type is refused.';
comment on column public.job_types.name is 'Dotted job type name, e.g. exam.grade.';
comment on column public.job_types.description is 'What a job of this type does.';
comment on column public.job_types.lease_seconds is
  'How long a claim holds a job before another worker may take it over, unless extended.';
comment on column public.job_types.retry_base_seconds is 'Delay before the first retry.';
comment on column public.job_types.retry_max_seconds is 'Longest delay between two attempts.';
comment on column public.job_types.created_at is 'When the type was registered.';

insert into public.job_types (name, description, lease_seconds) values
  ('exam.grade', 'Score student responses against an answer key and analyse the items.', 300),
  ('system.noop', 'Do nothing (for health checks and benchmarks).', 60),
  ('system.sleep', 'Sleep in steps, reporting progress (for demos and tests).', 120);

-- Jobs ----------------------------------------------------------------------------

create table public.jobs (
  id bigint generated always as identity primary key,
  job_type text not null references public.job_types (name),
  user_id uuid references auth.users (id) on delete cascade,
  tier text not null references public.tiers (name),
  payload jsonb not null default '{}'::jsonb,
  status public.job_status not null default 'queued',
  run_at timestamptz not null default now(),
  sort_at timestamptz not null,
  attempt integer not null default 0,
  max_attempts integer not null,
  lease_token uuid,
  lease_expires_at timestamptz,
  worker_id text,
  cancel_requested_at timestamptz,
  progress numeric(5, 2),
  progress_message text,
  eta_at timestamptz,
  result jsonb,
  last_error text,
  error_kind text,
  idempotency_key text,
  parent_id bigint references public.jobs (id) on delete set null,
  created_at timestamptz not null default now(),
  first_started_at timestamptz,
  started_at timestamptz,
  finished_at timestamptz,
  updated_at timestamptz not null default now(),
  constraint jobs_max_attempts_check check (max_attempts between 1 and 1000),
  constraint jobs_attempt_within_max_check check (attempt between 0 and max_attempts),
  constraint jobs_running_has_lease_check
    check (status <> 'running' or (lease_token is not null and lease_expires_at is not null)),
  constraint jobs_queued_has_no_lease_check
    check (status <> 'queued' or (lease_token is null and lease_expires_at is null)),
  constraint jobs_finished_at_matches_status_check
    check ((status in ('succeeded', 'dead', 'cancelled')) = (finished_at is not null)),
  constraint jobs_progress_check check (progress between 0 and 100),
  constraint jobs_error_kind_check
    check (error_kind in ('retryable', 'permanent', 'exhausted', 'lease_expired', 'cancelled')),
  constraint jobs_idempotency_key_check check (length(idempotency_key) between 1 and 200)
);

comment on table public.jobs is
  'One row per job. Written only through the queue functions (enqueue_job, claim_jobs, '
  'complete_job, fail_job, ...); users read their own rows, admins read all.';
comment on column public.jobs.id is 'Job id.';
comment on column public.jobs.job_type is 'What the job does; selects the handler.';
comment on column public.jobs.user_id is 'Owner; null for system jobs.';
comment on column public.jobs.tier is 'The owner''s tier when the job was enqueued.';
comment on column public.jobs.payload is 'Input of the job (a JSON object).';
comment on column public.jobs.status is 'Current lifecycle state.';
comment on column public.jobs.run_at is 'Earliest time the job may be claimed (later for retries).';
comment on column public.jobs.sort_at is
  'Claim order key: run_at minus the tier''s head start. Lower is claimed first.';
comment on column public.jobs.attempt is 'Number of times the job has been claimed.';
comment on column public.jobs.max_attempts is 'Claims allowed before the job goes to the dead-letter queue.';
comment on column public.jobs.lease_token is
  'Token of the current (or last) claim; every worker call must present it.';
comment on column public.jobs.lease_expires_at is
  'When a running job''s lease ends; after it another claim may take the job over.';
comment on column public.jobs.worker_id is 'Worker that holds the lease.';
comment on column public.jobs.cancel_requested_at is
  'Set when a running job is asked to stop; the worker sees it at its next heartbeat.';
comment on column public.jobs.progress is 'Progress of the current attempt, 0 to 100.';
comment on column public.jobs.progress_message is 'What the handler is doing now.';
comment on column public.jobs.eta_at is 'Estimated finish of the current attempt, from the observed rate.';
comment on column public.jobs.result is 'Output of a succeeded job.';
comment on column public.jobs.last_error is 'Error of the last failed attempt.';
comment on column public.jobs.error_kind is
  'How the last attempt failed: retryable, permanent, exhausted, lease_expired or cancelled.';
comment on column public.jobs.idempotency_key is
  'Caller-chosen key; enqueueing again with the same key (per user) returns this job.';
comment on column public.jobs.parent_id is 'The job that created this one, if any.';
comment on column public.jobs.created_at is 'When the job was enqueued.';
comment on column public.jobs.first_started_at is 'When the first attempt started.';
comment on column public.jobs.started_at is 'When the current or last attempt started.';
comment on column public.jobs.finished_at is 'When the job reached a final state.';
comment on column public.jobs.updated_at is 'When the row last changed.';

-- The claim walks this index in order and stops after its batch: it never visits
-- running or finished jobs, however many there are.
create index jobs_sort_at_id_idx on public.jobs (sort_at, id) where status = 'queued';
-- Expired leases are found without scanning queued or finished jobs.
create index jobs_lease_expires_at_idx on public.jobs (lease_expires_at) where status = 'running';
-- Per-user concurrency caps count running jobs by user.
create index jobs_user_id_running_idx on public.jobs (user_id) where status = 'running';
-- Per-user quotas count queued jobs by user.
create index jobs_user_id_queued_idx on public.jobs (user_id) where status = 'queued';
-- A user's own job list, newest first, and the RLS filter.
create index jobs_user_id_created_at_idx on public.jobs (user_id, created_at desc);
create index jobs_parent_id_idx on public.jobs (parent_id) where parent_id is not null;
create index jobs_finished_at_idx on public.jobs (finished_at) where finished_at is not null;
create unique index jobs_user_id_idempotency_key_idx
  on public.jobs (user_id, idempotency_key) nulls not distinct
  where idempotency_key is not null;

-- Job events ----------------------------------------------------------------------

create table public.job_events (
  id bigint generated always as identity primary key,
  job_id bigint not null references public.jobs (id) on delete cascade,
  user_id uuid,
  at timestamptz not null default now(),
  actor text not null,
  from_status public.job_status,
  to_status public.job_status not null,
  attempt integer not null,
  error text,
  details jsonb
);

comment on table public.job_events is
  'Append-only history: one row per state change of a job (and per cancel request).';
comment on column public.job_events.id is 'Event id, increasing in commit order per job.';
comment on column public.job_events.job_id is 'The job.';
comment on column public.job_events.user_id is 'Owner of the job (copied for row-level security).';
comment on column public.job_events.at is 'When the change happened (database clock).';
comment on column public.job_events.actor is
  'Who caused it: worker:<id>, user:<uuid>, admin:<uuid>, service or system.';
comment on column public.job_events.from_status is 'State before; null when the job was created.';
comment on column public.job_events.to_status is 'State after.';
comment on column public.job_events.attempt is 'The job''s attempt number at the time.';
comment on column public.job_events.error is 'Error text, for failures.';
comment on column public.job_events.details is 'Anything else worth keeping (run_at of a retry, reason).';

create index job_events_job_id_id_idx on public.job_events (job_id, id);
create index job_events_user_id_idx on public.job_events (user_id);
create index job_events_at_idx on public.job_events (at);

-- Row-level security and grants ----------------------------------------------------

-- Used inside policies, including the policy of public.accounts itself, so it reads
-- accounts with definer rights to avoid recursing into that policy.
create function public.is_admin() returns boolean
language sql stable security definer
set search_path = ''
as $$
  select coalesce(
    (select a.is_admin from public.accounts a where a.user_id = (select auth.uid())),
    false
  )
$$;

comment on function public.is_admin() is
  'True when the signed-in user is an admin. Definer rights: it is used inside the '
  'accounts policy and must read accounts without recursing into it.';

revoke execute on function public.is_admin() from public, anon;
grant execute on function public.is_admin() to authenticated, service_role;

alter table public.tiers enable row level security;
alter table public.accounts enable row level security;
alter table public.job_types enable row level security;
alter table public.jobs enable row level security;
alter table public.job_events enable row level security;

revoke all on public.tiers, public.accounts, public.job_types, public.jobs, public.job_events
  from public, anon, authenticated;
grant select on public.tiers, public.accounts, public.job_types, public.jobs, public.job_events
  to authenticated;
grant all on public.tiers, public.accounts, public.job_types, public.jobs, public.job_events
  to service_role;

-- Supabase's default privileges also grant the identity sequences to the API roles;
-- only the writers (definer functions and the service role) need them.
revoke all on sequence public.jobs_id_seq, public.job_events_id_seq from public, anon, authenticated;
grant usage, select on sequence public.jobs_id_seq, public.job_events_id_seq to service_role;

-- auth.uid() and is_admin() are wrapped in selects so that Postgres evaluates them
-- once per statement instead of once per row (Supabase's RLS performance advice).
create policy "signed-in users read tiers" on public.tiers
  for select to authenticated using (true);

create policy "signed-in users read job types" on public.job_types
  for select to authenticated using (true);

create policy "users read their own account" on public.accounts
  for select to authenticated using (user_id = (select auth.uid()));

create policy "admins read all accounts" on public.accounts
  for select to authenticated using ((select public.is_admin()));

create policy "users read their own jobs" on public.jobs
  for select to authenticated using (user_id = (select auth.uid()));

create policy "admins read all jobs" on public.jobs
  for select to authenticated using ((select public.is_admin()));

create policy "users read their own job events" on public.job_events
  for select to authenticated using (user_id = (select auth.uid()));

create policy "admins read all job events" on public.job_events
  for select to authenticated using ((select public.is_admin()));
