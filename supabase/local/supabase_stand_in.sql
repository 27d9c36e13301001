-- A local stand-in for what a Supabase project provides around the migrations.
--
-- On Supabase these objects already exist; this file is applied only to local and
-- test databases (the embedded server, a plain PostgreSQL) before the migrations,
-- so that the migrations run unchanged in both places. It mirrors Supabase's
-- behaviour where the migrations depend on it: the three API roles, the `auth`
-- schema with `auth.users`, `auth.uid()`, `auth.role()` and `auth.jwt()` reading
-- the `request.jwt.claims` setting the way PostgREST sets it, the default
-- privileges Supabase grants on the `public` schema (so that the migrations' own
-- revokes are exercised), and the `supabase_realtime` publication.
--
-- Every statement is idempotent: roles are cluster-wide and may already exist.

do $$
begin
  if not exists (select from pg_catalog.pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select from pg_catalog.pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select from pg_catalog.pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
  if not exists (select from pg_catalog.pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit;
  end if;
end
$$;

grant anon, authenticated, service_role to authenticator;

create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;

-- The columns the migrations and the seed use; Supabase's table has more.
create table if not exists auth.users (
  instance_id uuid,
  id uuid primary key,
  aud varchar(255),
  role varchar(255),
  email varchar(255),
  raw_app_meta_data jsonb not null default '{}'::jsonb,
  raw_user_meta_data jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

-- Same definitions as Supabase's: the legacy single-claim settings first, then the
-- claims object that current PostgREST versions set per request.
create or replace function auth.uid() returns uuid
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;

create or replace function auth.role() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$;

create or replace function auth.jwt() returns jsonb
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;

grant execute on function auth.uid(), auth.role(), auth.jwt()
  to anon, authenticated, service_role;

grant usage on schema public to anon, authenticated, service_role;

-- Supabase grants everything in `public` to the API roles by default and relies on
-- RLS and explicit revokes; reproduce that so local runs are no more permissive.
alter default privileges in schema public
  grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public
  grant all on sequences to anon, authenticated, service_role;
alter default privileges in schema public
  grant execute on functions to anon, authenticated, service_role;

do $$
begin
  if not exists (select from pg_catalog.pg_publication where pubname = 'supabase_realtime') then
    create publication supabase_realtime;
  end if;
end
$$;

-- Marks the schema as the stand-in's, so tools never apply it over a real project.
comment on schema auth is 'Local stand-in for Supabase Auth, created by examq.';
