// Builds the static dashboard into one folder that any static host can serve.
//
//   node dashboard/build.mjs [--out DIR]     (default DIR: dashboard/dist)
//
// It bundles src/main.js with supabase-js and Chart.js from node_modules (nothing is
// fetched from a CDN at run time), copies index.html and styles.css, and writes
// config.js from SUPABASE_URL and SUPABASE_ANON_KEY. The anon (publishable) key is
// the only secret the page may hold: the build refuses a service-role or secret key,
// which would let anyone who opens the page bypass row-level security.
// `examq dev` serves its own config.js, pointing at the local stand-in.

import { build } from 'esbuild'
import { copyFile, mkdir, rm, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))

function outputDir() {
  const index = process.argv.indexOf('--out')
  if (index === -1) return path.join(here, 'dist')
  const value = process.argv[index + 1]
  if (!value) throw new Error('--out needs a folder')
  return path.resolve(value)
}

// The role a legacy JWT key carries, or null for a key that is not a JWT.
function jwtRole(key) {
  const parts = key.split('.')
  if (parts.length !== 3) return null
  try {
    return JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8')).role ?? null
  } catch {
    return null
  }
}

function publicConfig() {
  const url = (process.env.SUPABASE_URL || '').trim().replace(/\/+$/, '')
  const anonKey = (process.env.SUPABASE_ANON_KEY || '').trim()

  if (anonKey.startsWith('sb_secret_') || jwtRole(anonKey) === 'service_role') {
    throw new Error(
      'SUPABASE_ANON_KEY holds a secret (service-role) key; give the anon or publishable key: ' +
        'the page is public and this key would bypass row-level security'
    )
  }
  if (url && !/^https?:\/\/[^/]+/.test(url)) {
    throw new Error(`SUPABASE_URL must be the project's https:// URL, not ${JSON.stringify(url)}`)
  }
  if (!url || !anonKey) {
    console.warn(
      'dashboard: SUPABASE_URL or SUPABASE_ANON_KEY is not set; the page will say it is not configured'
    )
  }
  return { supabaseUrl: url || null, supabaseAnonKey: anonKey || null, local: null }
}

async function main() {
  const out = outputDir()
  const config = publicConfig()

  await rm(out, { recursive: true, force: true })
  await mkdir(path.join(out, 'assets'), { recursive: true })

  await build({
    entryPoints: [path.join(here, 'src', 'main.js')],
    bundle: true,
    format: 'esm',
    target: ['es2022'],
    minify: true,
    sourcemap: true,
    legalComments: 'linked',
    outfile: path.join(out, 'assets', 'app.js'),
    logLevel: 'warning',
  })

  await copyFile(path.join(here, 'index.html'), path.join(out, 'index.html'))
  await copyFile(path.join(here, 'styles.css'), path.join(out, 'assets', 'styles.css'))
  await writeFile(
    path.join(out, 'config.js'),
    `// Written by dashboard/build.mjs. Public: holds the project URL and anon key only.\n` +
      `window.EXAMQ_CONFIG = ${JSON.stringify(config, null, 2)};\n`
  )
  // Operators' dashboards are not for search engines.
  await writeFile(path.join(out, 'robots.txt'), 'User-agent: *\nDisallow: /\n')

  console.log(`dashboard built in ${path.relative(process.cwd(), out) || '.'}`)
}

main().catch((error) => {
  console.error(`dashboard build failed: ${error.message}`)
  process.exit(1)
})
