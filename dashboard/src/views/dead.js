// The dead-letter queue, for admins: jobs that failed for good, newest first, with
// bulk requeue. Dead jobs are few (and pruned after the retention period), so this
// view pages by offset and shows the exact total.

import { PAGE_SIZE } from '../api.js'
import { debounce, h } from '../dom.js'
import { formatTime } from '../format.js'

export async function mountDeadLetters(ctx, main) {
  if (!ctx.user.isAdmin) {
    main.append(h('h1', { text: 'Dead letters' }), h('p', { role: 'alert', text: 'Only admins see the dead-letter queue.' }))
    return () => {}
  }

  let offset = 0
  let total = 0
  const selected = new Set()
  const status = h('p', { role: 'status', id: 'dead-status', class: 'action-status' })
  const summary = h('p', { class: 'muted', id: 'dead-summary' })
  const tbody = h('tbody')
  const selectAll = h('input', { type: 'checkbox', id: 'select-all' })
  const requeue = h('button', { type: 'button', id: 'requeue-selected', text: 'Requeue selected' })
  const previous = h('button', { type: 'button', class: 'secondary', text: '← Previous' })
  const next = h('button', { type: 'button', class: 'secondary', text: 'Next →' })

  main.append(
    h('div', { class: 'view-header' }, h('h1', { text: 'Dead letters' })),
    h('p', { class: 'muted', text: 'Jobs that failed permanently or ran out of attempts. Requeued jobs start again with fresh attempts.' }),
    h('div', { class: 'actions' }, h('span', { class: 'check' }, selectAll, h('label', { for: 'select-all', text: 'Select all on this page' })), requeue),
    status,
    summary,
    h(
      'div',
      { class: 'table-scroll' },
      h(
        'table',
        { id: 'dead-table' },
        h('caption', { class: 'visually-hidden', text: 'Dead jobs, most recent first' }),
        h('thead', {}, h('tr', {}, ['Select', 'Job', 'Type', 'Owner', 'Tier', 'Attempts', 'Kind', 'Error', 'Died'].map((c) => h('th', { scope: 'col', text: c })))),
        tbody
      )
    ),
    h('nav', { class: 'pager', 'aria-label': 'Pages' }, previous, next)
  )

  function updateButton() {
    requeue.disabled = selected.size === 0
    requeue.textContent = selected.size ? `Requeue selected (${selected.size})` : 'Requeue selected'
  }

  async function load() {
    const { data, count } = await ctx.api.deadLetters(offset)
    total = count
    if (offset > 0 && offset >= total) {
      offset = Math.max(0, offset - PAGE_SIZE)
      return load()
    }
    for (const id of [...selected]) if (!data.some((job) => job.id === id)) selected.delete(id)
    tbody.replaceChildren(
      ...data.map((job) => {
        const box = h('input', {
          type: 'checkbox',
          id: `select-${job.id}`,
          checked: selected.has(job.id),
          onChange: () => {
            if (box.checked) selected.add(job.id)
            else selected.delete(job.id)
            updateButton()
          },
        })
        return h(
          'tr',
          { 'data-job-id': job.id },
          h('td', {}, box, h('label', { for: `select-${job.id}`, class: 'visually-hidden', text: `Select job ${job.id}` })),
          h('td', {}, h('a', { href: `#/jobs/${job.id}`, text: `#${job.id}` })),
          h('td', { text: job.job_type }),
          h('td', { class: 'mono', text: job.user_id ? job.user_id.slice(0, 8) : 'system', title: job.user_id || 'system job' }),
          h('td', { text: job.tier }),
          h('td', { text: `${job.attempt}/${job.max_attempts}` }),
          h('td', { text: job.error_kind || '' }),
          h('td', { class: 'error-text', text: (job.last_error || '').slice(0, 160) }),
          h('td', {}, h('time', { datetime: job.finished_at, text: formatTime(job.finished_at) }))
        )
      })
    )
    if (!data.length) tbody.append(h('tr', {}, h('td', { colspan: 9, class: 'empty', text: 'The dead-letter queue is empty.' })))
    selectAll.checked = data.length > 0 && data.every((job) => selected.has(job.id))
    summary.textContent = total ? `${offset + 1}–${offset + data.length} of ${total} dead jobs.` : 'No dead jobs.'
    previous.disabled = offset === 0
    next.disabled = offset + data.length >= total
    updateButton()
  }

  selectAll.addEventListener('change', () => {
    for (const box of tbody.querySelectorAll('input[type=checkbox]')) {
      box.checked = selectAll.checked
      const id = Number(box.id.replace('select-', ''))
      if (selectAll.checked) selected.add(id)
      else selected.delete(id)
    }
    updateButton()
  })
  requeue.addEventListener('click', async () => {
    const ids = [...selected]
    status.textContent = `Requeueing ${ids.length} job(s)…`
    try {
      const answer = await ctx.api.bulkRequeue(ids)
      const skipped = answer.skipped.map((s) => `#${s.job_id}: ${s.reason}`).join('; ')
      status.textContent = `Requeued ${answer.requeued.length} job(s).${skipped ? ` Skipped ${answer.skipped.length}: ${skipped}.` : ''}`
      selected.clear()
    } catch (error) {
      status.textContent = `Requeue failed: ${error.message}`
    }
    await load()
  })
  previous.addEventListener('click', () => {
    offset = Math.max(0, offset - PAGE_SIZE)
    load()
  })
  next.addEventListener('click', () => {
    offset += PAGE_SIZE
    load()
  })

  await load()

  const refresh = debounce(() => load().catch(ctx.onError), 1000)
  const stop = ctx.live.watch({ changes: [{ table: 'jobs' }], onChange: refresh, poll: refresh, pollSeconds: 5 })
  return () => {
    stop()
    refresh.cancel()
  }
}
