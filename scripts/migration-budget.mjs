#!/usr/bin/env node
//! The migration budget of issue 14: how far `client-demo/` (the legacy app after its move to
//! switchboard) is from `../shared/legacy-pusher-app` (the app before). Prints the figures and
//! exits 1 when one is over budget, so CI catches a hook that grows back into a rewrite.
//!
//! Usage: node scripts/migration-budget.mjs   (LEGACY_APP=/path/to/legacy-pusher-app to override;
//! the default is the repo's parent's shared/, as CI lays it out). `--diff` prints only the
//! hook's unified diff, as docs/migrating-from-pusher.md shows it (the check below keeps the
//! guide's copy equal to the real files).

import { execFileSync } from 'node:child_process'
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const DEMO = path.join(ROOT, 'client-demo')
const LEGACY = path.resolve(process.env.LEGACY_APP || path.join(ROOT, '..', 'shared', 'legacy-pusher-app'))

const HOOK = 'src/hooks/useChat.tsx'
const MAX_HOOK_ADDED = 30
const IDENTICAL = [
  'src/app/api/pusher/auth/route.ts',
  'src/lib/pusher.ts',
  'src/lib/session.ts',
  'src/lib/users.ts',
  'src/components/ChatBoxInstance.tsx',
]
// A removed hook line is Pusher-specific when it uses pusher-js (its client, channels, binds,
// connection, options) or names it, or lies inside such a removed call (its options object, its
// callback's body: printed apart, for review); a line of brackets only (`})`) closes such a call.
const PUSHER_LINE =
  /pusher|Pusher|\bchannel\b|Channel|presence\.|subscribe|\bbind\(|unbind|socket_id|\bwsHost|\bwss?Port|forceTLS|enabledTransports|cluster|authEndpoint/
const STRUCTURAL_LINE = /^[\s()[\]{}:;,.?]*$/
// An env var whose name says it holds a secret.
const SECRET_NAME = /SECRET|TOKEN|PASSWORD|PRIVATE|_KEY$|^KEY$/

if (!existsSync(path.join(LEGACY, HOOK))) {
  console.error(`legacy app not found at ${LEGACY} (set LEGACY_APP)`)
  process.exit(2)
}

const failures = []
const over = (what) => failures.push(what)

// ---- the hook: unified diff against the legacy file ----
let diff = ''
try {
  const labels = ['--label', `legacy-pusher-app/${HOOK}`, '--label', `client-demo/${HOOK}`]
  diff = execFileSync('diff', ['-u', ...labels, path.join(LEGACY, HOOK), path.join(DEMO, HOOK)], { encoding: 'utf8' })
} catch (err) {
  if (err.status !== 1) throw err // 1 = files differ
  diff = err.stdout
}
if (process.argv.includes('--diff')) {
  process.stdout.write(diff)
  process.exit(0)
}
const body = diff.split('\n').filter((l) => !l.startsWith('+++') && !l.startsWith('---'))
const added = body.filter((l) => l.startsWith('+'))
const removedNotPusher = []
const removedInsidePusherCall = [] // e.g. the body of a removed `channel.bind(...)` callback
let removed = 0
let depth = 0 // open brackets of a removed Pusher-specific call, in the current run of `-` lines
let afterPusher = false
const brackets = (text) => {
  const code = text.replace(/(['"`])(?:\\.|(?!\1).)*\1/g, '') // strings do not count
  return (code.match(/[([{]/g) || []).length - (code.match(/[)\]}]/g) || []).length
}
for (const line of body) {
  if (!line.startsWith('-')) {
    depth = 0
    afterPusher = false
    continue
  }
  removed += 1
  const text = line.slice(1)
  if (depth > 0) {
    if (!PUSHER_LINE.test(text) && !STRUCTURAL_LINE.test(text)) removedInsidePusherCall.push(text)
    depth = Math.max(0, depth + brackets(text))
  } else if (PUSHER_LINE.test(text)) {
    depth = Math.max(0, brackets(text))
    afterPusher = true
  } else if (!(STRUCTURAL_LINE.test(text) && afterPusher)) {
    removedNotPusher.push(text)
  }
}
console.log(`${HOOK}: +${added.length} / -${removed} against the legacy file (budget: at most +${MAX_HOOK_ADDED})`)
if (added.length > MAX_HOOK_ADDED) over(`${HOOK} adds ${added.length} lines (> ${MAX_HOOK_ADDED})`)
console.log(`  removed lines that are not Pusher-specific: ${removedNotPusher.length}`)
for (const text of removedNotPusher) console.log(`    - ${text.trim()}`)
console.log(`  removed with the Pusher call around them (its options, its callback's body): ${removedInsidePusherCall.length}`)
for (const text of removedInsidePusherCall) console.log(`    - ${text.trim()}`)
if (removedNotPusher.length) over(`${HOOK} removes ${removedNotPusher.length} line(s) that are not Pusher-specific`)

const GUIDE = path.join(ROOT, 'docs', 'migrating-from-pusher.md')
const guideCurrent = existsSync(GUIDE) && readFileSync(GUIDE, 'utf8').includes(`\`\`\`diff\n${diff}\`\`\``)
console.log(`  docs/migrating-from-pusher.md shows this diff: ${guideCurrent ? 'yes' : 'NO (paste: node scripts/migration-budget.mjs --diff)'}`)
if (!guideCurrent) over('the guide does not show the current hook diff')

// ---- files that must not change at all ----
console.log('byte-identical to the legacy files:')
for (const file of IDENTICAL) {
  const a = path.join(LEGACY, file)
  const b = path.join(DEMO, file)
  const same = existsSync(b) && readFileSync(a).equals(readFileSync(b))
  console.log(`  ${same ? 'yes' : 'NO '} ${file}`)
  if (!same) over(`${file} differs from the legacy file`)
}

// ---- no new API route ----
const listFiles = (dir, base = dir) =>
  !existsSync(dir)
    ? []
    : readdirSync(dir).flatMap((name) => {
        const full = path.join(dir, name)
        return statSync(full).isDirectory() ? listFiles(full, base) : [path.relative(base, full)]
      })
const legacyApi = new Set(listFiles(path.join(LEGACY, 'src/app/api')))
const newApi = listFiles(path.join(DEMO, 'src/app/api')).filter((f) => !legacyApi.has(f))
console.log(`new files under src/app/api: ${newApi.length ? newApi.join(', ') : 'none'}`)
if (newApi.length) over(`new API files: ${newApi.join(', ')}`)

// ---- env vars: what the code reads and what .env.example lists ----
const sources = (root) =>
  [...listFiles(path.join(root, 'src')).map((f) => path.join(root, 'src', f)), path.join(root, 'next.config.ts')].filter(
    (f) => existsSync(f) && /\.(ts|tsx|js|mjs)$/.test(f),
  )
const envRead = (root) =>
  new Set(sources(root).flatMap((f) => [...readFileSync(f, 'utf8').matchAll(/process\.env\.([A-Z0-9_]+)/g)].map((m) => m[1])))
const envListed = (root) => {
  const file = path.join(root, '.env.example')
  if (!existsSync(file)) return new Set()
  return new Set([...readFileSync(file, 'utf8').matchAll(/^#?\s*([A-Z][A-Z0-9_]*)=/gm)].map((m) => m[1]))
}
const legacyEnv = new Set([...envRead(LEGACY), ...envListed(LEGACY)])
const demoEnv = new Set([...envRead(DEMO), ...envListed(DEMO)])
const newEnv = [...demoEnv].filter((v) => !legacyEnv.has(v)).sort()
const droppedEnv = [...legacyEnv].filter((v) => !demoEnv.has(v)).sort()
const newSecrets = newEnv.filter((v) => SECRET_NAME.test(v))
console.log(`new env vars: ${newEnv.length ? newEnv.join(', ') : 'none'}`)
console.log(`env vars no longer used: ${droppedEnv.length ? droppedEnv.join(', ') : 'none'}`)
console.log(`new secrets: ${newSecrets.length ? newSecrets.join(', ') : 'none'}`)
if (newSecrets.length) over(`new secret(s): ${newSecrets.join(', ')}`)

// ---- the rest of the app, for the record ----
const legacyAll = new Set(listFiles(LEGACY).filter((f) => !/^(node_modules|\.next)\//.test(f)))
const demoAll = listFiles(DEMO).filter((f) => !/^(node_modules|\.next|e2e)\/|^next-env\.d\.ts$|\.tsbuildinfo$/.test(f))
const changed = demoAll.filter((f) => legacyAll.has(f) && !readFileSync(path.join(LEGACY, f)).equals(readFileSync(path.join(DEMO, f))))
const added_ = demoAll.filter((f) => !legacyAll.has(f))
const gone = [...legacyAll].filter((f) => !existsSync(path.join(DEMO, f)))
console.log(`other files changed: ${changed.filter((f) => f !== HOOK).join(', ') || 'none'}`)
console.log(`files added (besides e2e/): ${added_.join(', ') || 'none'}; removed: ${gone.join(', ') || 'none'}`)

if (failures.length) {
  console.log(`OVER BUDGET:\n${failures.map((f) => `  - ${f}`).join('\n')}`)
  process.exit(1)
}
console.log('within budget')
