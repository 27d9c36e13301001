-- Who may call which queue function: workers only with the service role, users only
-- the user-facing functions, anonymous callers nothing.
begin;
select plan(12);

select ok(
  not has_function_privilege('anon', 'public.enqueue_job(text, jsonb, timestamptz, double precision, text, bigint, integer, uuid)', 'execute'),
  'anonymous callers cannot enqueue jobs'
);
select ok(
  has_function_privilege('authenticated', 'public.enqueue_job(text, jsonb, timestamptz, double precision, text, bigint, integer, uuid)', 'execute'),
  'signed-in users can enqueue jobs'
);

select ok(
  not has_function_privilege('authenticated', 'public.claim_jobs(text, integer, text[], integer)', 'execute'),
  'signed-in users cannot claim jobs'
);
select ok(
  not has_function_privilege('anon', 'public.claim_jobs(text, integer, text[], integer)', 'execute'),
  'anonymous callers cannot claim jobs'
);
select ok(
  has_function_privilege('service_role', 'public.claim_jobs(text, integer, text[], integer)', 'execute'),
  'the service role can claim jobs'
);
select ok(
  not has_function_privilege('authenticated', 'public.complete_job(bigint, uuid, jsonb)', 'execute'),
  'signed-in users cannot complete jobs'
);
select ok(
  not has_function_privilege('authenticated', 'public.fail_job(bigint, uuid, text, text)', 'execute'),
  'signed-in users cannot fail jobs'
);
select ok(
  not has_function_privilege('authenticated', 'public.heartbeat_job(bigint, uuid, double precision, text, integer)', 'execute'),
  'signed-in users cannot heartbeat jobs'
);

select ok(
  not has_table_privilege('authenticated', 'public.jobs', 'insert')
    and not has_table_privilege('authenticated', 'public.jobs', 'update')
    and not has_table_privilege('authenticated', 'public.jobs', 'delete'),
  'signed-in users cannot write the jobs table directly'
);
select ok(
  not has_table_privilege('anon', 'public.jobs', 'select'),
  'anonymous callers cannot read jobs'
);
select ok(
  not has_table_privilege('authenticated', 'public.accounts', 'update'),
  'users cannot change their own tier or admin flag'
);

select is(
  (select count(*)::integer from pg_class c join pg_namespace n on n.oid = c.relnamespace
   where n.nspname = 'public' and c.relkind = 'r' and not c.relrowsecurity
     and c.relname in ('tiers', 'accounts', 'job_types', 'jobs', 'job_events')),
  0,
  'row-level security is enabled on every queue table'
);

select * from finish();
rollback;
