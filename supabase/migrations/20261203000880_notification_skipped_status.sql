-- A notification the owner no longer wants ends 'skipped'.
--
-- The value is added on its own: PostgreSQL lets a new enum value be used only once
-- the transaction that added it has committed, and the next migration uses it.

alter type public.notification_status add value if not exists 'skipped' after 'uncertain';
