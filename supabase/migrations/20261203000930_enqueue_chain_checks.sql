-- enqueue_chain: a repeated idempotency key must ask for the same chain, and a step's
-- max_attempts is checked with the step named.
--
-- Idempotency. A repeat (same owner and key) was recognised by its first job only,
-- created by enqueue_job: a request for a chain whose later steps differed (another
-- answer key or responses for the exam pipeline, whose first step holds only the
-- inputs' names and sizes) got the old chain back, and a repeat within the same
-- transaction was taken for a new chain and added its later steps a second time. Now
-- the owner's enqueue lock (the one enqueue_job takes) is taken first and the key
-- looked up under it; a chain found must have as many steps, each of the same job type
-- and payload (parent_result aside, see examq_internal.idempotent_payload), as the
-- request, or the call raises EQ009 and changes nothing; otherwise it is returned as
-- before. A key that names a single job of another request is a conflict too.
--
-- max_attempts. It had only to be a JSON number; a fraction (2.5) or a number beyond
-- PostgreSQL's integer then failed the cast with a raw 22P02 or 22003 that named
-- neither the step nor the field. Each step's max_attempts must now be null (the
-- tier's default) or a whole number from 1 to 2^31-1 (2.0 counts as 2) before
-- anything is enqueued, or the call raises EQ007 naming the step; the tier's own bound
-- is checked as before. Otherwise the contract is that of the migration that
-- introduced the function.

create or replace function public.enqueue_chain(
  p_steps jsonb,
  p_idempotency_key text default null,
  p_user_id uuid default null
) returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  v_kind text := examq_internal.caller_kind();
  v_actor text;
  v_step jsonb;
  v_index integer;
  v_count integer;
  v_root public.jobs;
  v_job public.jobs;
  v_tier public.tiers;
  v_type text;
  v_payload jsonb;
  v_attempts integer;
  v_pending integer;
  v_jobs jsonb;
  v_owner uuid;
  v_conflict boolean;
begin
  if p_steps is null or jsonb_typeof(p_steps) <> 'array' then
    raise exception using errcode = 'EQ007', message = 'steps must be a JSON array of {job_type, payload}';
  end if;

  v_count := jsonb_array_length(p_steps);
  if v_count not between 1 and 10 then
    raise exception using errcode = 'EQ007', message = format('a chain has 1 to 10 steps, not %s', v_count);
  end if;

  for v_index in 0 .. v_count - 1 loop
    v_step := p_steps -> v_index;
    if jsonb_typeof(v_step) <> 'object' or jsonb_typeof(v_step -> 'job_type') is distinct from 'string' then
      raise exception using errcode = 'EQ007', message = format('step %s needs a job_type', v_index + 1);
    end if;
    if v_step ? 'payload' and jsonb_typeof(v_step -> 'payload') <> 'object' then
      raise exception using errcode = 'EQ007', message = format('step %s: payload must be a JSON object', v_index + 1);
    end if;
    if jsonb_typeof(v_step -> 'max_attempts') is distinct from 'null'
       and v_step ? 'max_attempts'
       and not coalesce(case when jsonb_typeof(v_step -> 'max_attempts') = 'number' then
             (v_step ->> 'max_attempts')::numeric = trunc((v_step ->> 'max_attempts')::numeric)
             and (v_step ->> 'max_attempts')::numeric between 1 and 2147483647 end, false) then
      raise exception using
        errcode = 'EQ007',
        message = format('step %s: max_attempts must be a whole number from 1 up, not %s',
                         v_index + 1, case when length((v_step -> 'max_attempts')::text) > 40
                                          then left((v_step -> 'max_attempts')::text, 40) || '...'
                                          else (v_step -> 'max_attempts')::text end);
    end if;
  end loop;

  -- A repeated key: under the owner's enqueue lock (taken again by enqueue_job below,
  -- which is allowed), nobody else can make the key's job meanwhile.
  if p_idempotency_key is not null then
    if v_kind = 'anon' then
      raise exception using errcode = '42501', message = 'sign in to enqueue jobs';
    elsif v_kind = 'user' and p_user_id is not null and p_user_id <> auth.uid() then
      raise exception using errcode = '42501', message = 'users may enqueue jobs only for themselves';
    end if;
    v_owner := case when v_kind = 'user' then auth.uid() else p_user_id end;
    perform pg_advisory_xact_lock(hashtextextended('examq.enqueue:' || coalesce(v_owner::text, 'system'), 0));

    select * into v_root
    from public.jobs j
    where j.user_id is not distinct from v_owner and j.idempotency_key = p_idempotency_key;

    if found then
      -- The chain's first job at each depth (a chain is a line; jobs enqueued later
      -- as children of a step are not part of what enqueue_chain made).
      with recursive down as (
        select j.id, j.job_type, j.payload, 0 as depth
        from public.jobs j where j.id = v_root.id
        union all
        select c.id, c.job_type, c.payload, d.depth + 1
        from down d
        cross join lateral (
          select c.id, c.job_type, c.payload
          from public.jobs c where c.parent_id = d.id
          order by c.id limit 1
        ) c
        where d.depth < 100
      )
      select count(*) <> v_count
             or bool_or(d.job_type is distinct from (p_steps -> d.depth ->> 'job_type')
                        or examq_internal.idempotent_payload(d.payload)
                           <> examq_internal.idempotent_payload(p_steps -> d.depth -> 'payload'))
      into v_conflict
      from down d;

      if v_conflict then
        raise exception using
          errcode = 'EQ009',
          message = examq_internal.idempotency_conflict(p_idempotency_key, format('job %s', v_root.id),
                                                        v_root.job_type);
      end if;
      return public.get_chain(v_root.id);
    end if;
  end if;

  v_step := p_steps -> 0;
  v_root := public.enqueue_job(
    p_job_type => v_step ->> 'job_type',
    p_payload => coalesce(v_step -> 'payload', '{}'::jsonb),
    p_idempotency_key => p_idempotency_key,
    p_max_attempts => (v_step ->> 'max_attempts')::numeric::integer,
    p_user_id => p_user_id
  );

  select * into v_tier from public.tiers t where t.name = v_root.tier;
  v_actor := case when v_kind = 'user' then 'user:' || auth.uid() else 'service' end;

  if v_root.user_id is not null then
    select count(*) into v_pending
    from public.jobs j
    where j.user_id = v_root.user_id and j.status in ('queued', 'waiting');

    if v_pending + v_count - 1 > v_tier.max_queued_per_user then
      raise exception using
        errcode = 'EQ003',
        message = format('queued-job quota reached: the %s tier allows %s queued or waiting jobs per user, '
                         'and this chain needs %s', v_tier.name, v_tier.max_queued_per_user, v_count);
    end if;
  end if;

  v_jobs := jsonb_build_array(to_jsonb(v_root));
  v_job := v_root;

  for v_index in 1 .. v_count - 1 loop
    v_step := p_steps -> v_index;
    v_type := v_step ->> 'job_type';
    v_payload := coalesce(v_step -> 'payload', '{}'::jsonb);
    v_attempts := (v_step ->> 'max_attempts')::numeric::integer;

    if not exists (select from public.job_types t where t.name = v_type) then
      raise exception using errcode = 'EQ001', message = format('unknown job type %L', left(v_type, 100));
    end if;

    if v_tier.allowed_job_types is not null and not (v_type = any (v_tier.allowed_job_types)) then
      raise exception using
        errcode = 'EQ001',
        message = format('job type %L is not available in the %s tier', v_type, v_tier.name);
    end if;

    if octet_length(v_payload::text) > v_tier.max_payload_bytes then
      raise exception using
        errcode = 'EQ002',
        message = format('step %s: payload is %s bytes; the %s tier accepts at most %s',
                         v_index + 1, octet_length(v_payload::text), v_tier.name, v_tier.max_payload_bytes);
    end if;

    if examq_internal.payload_problem(v_payload) is not null then
      raise exception using
        errcode = 'EQ007',
        message = format('step %s: %s', v_index + 1, examq_internal.payload_problem(v_payload));
    end if;

    if v_attempts is not null
       and not (v_attempts between 1 and case when v_kind = 'user' then v_tier.default_max_attempts else 1000 end) then
      raise exception using
        errcode = 'EQ007',
        message = format('step %s: max_attempts must be between 1 and %s, not %s', v_index + 1,
                         case when v_kind = 'user' then v_tier.default_max_attempts else 1000 end, v_attempts);
    end if;

    insert into public.jobs
      (job_type, user_id, tier, payload, status, run_at, sort_at, max_attempts, parent_id)
    values
      (v_type, v_root.user_id, v_tier.name, v_payload, 'waiting', now(),
       now() - make_interval(secs => v_tier.head_start_seconds),
       coalesce(v_attempts, v_tier.default_max_attempts), v_job.id)
    returning * into v_job;

    insert into public.job_events (job_id, user_id, actor, from_status, to_status, attempt, details)
    values (v_job.id, v_job.user_id, v_actor, null, 'waiting', 0,
            jsonb_build_object('parent_id', v_job.parent_id, 'chain_id', v_root.id));

    v_jobs := v_jobs || jsonb_build_array(to_jsonb(v_job));
  end loop;

  return jsonb_build_object('chain_id', v_root.id, 'jobs', v_jobs);
end
$$;
