-- Row-level security on accounts, tiers and job types, and is_admin(), for every kind
-- of caller: anonymous, a user, another user, a request without a user, an admin and
-- the service role. Users read their own account and every tier and job type; nobody
-- changes them through the API but the service role.
begin;
select plan(29);

\set free '00000000-0000-4000-8000-000000000001'
\set as_free '{"sub": "00000000-0000-4000-8000-000000000001", "role": "authenticated"}'
\set as_pro '{"sub": "00000000-0000-4000-8000-000000000002", "role": "authenticated"}'
\set as_admin '{"sub": "00000000-0000-4000-8000-00000000000a", "role": "authenticated"}'
\set as_signed_out '{"role": "authenticated"}'
\set as_anon '{"role": "anon"}'
\set as_service '{"role": "service_role"}'

-- A user -------------------------------------------------------------------------------------

set local role authenticated;
select set_config('request.jwt.claims', :'as_free', true);

select is(
  (select array_agg(row(a.user_id, a.tier, a.is_admin)::text) from public.accounts a),
  array[row(:'free'::uuid, 'free', false)::text],
  'a user reads their own account and no other'
);
select is(public.is_admin(), false, 'is_admin() is false for a user who is not an admin');
select is((select count(*)::integer from public.tiers), 4, 'a user reads every tier');
select cmp_ok((select count(*)::integer from public.job_types), '>=', 3, 'a user reads the job types');
select throws_ok(
  $$ update public.accounts set tier = 'enterprise' $$,
  '42501', 'permission denied for table accounts',
  'a user cannot move themselves to another tier'
);
select throws_ok(
  $$ update public.accounts set is_admin = true $$,
  '42501', 'permission denied for table accounts',
  'a user cannot make themselves an admin'
);
select throws_ok(
  $$ insert into public.accounts (user_id, tier)
     values ('00000000-0000-4000-8000-0000000000ff', 'enterprise') $$,
  '42501', 'permission denied for table accounts',
  'a user cannot create accounts'
);
select throws_ok(
  $$ update public.tiers set max_running_per_user = 1000 $$,
  '42501', 'permission denied for table tiers',
  'a user cannot change tier limits'
);
select throws_ok(
  $$ insert into public.job_types (name, description) values ('evil.job', 'x') $$,
  '42501', 'permission denied for table job_types',
  'a user cannot register job types'
);

-- Another user --------------------------------------------------------------------------------

select set_config('request.jwt.claims', :'as_pro', true);

select is(
  (select count(*)::integer from public.accounts a where a.user_id = :'free'), 0,
  'another user cannot read the first user''s account'
);

-- A request without a user -------------------------------------------------------------------

select set_config('request.jwt.claims', :'as_signed_out', true);

select is((select count(*)::integer from public.accounts), 0,
  'the authenticated role without a user id reads no account');
select is(public.is_admin(), false, 'is_admin() is false without a user id');
select is((select count(*)::integer from public.tiers), 4,
  'the authenticated role without a user id still reads the tiers');

-- An admin ---------------------------------------------------------------------------------------

select set_config('request.jwt.claims', :'as_admin', true);

select is((select count(*)::integer from public.accounts), 4, 'an admin reads every account');
select is(public.is_admin(), true, 'is_admin() is true for an admin');
select throws_ok(
  $$ update public.accounts set tier = 'pro'
     where user_id = '00000000-0000-4000-8000-000000000001' $$,
  '42501', 'permission denied for table accounts',
  'an admin cannot change accounts through the API either'
);

-- The service role --------------------------------------------------------------------------------

reset role;
set local role service_role;
select set_config('request.jwt.claims', :'as_service', true);

select is((select count(*)::integer from public.accounts), 4,
  'the service role reads every account');
select is(public.is_admin(), false, 'is_admin() is false for the service role, which has no user');
select lives_ok(
  $$ update public.tiers set max_queued_per_user = max_queued_per_user where name = 'free' $$,
  'the service role may change tiers'
);
select lives_ok(
  $$ update public.accounts set tier = 'pro'
     where user_id = '00000000-0000-4000-8000-000000000001' $$,
  'the service role may change a user''s tier'
);

-- Anonymous callers -------------------------------------------------------------------------------

reset role;
set local role anon;
select set_config('request.jwt.claims', :'as_anon', true);

select throws_ok(
  $$ select count(*) from public.accounts $$, '42501', 'permission denied for table accounts',
  'anonymous callers cannot read accounts');
select throws_ok(
  $$ select count(*) from public.tiers $$, '42501', 'permission denied for table tiers',
  'anonymous callers cannot read tiers');
select throws_ok(
  $$ select count(*) from public.job_types $$, '42501', 'permission denied for table job_types',
  'anonymous callers cannot read job types');
select throws_ok($$ select public.is_admin() $$, '42501', 'permission denied for function is_admin',
  'anonymous callers cannot call is_admin()');

-- The policies themselves -------------------------------------------------------------------------

reset role;

select policies_are('public', 'accounts',
  array['users read their own account', 'admins read all accounts'],
  'accounts has exactly the own-row and admin read policies');
select policies_are('public', 'tiers', array['signed-in users read tiers'],
  'tiers has exactly one read policy for signed-in users');
select policies_are('public', 'job_types', array['signed-in users read job types'],
  'job_types has exactly one read policy for signed-in users');
select policies_are('public', 'jobs', array['users read their own jobs', 'admins read all jobs'],
  'jobs has exactly the own-row and admin read policies');
select policies_are(
  'public', 'job_events', array['users read their own job events', 'admins read all job events'],
  'job_events has exactly the own-row and admin read policies');

select * from finish();
rollback;
