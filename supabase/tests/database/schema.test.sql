-- The queue's schema: its tables, columns, indexes and views exist; every object carries
-- a comment; security definer functions are locked down; every function pins its
-- search_path; row-level security is on for every table; and the table constraints
-- refuse the states the queue functions must never write.
begin;
select plan(60);

-- The project's own functions and relations. pgTAP is installed into public for the
-- tests, so objects that belong to an extension are left out. Both views are temporary
-- and vanish with the transaction.
create temporary view own_functions as
select p.oid, p.oid::regprocedure::text as signature, p.proname::text as name, p.pronamespace,
       p.prosecdef, p.proconfig, p.proacl, p.proowner, p.prorettype
from pg_proc p
where p.pronamespace in ('public'::regnamespace, 'examq_internal'::regnamespace)
  and not exists (select from pg_depend d
                  where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e');

create temporary view own_relations as
select c.oid, c.relname::text as name, c.relkind, c.relrowsecurity, c.reloptions
from pg_class c
where c.relnamespace = 'public'::regnamespace
  and not exists (select from pg_depend d
                  where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'e');

-- Tables, columns, views, types ------------------------------------------------------------------

select has_table('public', 'tiers', 'the tiers table exists');
select has_table('public', 'accounts', 'the accounts table exists');
select has_table('public', 'job_types', 'the job_types table exists');
select has_table('public', 'jobs', 'the jobs table exists');
select has_table('public', 'job_events', 'the job_events table exists');

select is(
  array(select unnest(array['name', 'head_start_seconds', 'max_running_per_user',
                            'max_queued_per_user', 'default_max_attempts', 'max_payload_bytes',
                            'allowed_job_types', 'created_at'])
        except
        select c.column_name from information_schema.columns c
        where c.table_schema = 'public' and c.table_name = 'tiers'),
  '{}'::text[],
  'tiers has every column the queue functions read'
);
select is(
  array(select unnest(array['user_id', 'tier', 'is_admin', 'created_at'])
        except
        select c.column_name from information_schema.columns c
        where c.table_schema = 'public' and c.table_name = 'accounts'),
  '{}'::text[],
  'accounts has every column the queue functions read'
);
select is(
  array(select unnest(array['name', 'description', 'lease_seconds', 'retry_base_seconds',
                            'retry_max_seconds', 'created_at'])
        except
        select c.column_name from information_schema.columns c
        where c.table_schema = 'public' and c.table_name = 'job_types'),
  '{}'::text[],
  'job_types has every column the queue functions read'
);
select is(
  array(select unnest(array['id', 'job_type', 'user_id', 'tier', 'payload', 'status', 'run_at',
                            'sort_at', 'attempt', 'max_attempts', 'lease_token',
                            'lease_expires_at', 'worker_id', 'cancel_requested_at', 'progress',
                            'progress_message', 'eta_at', 'result', 'last_error', 'error_kind',
                            'idempotency_key', 'parent_id', 'created_at', 'first_started_at',
                            'started_at', 'finished_at', 'updated_at'])
        except
        select c.column_name from information_schema.columns c
        where c.table_schema = 'public' and c.table_name = 'jobs'),
  '{}'::text[],
  'jobs has every column the queue functions read and write'
);
select is(
  array(select unnest(array['id', 'job_id', 'user_id', 'at', 'actor', 'from_status', 'to_status',
                            'attempt', 'error', 'details'])
        except
        select c.column_name from information_schema.columns c
        where c.table_schema = 'public' and c.table_name = 'job_events'),
  '{}'::text[],
  'job_events has every column the queue functions write'
);
select is(
  array(select c.table_name || '.' || c.column_name from information_schema.columns c
        where c.table_schema = 'public'
          and c.data_type in ('timestamp without time zone', 'date', 'time without time zone')
        order by 1),
  '{}'::text[],
  'every time column in public is a timestamptz'
);
select ok(
  array['queued', 'running', 'succeeded', 'dead', 'cancelled']
    <@ enum_range(null::public.job_status)::text[],
  'job_status has the five lifecycle states'
);
select has_view('public', 'queue_depth', 'the queue_depth view exists');
select has_view('public', 'dead_letter_jobs', 'the dead_letter_jobs view exists');
select has_view('public', 'job_type_health', 'the job_type_health view exists');
select has_schema('examq_internal', 'the examq_internal schema for helpers exists');

-- Indexes ----------------------------------------------------------------------------------------

select has_index('public', 'jobs', 'jobs_sort_at_id_idx', array['sort_at', 'id'],
  'claims walk an index on (sort_at, id)');
select matches(
  (select pg_get_expr(i.indpred, i.indrelid)
   from pg_index i where i.indexrelid = 'public.jobs_sort_at_id_idx'::regclass),
  $re$^\(status = 'queued'::(public\.)?job_status\)$$re$,
  'the claim index holds queued jobs only'
);
select has_index('public', 'jobs', 'jobs_lease_expires_at_idx', array['lease_expires_at'],
  'expired leases are found through an index on lease_expires_at');
select matches(
  (select pg_get_expr(i.indpred, i.indrelid)
   from pg_index i where i.indexrelid = 'public.jobs_lease_expires_at_idx'::regclass),
  $re$^\(status = 'running'::(public\.)?job_status\)$$re$,
  'the lease expiry index holds running jobs only'
);
select has_index('public', 'jobs', 'jobs_user_id_running_idx', array['user_id'],
  'running jobs are counted per user through an index');
select has_index('public', 'jobs', 'jobs_user_id_queued_idx', array['user_id'],
  'queued jobs are counted per user through an index');
select has_index('public', 'jobs', 'jobs_user_id_created_at_idx', array['user_id', 'created_at'],
  'a user''s job list is read through an index on (user_id, created_at)');
select has_index('public', 'jobs', 'jobs_parent_id_idx', array['parent_id'],
  'child jobs are found by parent');
select has_index('public', 'jobs', 'jobs_finished_at_idx', array['finished_at'],
  'finished jobs are found by finish time for statistics and retention');
select has_index('public', 'jobs', 'jobs_status_dead_finished_at_idx', array['finished_at'],
  'the dead-letter queue is read through its own index');
select has_index(
  'public', 'jobs', 'jobs_user_id_idempotency_key_idx', array['user_id', 'idempotency_key'],
  'idempotency keys are indexed per user');
select is(
  (select row(i.indisunique, i.indnullsnotdistinct)::text from pg_index i
   where i.indexrelid = 'public.jobs_user_id_idempotency_key_idx'::regclass),
  row(true, true)::text,
  'an idempotency key is unique per user, system jobs (no user) included'
);
select has_index('public', 'accounts', 'accounts_tier_idx', array['tier'],
  'accounts are indexed by tier');
select has_index('public', 'job_events', 'job_events_job_id_id_idx', array['job_id', 'id'],
  'a job''s history is read in order through an index');
-- Events are written twice per job and read by job: no other index to keep up.
select is(
  (select count(*)::integer from pg_index i where i.indrelid = 'public.job_events'::regclass),
  2,
  'job_events has only its primary key and the (job_id, id) index'
);
select ok(
  exists (select from pg_trigger t
          where t.tgrelid = 'public.jobs'::regclass and t.tgname = 'jobs_delete_events'
            and t.tgtype & 1 = 0 and t.tgoldtable is not null),
  'deleting jobs deletes their events, once per statement'
);

-- Comments ------------------------------------------------------------------------------

select is(
  array(select r.name from own_relations r
        where r.relkind in ('r', 'v') and obj_description(r.oid, 'pg_class') is null order by 1),
  '{}'::text[],
  'every table and view in public carries a comment'
);
select is(
  array(select r.name || '.' || a.attname
        from own_relations r join pg_attribute a on a.attrelid = r.oid
        where r.relkind in ('r', 'v') and a.attnum > 0 and not a.attisdropped
          and col_description(r.oid, a.attnum) is null
        order by 1),
  '{}'::text[],
  'every column of every table and view in public carries a comment'
);
select is(
  array(select f.signature
        from own_functions f where obj_description(f.oid, 'pg_proc') is null order by 1),
  '{}'::text[],
  'every function in public and examq_internal carries a comment'
);
select isnt(obj_description('public.job_status'::regtype, 'pg_type'), null,
  'the job_status type carries a comment');
select isnt(obj_description('examq_internal'::regnamespace, 'pg_namespace'), null,
  'the examq_internal schema carries a comment');

-- Functions -----------------------------------------------------------------------------

select is(
  array(select f.name from own_functions f
        where f.prosecdef
          and f.name = any (array['enqueue_job', 'claim_jobs', 'heartbeat_job', 'complete_job',
                                  'fail_job', 'cancel_job', 'requeue_job', 'release_job', 'get_job',
                                  'queue_stats', 'prune_jobs', 'is_admin', 'caller_kind',
                                  'retry_delay_seconds', 'explain_lease_miss',
                                  'reclaim_expired_leases'])
        order by 1),
  array['cancel_job', 'enqueue_job', 'is_admin', 'requeue_job'],
  'of the queue''s functions, only those that write for users or read accounts inside '
  'policies run with definer rights'
);
select is(
  array(select f.signature from own_functions f
        where not coalesce('search_path=""' = any (f.proconfig), false) order by 1),
  '{}'::text[],
  'every function, definer or not, sets search_path to the empty string'
);
select is(
  array(select f.signature from own_functions f
        where exists (select from aclexplode(coalesce(f.proacl, acldefault('f', f.proowner))) a
                      where a.grantee = 0 and a.privilege_type = 'EXECUTE')
        order by 1),
  '{}'::text[],
  'no function is executable by PUBLIC'
);
select is(
  array(select f.signature from own_functions f
        where f.prosecdef and has_function_privilege('anon', f.oid, 'execute') order by 1),
  '{}'::text[],
  'no security definer function is executable by anonymous callers'
);
select is(
  (select p.provolatile::text from pg_proc p where p.oid = 'public.get_job(bigint)'::regprocedure),
  's',
  'get_job is stable: it only reads'
);

-- Row-level security and views -----------------------------------------------------------

select is(
  array(select r.name
        from own_relations r where r.relkind = 'r' and not r.relrowsecurity order by 1),
  '{}'::text[],
  'row-level security is enabled on every table in public'
);
select is(
  array(select r.name from own_relations r
        where r.relkind = 'v' and not coalesce('security_invoker=true' = any (r.reloptions), false)
        order by 1),
  '{}'::text[],
  'every view in public runs with the caller''s rights, so row-level security applies through it'
);

-- Constraints the functions rely on ---------------------------------------------------------------

select id as job from public.enqueue_job('system.noop') \gset

select throws_ok(
  format($$ update public.jobs set lease_token = gen_random_uuid() where id = %s $$, :job),
  '23514', null,
  'a queued job cannot hold a lease'
);
select throws_ok(
  format($$ update public.jobs set status = 'running' where id = %s $$, :job),
  '23514', null,
  'a running job must hold a lease'
);
select throws_ok(
  format($$ update public.jobs set status = 'succeeded' where id = %s $$, :job),
  '23514', null,
  'a finished job must have a finish time'
);
select throws_ok(
  format($$ update public.jobs set progress = 101 where id = %s $$, :job),
  '23514', null,
  'progress cannot exceed 100'
);
select throws_ok(
  format($$ update public.jobs set attempt = max_attempts + 1 where id = %s $$, :job),
  '23514', null,
  'a job cannot be on more attempts than it is allowed'
);
select throws_ok(
  $$ insert into public.tiers (name, head_start_seconds, max_running_per_user, max_queued_per_user,
                               default_max_attempts, max_payload_bytes)
     values ('greedy', 90000, 1, 1, 1, 2) $$,
  '23514', null,
  'a tier''s head start is at most a day, which bounds how long a lower tier can be overtaken'
);

select public.enqueue_job('exam.grade', p_user_id => '00000000-0000-4000-8000-000000000003');
delete from auth.users where id = '00000000-0000-4000-8000-000000000003';

select is(
  (select count(*)::integer
   from public.jobs j where j.user_id = '00000000-0000-4000-8000-000000000003')
  + (select count(*)::integer
     from public.accounts a where a.user_id = '00000000-0000-4000-8000-000000000003'),
  0,
  'deleting a user deletes their account and their jobs'
);

select is(
  (select count(*)::integer from public.job_events e
   where e.user_id = '00000000-0000-4000-8000-000000000003'),
  0,
  'deleting a user deletes the events of their jobs'
);

-- The references of a job, checked by triggers rather than foreign keys.
select throws_ok(
  $$ insert into public.jobs (job_type, tier, run_at, sort_at, max_attempts) values ('no.such.type', 'system', now(), now(), 1) $$,
  '23503', 'a job names what is not there: job type ''no.such.type'' does not exist',
  'a job must name a job type that exists'
);
select throws_ok(
  $$ insert into public.jobs (job_type, tier, run_at, sort_at, max_attempts)
     values ('exam.grade', 'system', now(), now(), 1), ('exam.grade', 'platinum', now(), now(), 1) $$,
  '23503', 'a job names what is not there: tier ''platinum'' does not exist',
  'every job of a many-row insert must name a tier that exists'
);
select throws_ok(
  $$ insert into public.jobs (job_type, user_id, tier, run_at, sort_at, max_attempts)
     values ('exam.grade', '00000000-0000-4000-8000-0000000000ee', 'free', now(), now(), 1) $$,
  '23503', 'a job names what is not there: no user with id 00000000-0000-4000-8000-0000000000ee',
  'a job must name a user that exists'
);
select throws_ok(
  format($$ update public.jobs set tier = 'platinum' where id = %s $$, :job),
  '23503', null,
  'a job cannot be moved to a tier that does not exist'
);
select throws_ok(
  $$ delete from public.job_types where name = 'system.noop' $$,
  '23503', null,
  'a job type that jobs name cannot be deleted'
);
select throws_ok(
  $$ update public.tiers set name = 'sys' where name = 'system' $$,
  '23503', null,
  'a tier that jobs name cannot be renamed'
);
select lives_ok(
  $$ update public.tiers set head_start_seconds = head_start_seconds where name = 'system' $$,
  'a tier that jobs name can still be edited'
);

-- Last: it empties the table.
truncate public.jobs cascade;
select is((select count(*)::integer from public.job_events), 0,
  'truncating the jobs truncates their events');

select * from finish();
rollback;
