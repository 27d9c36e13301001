// One job: what it is, its payload in summary, progress and ETA, last error, the
// history of its transitions, and Cancel (owner or admin) and Requeue (admin).

import { ApiError } from '../api.js'
import { debounce, h } from '../dom.js'
import { formatDuration, formatTime, secondsBetween } from '../format.js'
import { etaText, progressValue, statusBadge } from './parts.js'

// A payload can hold whole CSV files: show each key's shape, not its content.
export function summarize(value) {
  if (value === null) return 'null'
  if (typeof value === 'string') {
    const lines = value.split('\n').filter((line) => line.length).length
    const first = value.split('\n', 1)[0]
    const preview = first.length > 60 ? `${first.slice(0, 60)}…` : first
    return lines > 1 ? `text, ${value.length} characters, ${lines} lines: “${preview}”…` : `“${preview}”`
  }
  if (Array.isArray(value)) return `list of ${value.length} item${value.length === 1 ? '' : 's'}`
  if (typeof value === 'object') {
    const keys = Object.keys(value)
    return `object with ${keys.length} key${keys.length === 1 ? '' : 's'}: ${keys.slice(0, 6).join(', ')}${keys.length > 6 ? ', …' : ''}`
  }
  return String(value)
}

function definitionList(entries, id) {
  return h(
    'dl',
    { class: 'details', id },
    entries.filter(([, v]) => v !== null && v !== undefined).map(([k, v]) => [h('dt', { text: k }), h('dd', { text: v })])
  )
}

function eventRow(event) {
  const change = event.from_status === event.to_status ? `${event.to_status} (cancel requested)` : `${event.from_status || 'new'} → ${event.to_status}`
  const note = event.error || (event.details ? Object.entries(event.details).map(([k, v]) => `${k}: ${typeof v === 'object' ? JSON.stringify(v) : v}`).join(', ') : '')
  return h(
    'tr',
    {},
    h('td', {}, h('time', { datetime: event.at, text: formatTime(event.at) })),
    h('td', { text: change }),
    h('td', { class: 'mono', text: event.actor }),
    h('td', { text: event.attempt }),
    h('td', { class: 'error-text', text: note })
  )
}

export async function mountJob(ctx, main, current) {
  const id = current.id
  const message = h('p', { role: 'status', class: 'action-status', id: 'action-status' })
  const content = h('div')
  main.append(h('p', {}, h('a', { href: '#/jobs', text: '← All jobs' })), content, message)

  let job = null
  let confirming = false

  async function act(label, call) {
    message.textContent = `${label}…`
    try {
      const answer = await call()
      const outcome = Array.isArray(answer) ? answer[0] : answer
      message.textContent = `${label}: ${String(outcome.outcome || 'done').replaceAll('_', ' ')}.`
    } catch (error) {
      message.textContent = `${label} failed: ${error instanceof ApiError ? error.message : error}`
    }
    confirming = false
    await render()
  }

  function actions() {
    const buttons = []
    const canCancel = job.status === 'queued' || (job.status === 'running' && !job.cancel_requested_at)
    if (canCancel && !confirming) {
      buttons.push(h('button', { type: 'button', class: 'danger', id: 'cancel-job', text: 'Cancel job', onClick: () => { confirming = true; render().then(() => document.getElementById('confirm-cancel')?.focus()) } }))
    }
    if (canCancel && confirming) {
      buttons.push(
        h('span', { id: 'confirm-text', text: job.status === 'running' ? 'Ask the worker to stop this job?' : 'Cancel this job?' }),
        h('button', { type: 'button', class: 'danger', id: 'confirm-cancel', 'aria-describedby': 'confirm-text', text: 'Yes, cancel it', onClick: () => act('Cancel', () => ctx.api.cancel(id)) }),
        h('button', { type: 'button', class: 'secondary', text: 'Keep it', onClick: () => { confirming = false; render() } })
      )
    }
    if (ctx.user.isAdmin && (job.status === 'dead' || job.status === 'cancelled')) {
      buttons.push(h('button', { type: 'button', id: 'requeue-job', text: 'Requeue', onClick: () => act('Requeue', () => ctx.api.requeue(id)) }))
    }
    return buttons.length ? h('div', { class: 'actions', role: 'group', 'aria-label': 'Actions' }, buttons) : null
  }

  async function render() {
    const [row, events] = await Promise.all([ctx.api.job(id), ctx.api.jobEvents(id)])
    job = row
    if (!job) {
      content.replaceChildren(h('h1', { text: `Job #${id}` }), h('p', { role: 'alert', text: 'This job was not found, or it is not yours to see.' }))
      return
    }

    const value = progressValue(job)
    const progress = h(
      'section',
      { class: 'card', 'aria-labelledby': 'progress-title' },
      h('h2', { id: 'progress-title', text: 'Progress' }),
      h('progress', { id: 'job-progress', max: 100, value: value ?? 0, 'aria-label': 'Job progress', 'data-value': value ?? '' }),
      h('p', { id: 'progress-text', text: value === null ? (job.status === 'queued' ? 'Waiting to start.' : 'No progress reported.') : `${Math.round(value * 10) / 10} %${job.progress_message ? ` · ${job.progress_message}` : ''}` }),
      etaText(job) ? h('p', { id: 'job-eta', text: etaText(job) }) : null
    )

    const payload = job.payload || {}
    const payloadBytes = new TextEncoder().encode(JSON.stringify(payload)).length
    const payloadSection = h(
      'section',
      { class: 'card', 'aria-labelledby': 'payload-title' },
      h('h2', { id: 'payload-title', text: 'Payload' }),
      h('p', { class: 'muted', text: `${Object.keys(payload).length} key(s), ${payloadBytes} bytes as JSON.` }),
      definitionList(Object.entries(payload).map(([k, v]) => [k, summarize(v)]), 'payload-summary')
    )

    const resultSummary = job.result?.summary && typeof job.result.summary === 'object' ? job.result.summary : job.result
    const resultSection = job.result
      ? h(
          'section',
          { class: 'card', 'aria-labelledby': 'result-title' },
          h('h2', { id: 'result-title', text: 'Result' }),
          definitionList(Object.entries(resultSummary || {}).map(([k, v]) => [k, typeof v === 'number' ? String(Math.round(v * 10000) / 10000) : summarize(v)]), 'result-summary')
        )
      : null

    const errorSection = job.last_error
      ? h(
          'section',
          { class: 'card error', 'aria-labelledby': 'error-title' },
          h('h2', { id: 'error-title', text: 'Last error' }),
          h('p', { text: `Kind: ${job.error_kind || 'unknown'}` }),
          h('pre', { id: 'last-error', text: job.last_error })
        )
      : null

    const wait = secondsBetween(job.created_at, job.first_started_at)
    const ran = secondsBetween(job.started_at, job.finished_at)
    const facts = definitionList(
      [
        ['Owner', job.user_id ? (job.user_id === ctx.user.id ? 'you' : job.user_id) : 'system'],
        ['Tier', job.tier],
        ['Attempts', `${job.attempt} of ${job.max_attempts}`],
        ['Created', formatTime(job.created_at)],
        ['Runs from', formatTime(job.run_at)],
        ['Started', job.started_at ? formatTime(job.started_at) : 'not yet'],
        ['Finished', job.finished_at ? formatTime(job.finished_at) : 'not yet'],
        ['Waited', wait === null ? null : formatDuration(wait)],
        ['Last run took', ran === null ? null : formatDuration(ran)],
        ['Cancel requested', job.cancel_requested_at ? formatTime(job.cancel_requested_at) : null],
      ],
      'job-facts'
    )

    const history = h(
      'section',
      { class: 'card', 'aria-labelledby': 'history-title' },
      h('h2', { id: 'history-title', text: 'History' }),
      h(
        'div',
        { class: 'table-scroll' },
        h(
          'table',
          { id: 'job-events' },
          h('caption', { class: 'visually-hidden', text: 'State changes, oldest first' }),
          h('thead', {}, h('tr', {}, ['When', 'Change', 'By', 'Attempt', 'Note'].map((c) => h('th', { scope: 'col', text: c })))),
          h('tbody', {}, events.map(eventRow))
        )
      )
    )

    const hadFocus = document.activeElement?.id
    content.replaceChildren(
      ...[
        h('div', { class: 'view-header' }, h('h1', {}, `Job #${job.id} · ${job.job_type} `, statusBadge(job))),
        actions(),
        h('div', { class: 'job-grid' }, progress, h('section', { class: 'card', 'aria-labelledby': 'facts-title' }, h('h2', { id: 'facts-title', text: 'Details' }), facts)),
        errorSection,
        payloadSection,
        resultSection,
        history,
      ].filter(Boolean)
    )
    // A refresh rebuilds the page; keep the keyboard where it was.
    if (hadFocus && hadFocus !== 'main') document.getElementById(hadFocus)?.focus()
  }

  await render()

  const refresh = debounce(() => render().catch(ctx.onError), 300)
  const stop = ctx.live.watch({
    changes: [
      { table: 'jobs', filter: `id=eq.${id}` },
      { table: 'job_events', filter: `job_id=eq.${id}` },
    ],
    onChange: refresh,
    poll: refresh,
    pollSeconds: 2,
  })

  return () => {
    stop()
    refresh.cancel()
  }
}
