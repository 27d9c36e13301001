-- prune_notifications: finished admin notifications older than the retention period go;
-- pending ones, recent ones and job notifications stay.
begin;
select plan(13);

select id as job from public.enqueue_job('system.noop') \gset

insert into public.notification_outbox (job_id, audience, channel, kind, status, created_at, sent_at)
values (null, 'admins', 'slack', 'alert.dead_letter', 'sent', now() - interval '40 days', now() - interval '40 days'),
       (null, 'admins', 'slack', 'alert.queue_age', 'failed', now() - interval '35 days', null),
       (null, 'admins', 'slack', 'alert.failure_rate', 'uncertain', now() - interval '31 days', null),
       (null, 'admins', 'slack', 'alert.cron_silent', 'pending', now() - interval '60 days', null),
       (null, 'admins', 'slack', 'alert.dead_letter', 'sent', now() - interval '2 days', now() - interval '2 days'),
       (:job, 'admins', 'slack', 'job.failed', 'sent', now() - interval '90 days', now() - interval '90 days');

select is(public.prune_notifications(interval '30 days', 2), 2, 'it deletes at most its limit');
select is(
  (select array_agg(n.kind order by n.created_at) from public.notification_outbox n
   where n.job_id is null and n.status <> 'pending' and n.created_at < now() - interval '30 days'),
  array['alert.failure_rate'],
  'the oldest go first'
);
select is(public.prune_notifications(), 1, 'the next call deletes what is left');
select is(
  (select array_agg(n.kind || '/' || n.status order by n.created_at) from public.notification_outbox n),
  array['job.failed/sent', 'alert.cron_silent/pending', 'alert.dead_letter/sent'],
  'a job''s notification, a pending alert however old, and a recent alert are kept'
);
select is(public.prune_notifications(interval '1 day'), 1, 'a shorter period reaches the recent alert');

select throws_ok($$ select public.prune_notifications(interval '59 minutes') $$,
  'EQ007', 'older_than must be at least 1 hour', 'pruning notifications younger than an hour is refused');
-- A period whose parts cancel out compares as 1 hour; by the calendar it would cut
-- off a day in the future in a 31-day month. It cuts off 1 hour ago.
reset role;
insert into public.notification_outbox (job_id, audience, channel, kind, status, created_at, sent_at)
values (null, 'admins', 'slack', 'alert.queue_age', 'sent', now() - interval '1 minute', now());
select is(public.prune_notifications(interval '-1 mon 30 days 1 hour'), 0,
  'a period of parts that cancel out deletes nothing younger than its length in seconds');
select is(public.prune_jobs(interval '-1 mon 30 days 1 hour'), 0, 'neither does prune_jobs');
select throws_ok($$ select public.prune_notifications(interval '100000000 years') $$,
  'EQ007', 'older_than must be at most 100 years', 'a period beyond the timestamp range is refused');
select throws_ok($$ select public.prune_jobs(interval '100000000 years') $$,
  'EQ007', 'older_than must be at most 100 years', 'by prune_jobs too');
select throws_ok($$ select public.prune_notifications(interval '30 days', 0) $$,
  'EQ007', 'limit must be between 1 and 100000', 'a limit of 0 is refused');

set local role authenticated;
select set_config('request.jwt.claims', '{"role": "authenticated"}', true);
select throws_ok($$ select public.prune_notifications() $$, '42501',
  'permission denied for function prune_notifications', 'signed-in users cannot prune');
reset role;

select is(
  (select count(*)::integer from pg_indexes
   where indexname = 'notification_outbox_admin_created_at_idx'),
  1,
  'the admins'' rows are found through their own index'
);

select * from finish();
rollback;
