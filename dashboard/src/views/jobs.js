// The job list: filters (status, type, tier, created date range), search (job id, type
// or error text) and keyset paging through list_jobs, newest first. Filters live in
// the address (#/jobs?status=dead&q=timeout), so a filtered list can be bookmarked.

import { debounce, h } from '../dom.js'
import { formatTime, STATUSES, startOfLocalDay, startOfNextLocalDay } from '../format.js'
import { progressCell, statusBadge } from './parts.js'

function filtersFrom(params) {
  return {
    status: params.get('status') || '',
    type: params.get('type') || '',
    tier: params.get('tier') || '',
    fromDate: params.get('from') || '',
    toDate: params.get('to') || '',
    q: params.get('q') || '',
  }
}

function queryFor(filters) {
  const params = new URLSearchParams()
  if (filters.status) params.set('status', filters.status)
  if (filters.type) params.set('type', filters.type)
  if (filters.tier) params.set('tier', filters.tier)
  if (filters.fromDate) params.set('from', filters.fromDate)
  if (filters.toDate) params.set('to', filters.toDate)
  if (filters.q) params.set('q', filters.q)
  return params.toString()
}

function selectField(id, label, value, options) {
  return h(
    'div',
    { class: 'field' },
    h('label', { for: id, text: label }),
    h(
      'select',
      { id, name: id },
      h('option', { value: '', text: 'Any' }),
      options.map((o) => h('option', { value: o, selected: o === value, text: o }))
    )
  )
}

export async function mountJobs(ctx, main, current) {
  const filters = filtersFrom(current.params)
  const [types, tiers] = await Promise.all([ctx.api.jobTypes(), ctx.api.tiers()])

  const form = h(
    'form',
    {
      class: 'filters card',
      role: 'search',
      'aria-label': 'Filter jobs',
      onSubmit: (event) => {
        event.preventDefault()
        const data = new FormData(form)
        const next = {
          status: data.get('status'),
          type: data.get('type'),
          tier: data.get('tier'),
          fromDate: data.get('from'),
          toDate: data.get('to'),
          q: String(data.get('q') || '').trim(),
        }
        window.location.hash = `#/jobs${queryFor(next) ? `?${queryFor(next)}` : ''}`
      },
    },
    selectField('status', 'Status', filters.status, STATUSES),
    selectField('type', 'Type', filters.type, types.map((t) => t.name)),
    selectField('tier', 'Tier', filters.tier, tiers.map((t) => t.name)),
    h('div', { class: 'field' }, h('label', { for: 'from', text: 'Created from' }), h('input', { id: 'from', name: 'from', type: 'date', value: filters.fromDate })),
    h('div', { class: 'field' }, h('label', { for: 'to', text: 'Created to' }), h('input', { id: 'to', name: 'to', type: 'date', value: filters.toDate })),
    h(
      'div',
      { class: 'field grow' },
      h('label', { for: 'q', text: 'Search' }),
      h('input', { id: 'q', name: 'q', type: 'search', value: filters.q, placeholder: 'Job id, type or error text', 'aria-describedby': 'q-help' }),
      h('small', { id: 'q-help', class: 'muted', text: 'A number finds that job; other text matches the type or the error.' })
    ),
    h(
      'div',
      { class: 'actions' },
      h('button', { type: 'submit', text: 'Apply' }),
      h('a', { class: 'button secondary', href: '#/jobs', text: 'Reset' })
    )
  )

  const summary = h('p', { class: 'muted', id: 'list-summary', role: 'status' })
  const tbody = h('tbody')
  const showOwner = ctx.user.isAdmin
  const table = h(
    'div',
    { class: 'table-scroll' },
    h(
      'table',
      { class: 'jobs', id: 'jobs-table' },
      h('caption', { class: 'visually-hidden', text: 'Jobs, newest first' }),
      h(
        'thead',
        {},
        h(
          'tr',
          {},
          ['Job', 'Type', 'Status', 'Progress', 'Tier', showOwner ? 'Owner' : null, 'Attempts', 'Created', 'Last error']
            .filter(Boolean)
            .map((c) => h('th', { scope: 'col', text: c, class: `col-${c.toLowerCase().replace(' ', '-')}` }))
        )
      ),
      tbody
    )
  )
  const newer = h('button', { type: 'button', class: 'secondary', text: '← Newer' })
  const older = h('button', { type: 'button', class: 'secondary', text: 'Older →' })
  const pageInfo = h('span', { class: 'muted' })
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' }, newer, pageInfo, older)

  main.append(h('div', { class: 'view-header' }, h('h1', { text: ctx.user.isAdmin ? 'All jobs' : 'Your jobs' })), form, summary, table, pager)

  // Keyset paging: each page starts after the last row of the one before; the stack
  // holds where each visited page started, for going back.
  const query = {
    status: filters.status,
    type: filters.type,
    tier: filters.tier,
    from: startOfLocalDay(filters.fromDate),
    to: startOfNextLocalDay(filters.toDate),
    q: filters.q,
  }
  const starts = [null]
  let rows = []

  function row(job) {
    return h(
      'tr',
      { 'data-job-id': job.id },
      h('td', {}, h('a', { href: `#/jobs/${job.id}`, text: `#${job.id}` })),
      h('td', { text: job.job_type }),
      h('td', {}, statusBadge(job)),
      h('td', {}, progressCell(job)),
      h('td', { class: 'col-tier', text: job.tier }),
      showOwner ? h('td', { class: 'col-owner mono', text: job.user_id ? job.user_id.slice(0, 8) : 'system', title: job.user_id || 'system job' }) : null,
      h('td', { class: 'col-attempts', text: `${job.attempt}/${job.max_attempts}` }),
      h('td', { class: 'col-created' }, h('time', { datetime: job.created_at, text: formatTime(job.created_at) })),
      h('td', { class: 'col-last-error error-text', text: job.last_error ? job.last_error.slice(0, 120) : '' })
    )
  }

  async function load() {
    const page = await ctx.api.listJobs(query, starts[starts.length - 1])
    rows = page.rows
    // A refresh rebuilds the rows; keep the keyboard on the link it was on.
    const focused = tbody.contains(document.activeElement) ? document.activeElement.getAttribute('href') : null
    tbody.replaceChildren(...rows.map(row))
    if (focused) tbody.querySelector(`a[href="${focused}"]`)?.focus()
    if (!rows.length) {
      tbody.append(h('tr', {}, h('td', { colspan: showOwner ? 9 : 8, class: 'empty', text: 'No jobs match.' })))
    }
    newer.disabled = starts.length === 1
    older.disabled = !page.hasMore
    pageInfo.textContent = `Page ${starts.length}`
    summary.textContent = rows.length
      ? `Showing ${rows.length} job${rows.length === 1 ? '' : 's'}${page.hasMore ? ', more on older pages' : ''}.`
      : 'No jobs match these filters.'
  }

  older.addEventListener('click', () => {
    const last = rows[rows.length - 1]
    if (!last) return
    starts.push({ created_at: last.created_at, id: last.id })
    load()
  })
  newer.addEventListener('click', () => {
    if (starts.length > 1) starts.pop()
    load()
  })

  await load()

  const refresh = debounce(() => load().catch(ctx.onError), 500)
  const stop = ctx.live.watch({
    changes: [{ table: 'jobs' }],
    onChange: (payload) => {
      // A DELETE carries only the id: drop the row if it is shown, nothing else.
      if (payload.eventType === 'DELETE') {
        tbody.querySelector(`tr[data-job-id="${Number(payload.old?.id)}"]`)?.remove()
        return
      }
      refresh()
    },
    poll: refresh,
    pollSeconds: 3,
  })

  return () => {
    stop()
    refresh.cancel()
  }
}
