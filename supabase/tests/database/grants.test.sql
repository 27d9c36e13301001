-- Who may call which queue function and touch which relation: workers only with the
-- service role, users only the user-facing functions and read-only tables, anonymous
-- callers nothing. Supabase grants everything in public to the API roles by default
-- (the local stand-in does the same), so every privilege here exists only because a
-- migration left it.
begin;
select plan(35);

-- The project's own functions. pgTAP is installed into public for the tests, so
-- functions that belong to an extension are left out. The view is temporary and
-- vanishes with the transaction.
create temporary view own_functions as
select p.oid, p.oid::regprocedure::text as signature, p.proname::text as name, p.pronamespace,
       p.prosecdef, p.proconfig, p.proacl, p.proowner, p.prorettype
from pg_proc p
where p.pronamespace in ('public'::regnamespace, 'examq_internal'::regnamespace)
  and not exists (select from pg_depend d
                  where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e');

-- One function at a time ---------------------------------------------------------------

select ok(
  not has_function_privilege('anon',
    'public.enqueue_job(text, jsonb, timestamptz, double precision, text, bigint, integer, uuid)',
    'execute'),
  'anonymous callers cannot enqueue jobs'
);
select ok(
  has_function_privilege('authenticated',
    'public.enqueue_job(text, jsonb, timestamptz, double precision, text, bigint, integer, uuid)',
    'execute'),
  'signed-in users can enqueue jobs'
);

select ok(
  not has_function_privilege('authenticated',
    'public.claim_jobs(text, integer, text[], integer)', 'execute'),
  'signed-in users cannot claim jobs'
);
select ok(
  not has_function_privilege('anon',
    'public.claim_jobs(text, integer, text[], integer)', 'execute'),
  'anonymous callers cannot claim jobs'
);
select ok(
  has_function_privilege('service_role',
    'public.claim_jobs(text, integer, text[], integer)', 'execute'),
  'the service role can claim jobs'
);
select ok(
  not has_function_privilege('authenticated',
    'public.complete_job(bigint, uuid, jsonb)', 'execute'),
  'signed-in users cannot complete jobs'
);
select ok(
  not has_function_privilege('authenticated',
    'public.fail_job(bigint, uuid, text, text)', 'execute'),
  'signed-in users cannot fail jobs'
);
select ok(
  not has_function_privilege('authenticated',
    'public.heartbeat_job(bigint, uuid, double precision, text, integer)', 'execute'),
  'signed-in users cannot heartbeat jobs'
);
select ok(
  not has_function_privilege('authenticated', 'public.release_job(bigint, uuid)', 'execute'),
  'signed-in users cannot release jobs'
);
select ok(
  not has_function_privilege('authenticated', 'public.prune_jobs(interval, integer)', 'execute'),
  'signed-in users cannot prune jobs'
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

-- Functions, all at once -----------------------------------------------------------------

select is(
  array(select f.signature from own_functions f
        where f.pronamespace = 'public'::regnamespace
          and has_function_privilege('anon', f.oid, 'execute')
        order by 1),
  '{}'::text[],
  'anonymous callers can execute no function in public'
);
select is(
  array(select f.name from own_functions f
        where f.pronamespace = 'public'::regnamespace
          and f.name = any (array['enqueue_job', 'claim_jobs', 'heartbeat_job', 'complete_job',
                                  'fail_job', 'cancel_job', 'requeue_job', 'release_job', 'get_job',
                                  'queue_stats', 'prune_jobs', 'is_admin'])
          and has_function_privilege('authenticated', f.oid, 'execute')
        order by 1),
  array['cancel_job', 'enqueue_job', 'get_job', 'is_admin', 'queue_stats', 'requeue_job'],
  'of the queue''s functions, signed-in users can execute exactly the user-facing ones'
);
select is(
  array(select f.signature from own_functions f
        where f.prorettype <> 'trigger'::regtype
          and not has_function_privilege('service_role', f.oid, 'execute')
        order by 1),
  '{}'::text[],
  'the service role can execute every function and helper that is not a trigger'
);
select ok(
  not has_schema_privilege('anon', 'examq_internal', 'usage')
    and not has_schema_privilege('authenticated', 'examq_internal', 'usage'),
  'the helper schema is not reachable by anonymous or signed-in callers'
);
select ok(has_schema_privilege('service_role', 'examq_internal', 'usage'),
  'the service role, which runs the worker functions, can reach the helper schema');
select is(
  array(select f.signature from own_functions f
        where f.pronamespace = 'examq_internal'::regnamespace
          and (has_function_privilege('anon', f.oid, 'execute')
               or has_function_privilege('authenticated', f.oid, 'execute'))
        order by 1),
  '{}'::text[],
  'no helper is executable by anonymous or signed-in callers'
);

-- Tables ----------------------------------------------------------------------------------------

select table_privs_are('public', 'tiers', 'anon', '{}'::text[],
  'anonymous callers have no privilege on tiers');
select table_privs_are('public', 'accounts', 'anon', '{}'::text[],
  'anonymous callers have no privilege on accounts');
select table_privs_are('public', 'job_types', 'anon', '{}'::text[],
  'anonymous callers have no privilege on job_types');
select table_privs_are('public', 'jobs', 'anon', '{}'::text[],
  'anonymous callers have no privilege on jobs');
select table_privs_are('public', 'job_events', 'anon', '{}'::text[],
  'anonymous callers have no privilege on job_events');
select table_privs_are('public', 'tiers', 'authenticated', array['SELECT'],
  'signed-in users may only read tiers');
select table_privs_are('public', 'accounts', 'authenticated', array['SELECT'],
  'signed-in users may only read accounts');
select table_privs_are('public', 'job_types', 'authenticated', array['SELECT'],
  'signed-in users may only read job_types');
select table_privs_are('public', 'jobs', 'authenticated', array['SELECT'],
  'signed-in users may only read jobs');
select table_privs_are('public', 'job_events', 'authenticated', array['SELECT'],
  'signed-in users may only read job_events');
select ok(
  (select bool_and(has_table_privilege('service_role', t, 'select, insert, update, delete'))
   from unnest(array['public.tiers', 'public.accounts', 'public.job_types', 'public.jobs',
                     'public.job_events']) t),
  'the service role may read and write every queue table'
);

-- Views and sequences -----------------------------------------------------------------------------

select is(
  array(select v || ': anon'
        from unnest(array['public.queue_depth', 'public.dead_letter_jobs',
                          'public.job_type_health']) v
        where has_table_privilege('anon', v, 'select')),
  '{}'::text[],
  'anonymous callers cannot read the views'
);
select ok(
  (select bool_and(has_table_privilege('authenticated', v, 'select'))
   from unnest(array['public.queue_depth', 'public.dead_letter_jobs',
                     'public.job_type_health']) v),
  'signed-in users can read the views, which row-level security scopes to their own jobs'
);
select is(
  array(select v || ': ' || p
        from unnest(array['public.queue_depth', 'public.dead_letter_jobs',
                          'public.job_type_health']) v,
               unnest(array['insert', 'update', 'delete', 'truncate', 'references', 'trigger']) p
        where has_table_privilege('authenticated', v, p)
        order by 1),
  '{}'::text[],
  'signed-in users hold no privilege on the views beyond reading them'
);
select is(
  array(select s.oid::regclass::text || ': ' || r
        from pg_class s, unnest(array['anon', 'authenticated']) r
        where s.relnamespace = 'public'::regnamespace and s.relkind = 'S'
          and (has_sequence_privilege(r, s.oid, 'usage')
               or has_sequence_privilege(r, s.oid, 'update'))
        order by 1),
  '{}'::text[],
  'anonymous and signed-in callers cannot use or reset the job and event id sequences'
);

select * from finish();
rollback;
