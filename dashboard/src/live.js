// Live updates: Supabase Realtime's postgres_changes, with polling when Realtime is
// not connected.
//
// Realtime applies the subscriber's RLS SELECT policies to every INSERT and UPDATE
// it delivers, so a teacher's page only hears about the teacher's jobs. A DELETE is
// not checked against RLS and carries only the primary key (see docs/dashboard.md);
// the views use it only to drop a row they already show. While the channel is not
// SUBSCRIBED (no Realtime server, as under `examq dev`, or a network that blocks
// websockets), each view polls its own read every few seconds and the banner says so.

const FALLBACK_AFTER_MS = 4000

export class Live {
  constructor(client, banner) {
    this.client = client
    this.banner = banner
    this.sequence = 0
    this.mode = null
  }

  setMode(mode, pollSeconds) {
    this.mode = mode
    this.banner.hidden = false
    this.banner.dataset.mode = mode
    this.banner.textContent =
      mode === 'live'
        ? 'Live: changes appear as they happen.'
        : mode === 'polling'
          ? `Live updates are not connected (Realtime unavailable): refreshing every ${pollSeconds} s.`
          : 'Connecting to live updates…'
  }

  // Watches `changes` ([{table, filter}]) and calls onChange(payload) for each one;
  // calls poll() every pollSeconds while Realtime is not connected, and once when it
  // connects (to catch up). Returns a function that stops watching.
  watch({ changes, onChange, poll, pollSeconds = 5 }) {
    let stopped = false
    let timer = null

    const startPolling = () => {
      if (stopped || timer) return
      timer = setInterval(() => {
        if (!document.hidden) poll()
      }, pollSeconds * 1000)
      this.setMode('polling', pollSeconds)
    }
    const stopPolling = () => {
      clearInterval(timer)
      timer = null
    }

    let channel = this.client.channel(`examq-${++this.sequence}`)
    for (const { table, filter } of changes) {
      const spec = { event: '*', schema: 'public', table }
      if (filter) spec.filter = filter
      channel = channel.on('postgres_changes', spec, (payload) => {
        if (!stopped) onChange(payload)
      })
    }

    // Realtime was not connected a moment ago: poll at once, and go live if it connects.
    if (this.mode === 'polling') startPolling()
    else this.setMode('connecting')
    const fallback = setTimeout(startPolling, FALLBACK_AFTER_MS)
    channel.subscribe((status) => {
      if (stopped) return
      if (status === 'SUBSCRIBED') {
        clearTimeout(fallback)
        stopPolling()
        this.setMode('live')
        poll()
      } else if (status === 'CHANNEL_ERROR' || status === 'TIMED_OUT' || status === 'CLOSED') {
        clearTimeout(fallback)
        startPolling()
      }
    })

    return () => {
      stopped = true
      clearTimeout(fallback)
      stopPolling()
      this.client.removeChannel(channel)
    }
  }
}
