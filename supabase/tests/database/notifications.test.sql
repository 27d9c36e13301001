-- Notifications: who may read and write preferences and the outbox, who may call the
-- dispatcher's functions, and the outbox trigger on job_events.
begin;
select plan(25);

-- Tables, grants and comments ---------------------------------------------------------

select is(
  (select count(*)::integer from pg_class c join pg_namespace n on n.oid = c.relnamespace
   where n.nspname = 'public' and c.relkind = 'r' and c.relrowsecurity
     and c.relname in ('notification_preferences', 'notification_outbox', 'admin_alerts', 'cron_runs')),
  4,
  'row-level security is enabled on every notification table'
);

select is(
  (select count(*)::integer
   from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
   where n.nspname = 'public' and a.attnum > 0 and not a.attisdropped
     and c.relname in ('notification_preferences', 'notification_outbox', 'admin_alerts', 'cron_runs')
     and col_description(c.oid, a.attnum) is null),
  0,
  'every column of the notification tables has a comment'
);

select is(
  (select count(*)::integer from pg_proc p join pg_namespace n on n.oid = p.pronamespace
   where p.proname in ('claim_notifications', 'start_notification_send', 'finish_notification',
                       'requeue_notification', 'set_notification_preferences', 'record_cron_tick',
                       'check_admin_alerts', 'write_job_notifications', 'reclaim_expired_notifications',
                       'explain_notification_miss', 'raise_admin_alert')
     and obj_description(p.oid, 'pg_proc') is null),
  0,
  'every notification function has a comment'
);

select ok(
  not has_table_privilege('anon', 'public.notification_preferences', 'select')
    and not has_table_privilege('anon', 'public.notification_preferences', 'insert')
    and not has_table_privilege('anon', 'public.notification_outbox', 'select'),
  'anonymous callers can neither read nor write preferences or notifications'
);

select ok(
  not has_table_privilege('authenticated', 'public.notification_outbox', 'insert')
    and not has_table_privilege('authenticated', 'public.notification_outbox', 'update')
    and not has_table_privilege('authenticated', 'public.notification_outbox', 'delete')
    and not has_table_privilege('authenticated', 'public.admin_alerts', 'insert')
    and not has_table_privilege('authenticated', 'public.cron_runs', 'update'),
  'signed-in users cannot write the outbox, the alerts or the cron runs'
);

select ok(
  not has_function_privilege('authenticated', 'public.claim_notifications(text, integer, integer)', 'execute')
    and not has_function_privilege('anon', 'public.claim_notifications(text, integer, integer)', 'execute')
    and has_function_privilege('service_role', 'public.claim_notifications(text, integer, integer)', 'execute'),
  'only the service role can claim notifications (and read recipients'' addresses)'
);

select ok(
  not has_function_privilege('authenticated',
    'public.finish_notification(bigint, uuid, text, text, integer, text, double precision, double precision)', 'execute')
    and not has_function_privilege('authenticated', 'public.start_notification_send(bigint, uuid, integer)', 'execute')
    and not has_function_privilege('authenticated', 'public.record_cron_tick(text, jsonb)', 'execute')
    and not has_function_privilege('authenticated',
      'public.check_admin_alerts(integer, integer, double precision, integer, integer, integer, boolean)', 'execute'),
  'signed-in users cannot send, record ticks or raise alerts'
);

select ok(
  not has_function_privilege('anon', 'public.set_notification_preferences(boolean, boolean, text, jsonb, text[], integer, uuid)', 'execute')
    and has_function_privilege('authenticated', 'public.set_notification_preferences(boolean, boolean, text, jsonb, text[], integer, uuid)', 'execute'),
  'signed-in users, not anonymous callers, can set notification preferences'
);

-- tgtype bit 0 is FOR EACH ROW: a statement trigger runs once for a whole batch.
select ok(
  (select t.tgtype & 1 = 0 and t.tgnewtable is not null
   from pg_trigger t where t.tgname = 'job_events_write_notifications'),
  'the outbox trigger runs once per statement over its new events, not once per event'
);

-- The trigger --------------------------------------------------------------------------

-- A pro teacher's job that fails for good, with no preferences row: the default e-mail.
select public.enqueue_job('system.noop', '{}'::jsonb, p_user_id => '00000000-0000-4000-8000-000000000002',
                          p_max_attempts => 1);
select public.fail_job(j.id, j.lease_token, 'boom', 'permanent') from public.claim_jobs('w', 1) j;

select results_eq(
  $$ select audience, channel, kind, status::text from public.notification_outbox $$,
  $$ values ('owner', 'email', 'job.failed', 'pending') $$,
  'a job that goes to the dead-letter queue writes one e-mail notification by default'
);

-- A short success: no notification by default.
select public.enqueue_job('system.noop', '{}'::jsonb, p_user_id => '00000000-0000-4000-8000-000000000002');
select public.complete_job(j.id, j.lease_token, '{}'::jsonb) from public.claim_jobs('w', 1) j;

select is((select count(*)::integer from public.notification_outbox), 1,
  'a success shorter than 60 s is not notified by default');

-- An enterprise teacher asks for everything, by Slack too.
insert into public.notification_preferences (user_id, slack_enabled, slack_webhook_url, events, success_min_seconds)
values ('00000000-0000-4000-8000-000000000003', true, 'https://hooks.slack.com/services/T0/B0/abc',
        array['succeeded', 'failed', 'cancelled'], 0);
select public.enqueue_job('system.noop', '{}'::jsonb, p_user_id => '00000000-0000-4000-8000-000000000003');
select public.complete_job(j.id, j.lease_token, '{}'::jsonb) from public.claim_jobs('w', 1) j;

select results_eq(
  $$ select channel, kind from public.notification_outbox
     where user_id = '00000000-0000-4000-8000-000000000003' order by channel $$,
  $$ values ('email', 'job.succeeded'), ('slack', 'job.succeeded') $$,
  'a user who asked for every success and for Slack gets both channels'
);

-- A job-type filter that holds a null, which the preferences accept, filters nothing out.
update public.notification_preferences set job_types = array[null, 'exam.grade']
where user_id = '00000000-0000-4000-8000-000000000003';
select public.enqueue_job('system.noop', '{}'::jsonb, p_user_id => '00000000-0000-4000-8000-000000000003');
select public.complete_job(j.id, j.lease_token, '{}'::jsonb) from public.claim_jobs('w', 1) j;

select is(
  (select count(*)::integer from public.notification_outbox where user_id = '00000000-0000-4000-8000-000000000003'),
  4,
  'a job-type filter holding a null does not drop notifications'
);

select throws_ok(
  $$ update public.notification_preferences set slack_webhook_url = 'https://attacker.example/hook'
     where user_id = '00000000-0000-4000-8000-000000000003' $$,
  '23514', null,
  'a Slack webhook must be on Slack''s own host'
);

select throws_ok(
  $$ insert into public.notification_outbox (job_id, event_id, user_id, audience, channel, kind)
     select o.job_id, o.event_id, o.user_id, o.audience, o.channel, o.kind from public.notification_outbox o limit 1 $$,
  '23505', null,
  'a job event is notified at most once per audience and channel'
);

-- Row-level security as a teacher -------------------------------------------------------

set local role authenticated;
select set_config('request.jwt.claims',
  '{"sub": "00000000-0000-4000-8000-000000000002", "role": "authenticated"}', true);

select is((select count(*)::integer from public.notification_preferences), 0,
  'a teacher does not see another user''s preferences');

select lives_ok(
  $$ insert into public.notification_preferences (user_id, email_enabled)
     values ('00000000-0000-4000-8000-000000000002', false) $$,
  'a teacher can add their own preferences'
);

select is((select email_enabled from public.notification_preferences), false,
  'a teacher reads back their own preferences');

select throws_ok(
  $$ insert into public.notification_preferences (user_id) values ('00000000-0000-4000-8000-000000000001') $$,
  '42501', null,
  'a teacher cannot add preferences for someone else'
);

select is_empty(
  $$ update public.notification_preferences set email_enabled = false
     where user_id = '00000000-0000-4000-8000-000000000003' returning user_id $$,
  'a teacher cannot change someone else''s preferences'
);

select results_eq(
  $$ select kind from public.notification_outbox $$,
  $$ values ('job.failed') $$,
  'a teacher reads only their own notifications'
);

select throws_ok(
  $$ select public.claim_notifications('sneaky', 10) $$,
  '42501', null,
  'a teacher cannot claim notifications'
);

select throws_ok(
  $$ select public.requeue_notification(1) $$,
  '42501', 'only admins may requeue notifications',
  'a teacher cannot requeue notifications'
);

-- As an admin.
select set_config('request.jwt.claims',
  '{"sub": "00000000-0000-4000-8000-00000000000a", "role": "authenticated"}', true);

select is((select count(*)::integer from public.notification_outbox), 5,
  'an admin reads every notification');

select is((select count(*)::integer from public.notification_preferences), 0,
  'an admin does not read users'' preferences (their Slack webhooks are secrets)');

select * from finish();
rollback;
