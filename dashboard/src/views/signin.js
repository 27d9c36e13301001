// Sign-in with Supabase Auth (e-mail and password). Under `examq dev` the page also
// lists the seeded users: the local stand-in signs any of them in without a password.

import { h } from '../dom.js'

export function mountSignIn(client, main, config, message) {
  const status = h('p', { role: 'alert', class: 'form-error', text: message || '' })
  const email = h('input', { id: 'email', type: 'email', name: 'email', autocomplete: 'username', required: true })
  const password = h('input', {
    id: 'password',
    type: 'password',
    name: 'password',
    autocomplete: 'current-password',
    required: true,
  })
  const submit = h('button', { type: 'submit', text: 'Sign in' })

  async function signIn(address, secret) {
    submit.disabled = true
    status.textContent = ''
    const { error } = await client.auth.signInWithPassword({ email: address, password: secret })
    submit.disabled = false
    if (error) status.textContent = `Sign-in failed: ${error.message}`
  }

  const form = h(
    'form',
    {
      class: 'card sign-in',
      'aria-labelledby': 'sign-in-title',
      onSubmit: (event) => {
        event.preventDefault()
        signIn(email.value.trim(), password.value)
      },
    },
    h('h1', { id: 'sign-in-title', text: 'Sign in' }),
    h('div', { class: 'field' }, h('label', { for: 'email', text: 'E-mail' }), email),
    h('div', { class: 'field' }, h('label', { for: 'password', text: 'Password' }), password),
    submit,
    status
  )
  main.append(form)

  const users = config.local?.users || []
  if (users.length) {
    main.append(
      h(
        'section',
        { class: 'card local-users', 'aria-labelledby': 'local-title' },
        h('h2', { id: 'local-title', text: 'Local development: sign in as a seeded user' }),
        h('p', {
          class: 'muted',
          text: 'examq dev signs these users in without a password. Production sign-in goes through Supabase Auth.',
        }),
        h(
          'ul',
          { class: 'user-list' },
          users.map((user) =>
            h(
              'li',
              {},
              h('button', {
                type: 'button',
                class: 'secondary',
                'data-email': user.email,
                text: `${user.name || user.email} (${user.is_admin ? 'admin' : `${user.tier} tier`})`,
                onClick: () => signIn(user.email, 'local'),
              })
            )
          )
        )
      )
    )
  }
}
