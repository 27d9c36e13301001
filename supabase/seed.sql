-- Local and test data: one teacher per tier and one admin, with fixed ids so that
-- tests, the demo and the local dashboard sign-in can refer to them.
-- Applied by `supabase db reset` and by `examq db reset`; never on production.

insert into auth.users (id, aud, role, email, raw_user_meta_data)
values
  ('00000000-0000-4000-8000-000000000001', 'authenticated', 'authenticated',
   'free.teacher@example.com', '{"name": "Fran Free"}'),
  ('00000000-0000-4000-8000-000000000002', 'authenticated', 'authenticated',
   'pro.teacher@example.com', '{"name": "Priya Pro"}'),
  ('00000000-0000-4000-8000-000000000003', 'authenticated', 'authenticated',
   'enterprise.teacher@example.com', '{"name": "Ezra Enterprise"}'),
  ('00000000-0000-4000-8000-00000000000a', 'authenticated', 'authenticated',
   'admin@example.com', '{"name": "Ada Admin"}')
on conflict (id) do nothing;

insert into public.accounts (user_id, tier, is_admin)
values
  ('00000000-0000-4000-8000-000000000001', 'free', false),
  ('00000000-0000-4000-8000-000000000002', 'pro', false),
  ('00000000-0000-4000-8000-000000000003', 'enterprise', false),
  ('00000000-0000-4000-8000-00000000000a', 'enterprise', true)
on conflict (user_id) do nothing;
