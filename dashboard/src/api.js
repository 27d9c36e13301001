// Every read and action of the dashboard, through supabase-js: table reads for one
// job, its events, the dead-letter queue and the user's notification preferences,
// and the SQL functions (list_jobs, queue_stats, cancel_job, requeue_job,
// bulk_requeue, set_notification_preferences) for the rest. All of it runs
// with the signed-in user's JWT, so row-level security decides what comes back.

export const PAGE_SIZE = 50

export const WINDOWS = {
  '1h': { label: 'Last hour', window: '1 hour', bucket: '5 minutes' },
  '24h': { label: 'Last 24 hours', window: '24 hours', bucket: '1 hour' },
  '7d': { label: 'Last 7 days', window: '7 days', bucket: '6 hours' },
}

// What a user without a row in notification_preferences gets: the columns' defaults.
export const DEFAULT_NOTIFICATION_PREFERENCES = {
  email_enabled: true,
  slack_enabled: false,
  has_slack_webhook: false,
  events: ['succeeded', 'failed'],
  job_types: null,
  success_min_seconds: 60,
}

export const NOTIFICATION_EVENTS = ['succeeded', 'failed', 'cancelled']

// Every column but the webhook URL, a secret the page never reads.
const PREFERENCE_COLUMNS = 'email_enabled,slack_enabled,events,job_types,success_min_seconds'

export class ApiError extends Error {
  constructor(error) {
    super(error?.message || String(error))
    this.code = error?.code ?? null
    this.details = error?.details ?? null
  }

  // PostgREST's answer for an expired or foreign JWT: the session is over.
  get isSessionOver() {
    return this.code === 'PGRST301' || this.code === 'PGRST303'
  }
}

function unwrap({ data, error, count }) {
  if (error) throw new ApiError(error)
  return count === undefined || count === null ? data : { data, count }
}

export class Api {
  constructor(client) {
    this.client = client
  }

  async account(userId) {
    const row = unwrap(
      await this.client.from('accounts').select('tier,is_admin').eq('user_id', userId).maybeSingle()
    )
    return { tier: row?.tier ?? 'free', isAdmin: row?.is_admin === true }
  }

  async jobTypes() {
    return unwrap(await this.client.from('job_types').select('name').order('name'))
  }

  async tiers() {
    return unwrap(await this.client.from('tiers').select('name,head_start_seconds').order('head_start_seconds'))
  }

  // One page of the list, newest first. `cursor` is the last row of the previous
  // page ({created_at, id}); one row more than a page says whether another follows.
  async listJobs(filters, cursor = null, pageSize = PAGE_SIZE) {
    const args = { p_limit: pageSize + 1 }
    if (filters.status) args.p_statuses = [filters.status]
    if (filters.type) args.p_job_type = filters.type
    if (filters.tier) args.p_tier = filters.tier
    if (filters.from) args.p_created_from = filters.from
    if (filters.to) args.p_created_to = filters.to
    if (filters.q) args.p_search = filters.q
    if (cursor) {
      args.p_before_created_at = cursor.created_at
      args.p_before_id = cursor.id
    }
    const rows = unwrap(await this.client.rpc('list_jobs', args))
    return { rows: rows.slice(0, pageSize), hasMore: rows.length > pageSize }
  }

  async job(id) {
    return unwrap(await this.client.from('jobs').select('*').eq('id', id).maybeSingle())
  }

  async jobEvents(id) {
    return unwrap(
      await this.client.from('job_events').select('*').eq('job_id', id).order('id', { ascending: true }).limit(500)
    )
  }

  async queueStats(windowKey) {
    const { window, bucket } = WINDOWS[windowKey]
    return unwrap(await this.client.rpc('queue_stats', { p_window: window, p_bucket: bucket }))
  }

  async queueDepth() {
    return unwrap(await this.client.from('queue_depth').select('tier,job_type,queued,ready,running'))
  }

  async deadLetters(offset, pageSize = PAGE_SIZE) {
    return unwrap(
      await this.client
        .from('dead_letter_jobs')
        .select('id,job_type,user_id,tier,attempt,max_attempts,error_kind,last_error,created_at,finished_at', {
          count: 'exact',
        })
        .order('finished_at', { ascending: false })
        .order('id', { ascending: false })
        .range(offset, offset + pageSize - 1)
    )
  }

  // The user's own preferences (row-level security), or the defaults without a row.
  // Whether a webhook is stored is asked with a filter on it, so its value never
  // reaches the page.
  async notificationPreferences(userId) {
    const table = () => this.client.from('notification_preferences')
    const [row, withWebhook] = await Promise.all([
      table().select(PREFERENCE_COLUMNS).eq('user_id', userId).maybeSingle(),
      table().select('user_id').eq('user_id', userId).not('slack_webhook_url', 'is', null).maybeSingle(),
    ])
    const preferences = unwrap(row)
    const hasWebhook = unwrap(withWebhook) !== null
    if (!preferences) return { ...DEFAULT_NOTIFICATION_PREFERENCES, isDefault: true }
    return { ...preferences, has_slack_webhook: hasWebhook, isDefault: false }
  }

  // Creates or replaces the whole row; a null webhook URL removes the stored one.
  // Answers the row saved, with has_slack_webhook in place of the URL.
  async setNotificationPreferences(preferences) {
    const saved = unwrap(
      await this.client.rpc('set_notification_preferences', {
        p_email_enabled: preferences.email_enabled,
        p_slack_enabled: preferences.slack_enabled,
        p_slack_webhook_url: preferences.slack_webhook_url || null,
        p_events: preferences.events,
        p_job_types: preferences.job_types?.length ? preferences.job_types : null,
        p_success_min_seconds: preferences.success_min_seconds,
      })
    )
    return { ...saved, isDefault: false }
  }

  async cancel(id) {
    return unwrap(await this.client.rpc('cancel_job', { p_job_id: id, p_reason: 'cancelled from the dashboard' }))
  }

  async requeue(id) {
    return unwrap(await this.client.rpc('requeue_job', { p_job_id: id, p_reason: 'requeued from the dashboard' }))
  }

  async bulkRequeue(ids) {
    return unwrap(await this.client.rpc('bulk_requeue', { p_job_ids: ids }))
  }
}

