// The dashboard's entry point: the Supabase client, sign-in, and the router.

import { createClient } from '@supabase/supabase-js'

import { Api, ApiError } from './api.js'
import { clear, focusHeading, h } from './dom.js'
import { timeZone } from './format.js'
import { Live } from './live.js'
import { mountDeadLetters } from './views/dead.js'
import { mountJob } from './views/job.js'
import { mountJobs } from './views/jobs.js'
import { mountOverview } from './views/overview.js'
import { mountSettings } from './views/settings.js'
import { mountSignIn } from './views/signin.js'

const main = document.getElementById('main')
const nav = document.getElementById('nav')
const session = document.getElementById('session')
const banner = document.getElementById('live-status')

let unmount = null
let context = null

function showError(error) {
  clear(main).append(
    h('h1', { text: 'Something went wrong' }),
    h('p', { role: 'alert', text: error instanceof Error ? error.message : String(error) })
  )
}

// #/ overview, #/jobs?status=dead list, #/jobs/42 one job, #/dead dead letters,
// #/settings notification preferences.
function parseRoute() {
  const [path, query = ''] = window.location.hash.replace(/^#/, '').split('?')
  const params = new URLSearchParams(query)
  const parts = path.split('/').filter(Boolean)
  if (parts[0] === 'jobs' && parts[1]) return { name: 'job', id: Number(parts[1]), params }
  if (parts[0] === 'jobs') return { name: 'jobs', params }
  if (parts[0] === 'dead') return { name: 'dead', params }
  if (parts[0] === 'settings') return { name: 'settings', params }
  return { name: 'overview', params }
}

async function route() {
  if (!context) return
  if (unmount) unmount()
  unmount = null

  const current = parseRoute()
  for (const link of nav.querySelectorAll('a[data-route]')) {
    const active = link.dataset.route === (current.name === 'job' ? 'jobs' : current.name)
    if (active) link.setAttribute('aria-current', 'page')
    else link.removeAttribute('aria-current')
  }

  const titles = { overview: 'Overview', jobs: 'Jobs', job: `Job #${current.id}`, dead: 'Dead letters', settings: 'Notifications' }
  document.title = `${titles[current.name]} · examq`
  const views = { overview: mountOverview, jobs: mountJobs, job: mountJob, dead: mountDeadLetters, settings: mountSettings }
  clear(main)
  try {
    unmount = await views[current.name](context, main, current)
  } catch (error) {
    if (error instanceof ApiError && error.isSessionOver) return endSession('Your session has ended; sign in again.')
    showError(error)
  }
  focusHeading(main)
}

async function endSession(message) {
  await context?.client.auth.signOut({ scope: 'local' }).catch(() => {})
  context = null
  showSignIn(message)
}

function showSignIn(message) {
  if (unmount) unmount()
  unmount = null
  nav.hidden = true
  session.hidden = true
  banner.hidden = true
  clear(main)
  mountSignIn(client, main, config, message)
  focusHeading(main)
}

// A page opened with a stored session hears of it twice (getSession and SIGNED_IN):
// one start serves both, so the first view is not mounted twice.
let starting = null

function beginSession(authSession) {
  starting ??= startSession(authSession).finally(() => {
    starting = null
  })
  return starting
}

async function startSession(authSession) {
  const api = new Api(client)
  const user = authSession.user
  let account
  try {
    account = await api.account(user.id)
  } catch (error) {
    if (error instanceof ApiError && error.isSessionOver) return endSession('Your session has ended; sign in again.')
    throw error
  }

  context = {
    client,
    api,
    live: new Live(client, banner),
    user: { id: user.id, email: user.email, tier: account.tier, isAdmin: account.isAdmin },
    onSessionOver: () => endSession('Your session has ended; sign in again.'),
    // A background refresh that fails leaves the page as it was, unless the session
    // is over: then the page asks to sign in again.
    onError: (error) => {
      if (error instanceof ApiError && error.isSessionOver) context?.onSessionOver()
    },
  }

  nav.hidden = false
  for (const item of nav.querySelectorAll('[data-admin]')) item.hidden = !account.isAdmin
  session.hidden = false
  document.getElementById('who').textContent =
    `${user.email} · ${account.isAdmin ? 'admin' : `${account.tier} tier`}`
  await route()
}

document.getElementById('time-zone').textContent = `Times are shown in your time zone (${timeZone}).`

const config = window.EXAMQ_CONFIG || {}
let client = null

if (!config.supabaseUrl || !config.supabaseAnonKey) {
  clear(main).append(
    h('h1', { text: 'Dashboard not configured' }),
    h('p', {
      text: 'This build has no Supabase project: set SUPABASE_URL and SUPABASE_ANON_KEY when building it.',
    })
  )
} else {
  client = createClient(config.supabaseUrl, config.supabaseAnonKey, {
    auth: { persistSession: true, autoRefreshToken: true, detectSessionInUrl: false },
  })

  client.auth.onAuthStateChange((event, authSession) => {
    // Deferred: the callback must not await other Supabase calls itself.
    setTimeout(() => {
      if (event === 'SIGNED_IN' && authSession && !context) beginSession(authSession).catch(showError)
      if (event === 'SIGNED_OUT' && context) {
        context = null
        showSignIn()
      }
    }, 0)
  })

  document.getElementById('sign-out').addEventListener('click', async () => {
    await client.auth.signOut({ scope: 'local' })
  })
  // Only #/... addresses are routes; the skip link moves focus without one.
  window.addEventListener('hashchange', () => {
    if (window.location.hash === '' || window.location.hash.startsWith('#/')) route()
  })
  document.querySelector('.skip-link').addEventListener('click', (event) => {
    event.preventDefault()
    main.focus()
  })

  const { data } = await client.auth.getSession()
  if (data.session) await beginSession(data.session).catch(showError)
  else showSignIn()
}
