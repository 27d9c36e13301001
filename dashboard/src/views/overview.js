// The overview: what is queued and running now, and over a window the finished
// counts, success rate, wait and run-time percentiles and throughput (queue_stats),
// with queued and running jobs by tier (the queue_depth view).

import {
  BarController,
  BarElement,
  CategoryScale,
  Chart,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  PointElement,
  Tooltip,
} from 'chart.js'

import { WINDOWS } from '../api.js'
import { debounce, h } from '../dom.js'
import { formatBucket, formatCount, formatDuration, formatPercent, formatTime } from '../format.js'

Chart.register(BarController, BarElement, CategoryScale, LinearScale, LineController, LineElement, PointElement, Legend, Tooltip)

// Colours with at least 4.5:1 contrast on white, told apart by more than hue (the
// failed series is also dashed in the line chart and labelled everywhere).
const GREEN = '#1b7a3a'
const RED = '#b3261e'
const BLUE = '#1f5fbf'
const AMBER = '#8a5300'

function stat(label, value, id) {
  return h('div', { class: 'stat', 'data-stat': id }, h('dt', { text: label }), h('dd', { text: value }))
}

// A chart with a text alternative: the canvas has a label, and the same numbers sit
// in a table under a disclosure.
function chartFigure(id, title, summary, columns, rows) {
  const canvas = h('canvas', { id, role: 'img', 'aria-label': `${title}. ${summary}` })
  const table = h(
    'table',
    {},
    h('caption', { class: 'visually-hidden', text: title }),
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col', text: c })))),
    h('tbody', {}, rows.map((r) => h('tr', {}, r.map((cell) => h('td', { text: cell })))))
  )
  return {
    canvas,
    element: h(
      'figure',
      { class: 'card chart' },
      h('figcaption', { text: title }),
      h('div', { class: 'chart-box' }, canvas),
      h('details', {}, h('summary', { text: 'Show the numbers' }), table)
    ),
  }
}

export async function mountOverview(ctx, main, current) {
  const windowKey = WINDOWS[current.params.get('window')] ? current.params.get('window') : '24h'
  const charts = []
  const body = h('div', { class: 'overview-body' })

  const select = h(
    'select',
    {
      id: 'window',
      onChange: () => {
        window.location.hash = `#/?window=${select.value}`
      },
    },
    Object.entries(WINDOWS).map(([key, w]) => h('option', { value: key, selected: key === windowKey, text: w.label }))
  )

  main.append(
    h(
      'div',
      { class: 'view-header' },
      h('h1', { text: ctx.user.isAdmin ? 'Queue overview' : 'Your jobs at a glance' }),
      h('div', { class: 'field inline' }, h('label', { for: 'window', text: 'Window' }), select)
    ),
    body
  )

  async function render() {
    const [stats, depth] = await Promise.all([ctx.api.queueStats(windowKey), ctx.api.queueDepth()])
    for (const chart of charts.splice(0)) chart.destroy()

    const finished = stats.finished || {}
    const now = stats.now || {}
    const cards = h(
      'dl',
      { class: 'stats' },
      stat('Queued now', formatCount(now.queued ?? 0), 'queued'),
      stat('Running now', formatCount(now.running ?? 0), 'running'),
      stat('Succeeded', formatCount(finished.succeeded ?? 0), 'succeeded'),
      stat('Dead', formatCount(finished.dead ?? 0), 'dead'),
      stat('Cancelled', formatCount(finished.cancelled ?? 0), 'cancelled'),
      stat('Success rate', formatPercent(stats.success_rate), 'success-rate'),
      stat('Oldest queued job waiting', formatDuration(stats.oldest_queued_seconds), 'oldest-queued')
    )

    const wait = stats.wait_seconds || {}
    const run = stats.run_seconds || {}
    const latency = h(
      'table',
      { class: 'card latency' },
      h('caption', { text: 'Wait (enqueue to first start) and run time, finished jobs in the window' }),
      h('thead', {}, h('tr', {}, ['', 'p50', 'p95', 'p99'].map((c) => h('th', { scope: 'col', text: c })))),
      h(
        'tbody',
        {},
        [
          ['Wait', wait],
          ['Run time', run],
        ].map(([label, p]) =>
          h(
            'tr',
            { 'data-latency': label },
            h('th', { scope: 'row', text: label }),
            ['p50', 'p95', 'p99'].map((k) => h('td', { text: formatDuration(p[k]) }))
          )
        )
      )
    )

    const points = stats.throughput || []
    const labels = points.map((p) => formatBucket(p.at, stats.window_seconds))
    const throughput = chartFigure(
      'chart-throughput',
      'Throughput: jobs finished per interval',
      `${points.reduce((n, p) => n + p.succeeded, 0)} succeeded and ${points.reduce((n, p) => n + p.failed, 0)} failed in the window.`,
      ['Interval starting', 'Succeeded', 'Failed'],
      points.map((p) => [formatTime(p.at), p.succeeded, p.failed])
    )
    const rates = points.map((p) => (p.succeeded + p.failed ? (100 * p.succeeded) / (p.succeeded + p.failed) : null))
    const success = chartFigure(
      'chart-success',
      'Success rate per interval',
      `Overall ${formatPercent(stats.success_rate)}.`,
      ['Interval starting', 'Success rate'],
      points.map((p, i) => [formatTime(p.at), rates[i] === null ? '—' : `${rates[i].toFixed(1)} %`])
    )

    const byTier = new Map()
    for (const row of depth) {
      const entry = byTier.get(row.tier) || { queued: 0, running: 0 }
      entry.queued += Number(row.queued)
      entry.running += Number(row.running)
      byTier.set(row.tier, entry)
    }
    const tiers = [...byTier.keys()].sort()
    const tierChart = chartFigure(
      'chart-tiers',
      'Queued and running now, by tier',
      tiers.map((t) => `${t}: ${byTier.get(t).queued} queued, ${byTier.get(t).running} running`).join('; ') || 'Nothing queued or running.',
      ['Tier', 'Queued', 'Running'],
      tiers.map((t) => [t, byTier.get(t).queued, byTier.get(t).running])
    )

    // A refresh rebuilds the figures; keep open the tables a reader opened.
    const open = new Set([...body.querySelectorAll('details[open]')].map((d) => d.closest('figure')?.querySelector('canvas')?.id))
    body.replaceChildren(
      h('section', { 'aria-label': 'Counts' }, cards),
      h('p', { class: 'muted', text: `${WINDOWS[windowKey].label}; figures as of ${formatTime(stats.generated_at)}.` }),
      latency,
      h('div', { class: 'charts' }, throughput.element, success.element, tierChart.element)
    )

    for (const canvas of body.querySelectorAll('canvas')) {
      if (open.has(canvas.id)) canvas.closest('figure').querySelector('details').open = true
    }

    const common = { responsive: true, maintainAspectRatio: false, animation: false }
    charts.push(
      new Chart(throughput.canvas, {
        type: 'bar',
        data: {
          labels,
          datasets: [
            { label: 'Succeeded', data: points.map((p) => p.succeeded), backgroundColor: GREEN },
            { label: 'Failed', data: points.map((p) => p.failed), backgroundColor: RED },
          ],
        },
        options: { ...common, scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } },
      }),
      new Chart(success.canvas, {
        type: 'line',
        data: {
          labels,
          datasets: [
            { label: 'Success rate (%)', data: rates, borderColor: BLUE, backgroundColor: BLUE, spanGaps: true },
          ],
        },
        options: { ...common, scales: { y: { min: 0, max: 100 } } },
      }),
      new Chart(tierChart.canvas, {
        type: 'bar',
        data: {
          labels: tiers,
          datasets: [
            { label: 'Queued', data: tiers.map((t) => byTier.get(t).queued), backgroundColor: AMBER },
            { label: 'Running', data: tiers.map((t) => byTier.get(t).running), backgroundColor: BLUE },
          ],
        },
        options: { ...common, scales: { y: { beginAtZero: true } } },
      })
    )
  }

  await render()

  // Figures change with every transition: refresh at most every few seconds.
  const refresh = debounce(() => render().catch(ctx.onError), 2000)
  const stop = ctx.live.watch({ changes: [{ table: 'jobs' }], onChange: refresh, poll: refresh, pollSeconds: 10 })

  return () => {
    stop()
    refresh.cancel()
    for (const chart of charts) chart.destroy()
  }
}
