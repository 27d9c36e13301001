// Formatting in the viewer's locale and time zone (Intl), for every time on the page.

export const timeZone = Intl.DateTimeFormat().resolvedOptions().timeZone

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' })
const shortTime = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' })
const dayHour = new Intl.DateTimeFormat(undefined, { weekday: 'short', hour: '2-digit', minute: '2-digit' })
const relative = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' })
const integer = new Intl.NumberFormat()
const percentage = new Intl.NumberFormat(undefined, { style: 'percent', maximumFractionDigits: 1 })

export function formatTime(iso) {
  return iso ? dateTime.format(new Date(iso)) : '—'
}

export function formatBucket(iso, windowSeconds) {
  const date = new Date(iso)
  return windowSeconds > 2 * 86400 ? dayHour.format(date) : shortTime.format(date)
}

export function formatCount(n) {
  return n === null || n === undefined ? '—' : integer.format(n)
}

export function formatPercent(fraction) {
  return fraction === null || fraction === undefined ? '—' : percentage.format(fraction)
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return '—'
  const s = Math.abs(seconds)
  if (s < 1) return `${Math.round(s * 1000)} ms`
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`
  return `${Math.floor(s / 86400)} d ${Math.round((s % 86400) / 3600)} h`
}

// "in 2 minutes", "3 hours ago".
export function formatRelative(iso, now = Date.now()) {
  if (!iso) return '—'
  const seconds = (new Date(iso).getTime() - now) / 1000
  const units = [
    ['day', 86400],
    ['hour', 3600],
    ['minute', 60],
    ['second', 1],
  ]
  for (const [unit, size] of units) {
    if (Math.abs(seconds) >= size || unit === 'second') {
      return relative.format(Math.round(seconds / size), unit)
    }
  }
  return '—'
}

export function secondsBetween(fromIso, toIso) {
  if (!fromIso || !toIso) return null
  return (new Date(toIso).getTime() - new Date(fromIso).getTime()) / 1000
}

// A date input's value (yyyy-mm-dd) as the start of that day in the viewer's time zone.
export function startOfLocalDay(value) {
  if (!value) return null
  const [year, month, day] = value.split('-').map(Number)
  return new Date(year, month - 1, day).toISOString()
}

export function startOfNextLocalDay(value) {
  if (!value) return null
  const [year, month, day] = value.split('-').map(Number)
  return new Date(year, month - 1, day + 1).toISOString()
}

export const STATUSES = ['waiting', 'queued', 'running', 'succeeded', 'dead', 'cancelled']
