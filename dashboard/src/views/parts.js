// Pieces shared by the views: status badges and progress.

import { h } from '../dom.js'
import { formatRelative, formatTime } from '../format.js'

export function statusBadge(job) {
  const label = job.status === 'running' && job.cancel_requested_at ? 'running (cancel requested)' : job.status
  return h('span', { class: `badge status-${job.status}`, 'data-status': job.status, text: label })
}

export function progressValue(job) {
  if (job.status === 'succeeded') return 100
  return job.progress === null || job.progress === undefined ? null : Number(job.progress)
}

export function progressCell(job) {
  const value = progressValue(job)
  if (value === null) return h('span', { class: 'muted', text: job.status === 'queued' ? 'waiting' : '—' })
  return h(
    'span',
    { class: 'progress-cell' },
    h('progress', { max: 100, value, 'aria-label': `Job ${job.id} progress` }),
    h('span', { text: ` ${Math.round(value)} %` })
  )
}

export function etaText(job) {
  if (job.status !== 'running' || !job.eta_at) return null
  return `ETA ${formatTime(job.eta_at)} (${formatRelative(job.eta_at)})`
}
