// The signed-in user's notification preferences: e-mail and Slack, which outcomes,
// which job types and how long a job must run before its success is worth a message.
// Read from the user's own row of notification_preferences (the columns' defaults
// without one) and saved with set_notification_preferences, which replaces the whole
// row. The Slack webhook URL is a secret: the page only says whether one is stored.

import { ApiError, NOTIFICATION_EVENTS } from '../api.js'
import { h } from '../dom.js'

const EVENT_LABELS = {
  succeeded: 'Succeeded',
  failed: 'Failed for good (dead-letter queue)',
  cancelled: 'Cancelled',
}

const MAX_SUCCESS_MIN_SECONDS = 604800

function checkbox(id, label, attrs = {}) {
  const input = h('input', { type: 'checkbox', id, ...attrs })
  return { input, element: h('div', { class: 'check' }, input, h('label', { for: id, text: label })) }
}

export async function mountSettings(ctx, main) {
  const [preferences, types] = await Promise.all([ctx.api.notificationPreferences(ctx.user.id), ctx.api.jobTypes()])

  const source = h('p', { class: 'muted', id: 'settings-source' })
  const email = checkbox('email-enabled', `E-mail me (${ctx.user.email})`)
  const slack = checkbox('slack-enabled', 'Post to my Slack')
  const webhook = h('input', {
    type: 'url',
    id: 'slack-webhook-url',
    name: 'slack-webhook-url',
    autocomplete: 'off',
    spellcheck: 'false',
    inputmode: 'url',
    placeholder: 'https://hooks.slack.com/services/…',
    'aria-describedby': 'slack-webhook-state slack-webhook-help',
  })
  const webhookState = h('small', { id: 'slack-webhook-state' })
  const channelsNote = h('p', { class: 'muted', id: 'channels-note', role: 'status' })

  const events = Object.fromEntries(NOTIFICATION_EVENTS.map((event) => [event, checkbox(`event-${event}`, EVENT_LABELS[event], { value: event })]))

  const minimum = h('input', {
    type: 'number',
    id: 'success-min-seconds',
    name: 'success-min-seconds',
    min: 0,
    max: MAX_SUCCESS_MIN_SECONDS,
    step: 1,
    inputmode: 'numeric',
    required: true,
    'aria-describedby': 'success-min-help',
  })

  // Known types, and any stored type that is no longer known (so saving keeps it).
  const typeNames = [...new Set([...types.map((t) => t.name), ...(preferences.job_types || [])])]
  const jobTypes = typeNames.map((name, i) => ({ name, ...checkbox(`job-type-${i}`, name, { value: name }) }))

  const save = h('button', { type: 'submit', id: 'save-settings', text: 'Save preferences' })
  const status = h('p', { role: 'status', id: 'settings-status', class: 'action-status' })
  const error = h('p', { role: 'alert', id: 'settings-error', class: 'form-error' })

  function fill(values) {
    source.textContent = values.isDefault
      ? 'You have not saved preferences yet: these are the defaults.'
      : 'Your saved preferences.'
    email.input.checked = values.email_enabled
    slack.input.checked = values.slack_enabled
    webhook.value = ''
    webhookState.textContent = values.has_slack_webhook
      ? 'A webhook URL is saved (it is never shown).'
      : 'No webhook URL is saved.'
    for (const [event, { input }] of Object.entries(events)) input.checked = values.events.includes(event)
    for (const type of jobTypes) type.input.checked = (values.job_types || []).includes(type.name)
    minimum.value = String(values.success_min_seconds)
    update()
  }

  function update() {
    webhook.required = slack.input.checked
    channelsNote.textContent =
      email.input.checked || slack.input.checked ? '' : 'E-mail and Slack are both off: you will not be notified.'
  }

  const form = h(
    'form',
    {
      class: 'settings',
      id: 'settings-form',
      'aria-labelledby': 'settings-title',
      onSubmit: async (event) => {
        event.preventDefault()
        status.textContent = 'Saving…'
        error.textContent = ''
        save.disabled = true
        try {
          const saved = await ctx.api.setNotificationPreferences({
            email_enabled: email.input.checked,
            slack_enabled: slack.input.checked,
            slack_webhook_url: webhook.value.trim(),
            events: NOTIFICATION_EVENTS.filter((e) => events[e].input.checked),
            job_types: jobTypes.filter((t) => t.input.checked).map((t) => t.name),
            success_min_seconds: Number(minimum.value),
          })
          fill(saved)
          status.textContent = 'Saved. Your notification preferences are up to date.'
        } catch (failure) {
          status.textContent = ''
          error.textContent = `Not saved: ${failure instanceof ApiError ? failure.message : failure}`
          ctx.onError(failure)
        } finally {
          save.disabled = false
        }
      },
    },
    h(
      'fieldset',
      { class: 'card' },
      h('legend', { text: 'Where to tell me' }),
      email.element,
      slack.element,
      h(
        'div',
        { class: 'field' },
        h('label', { for: 'slack-webhook-url', text: 'Slack incoming webhook URL' }),
        webhook,
        webhookState,
        h('small', {
          id: 'slack-webhook-help',
          class: 'muted',
          text: 'Saving replaces the stored URL: while Slack is on, paste the URL each time you save; saving with Slack off removes it. Only https://hooks.slack.com/… addresses are accepted.',
        })
      ),
      channelsNote
    ),
    h(
      'fieldset',
      { class: 'card' },
      h('legend', { text: 'Tell me when a job has' }),
      NOTIFICATION_EVENTS.map((event) => events[event].element),
      h(
        'div',
        { class: 'field' },
        h('label', { for: 'success-min-seconds', text: 'Minimum run time before a success is notified (seconds)' }),
        minimum,
        h('small', { id: 'success-min-help', class: 'muted', text: '0 notifies every success; 60 skips jobs that ran under a minute. At most 604800 (7 days).' })
      )
    ),
    h(
      'fieldset',
      { class: 'card', 'aria-describedby': 'job-types-help' },
      h('legend', { text: 'Job types' }),
      h('p', { id: 'job-types-help', class: 'muted', text: 'Leave all unchecked to be told about every type.' }),
      h('div', { class: 'check-list' }, jobTypes.map((t) => t.element))
    ),
    h('div', { class: 'actions' }, save),
    status,
    error
  )

  email.input.addEventListener('change', update)
  slack.input.addEventListener('change', update)

  main.append(
    h('div', { class: 'view-header' }, h('h1', { id: 'settings-title', text: 'Notifications' })),
    h('p', { class: 'muted', text: 'What examq tells you when one of your jobs finishes, and where.' }),
    source,
    form
  )
  fill(preferences)
  return () => {}
}
