-- Adds the job status `waiting`: a step of a chain of jobs that waits for the step
-- before it (its parent) to succeed, and is never claimed until then.
--
-- This migration does nothing else because PostgreSQL cannot use an enum value in
-- the transaction that adds it; the next migration (exam_chain) uses it in a check
-- constraint, an index, a trigger and functions.

alter type public.job_status add value if not exists 'waiting';
