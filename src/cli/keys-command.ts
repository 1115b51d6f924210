import { parseArgs, type ParseArgsConfig } from 'node:util'
import { GatewayError } from '../errors/catalogue.js'
import { compareByCreation, keyView, parseKeyInput, parseUsageDays, usageView, type KeyView } from '../keys/key-view.js'
import { StoreUnavailableError, type KeyRecord, type KeyStore } from '../keys/types.js'

export interface KeysCommandOutput {
  log(line: string): void
  error(line: string): void
}

export const KEYS_USAGE = `usage: image-gateway keys <subcommand> [options]
  create --name NAME [--models a,b] [--rpm N] [--images-per-minute N] [--concurrency N]
         [--budget-usd X] [--expires ISO] [--json]
                          make a key and print it (the only time it is shown)
  list [--json]           every key, without the keys themselves
  show ID [--json]        one key
  update ID [create's options] [--disable | --enable] [--no-expiry] [--no-budget] [--json]
                          change a key; --rpm, --images-per-minute, --concurrency take "none"
                          (no limit)
  revoke ID [--json]      revoke a key for good (its usage is kept)
  usage ID [--days N] [--json]
                          usage per UTC day, the last N days (1..366, default 30)`

const EXIT_OK = 0
const EXIT_FAILED = 1
const EXIT_USAGE = 2

type Options = NonNullable<ParseArgsConfig['options']>

const JSON_FLAG: Options = { json: { type: 'boolean' } }

const FIELD_FLAGS: Options = {
  name: { type: 'string' },
  models: { type: 'string' },
  rpm: { type: 'string' },
  'images-per-minute': { type: 'string' },
  concurrency: { type: 'string' },
  'budget-usd': { type: 'string' },
  expires: { type: 'string' }
}

const UPDATE_FLAGS: Options = {
  ...FIELD_FLAGS,
  disable: { type: 'boolean' },
  enable: { type: 'boolean' },
  'no-expiry': { type: 'boolean' },
  'no-budget': { type: 'boolean' }
}

interface Subcommand {
  /** Whether it takes a key id. */
  id: boolean
  options: Options
}

const SUBCOMMANDS: Record<string, Subcommand> = {
  create: { id: false, options: { ...FIELD_FLAGS, ...JSON_FLAG } },
  list: { id: false, options: JSON_FLAG },
  show: { id: true, options: JSON_FLAG },
  update: { id: true, options: { ...UPDATE_FLAGS, ...JSON_FLAG } },
  revoke: { id: true, options: JSON_FLAG },
  usage: { id: true, options: { days: { type: 'string' }, ...JSON_FLAG } }
}

/** The flag that carries each admin API field, to name it in errors. */
const FLAG_OF: Record<string, string> = {
  name: '--name',
  models: '--models',
  rpm: '--rpm',
  images_per_minute: '--images-per-minute',
  concurrency: '--concurrency',
  budget_usd: '--budget-usd',
  expires_at: '--expires',
  days: '--days'
}

type Values = Record<string, string | boolean | (string | boolean)[] | undefined>

/** A command-line mistake: printed with the usage hint, exit 2. */
class UsageError extends Error {}

/** A flag's text as the admin API's JSON would carry it, so parseKeyInput judges both alike. */
function numberOrText(text: string): number | string {
  // Only plain decimals become numbers: Number('') is 0 and Number('0x10') is 16.
  return /^-?[0-9]+(\.[0-9]+)?$/.test(text) ? Number(text) : text
}

function limitValue(text: string): number | string | null {
  return text === 'none' ? null : numberOrText(text)
}

function str(values: Values, name: string): string | undefined {
  const value = values[name]
  return typeof value === 'string' ? value : undefined
}

/** The flags as an admin API body (snake_case, budget in USD). */
function bodyFromFlags(values: Values): Record<string, unknown> {
  const body: Record<string, unknown> = {}
  const name = str(values, 'name')
  const models = str(values, 'models')
  const rpm = str(values, 'rpm')
  const imagesPerMinute = str(values, 'images-per-minute')
  const concurrency = str(values, 'concurrency')
  const budget = str(values, 'budget-usd')
  const expires = str(values, 'expires')
  if (values.disable === true && values.enable === true) throw new UsageError('--disable and --enable contradict each other')
  if (values['no-budget'] === true && budget !== undefined) throw new UsageError('--budget-usd and --no-budget contradict each other')
  if (values['no-expiry'] === true && expires !== undefined) throw new UsageError('--expires and --no-expiry contradict each other')
  if (name !== undefined) body.name = name
  if (models !== undefined) body.models = models.split(',').map((model) => model.trim())
  if (rpm !== undefined) body.rpm = limitValue(rpm)
  if (imagesPerMinute !== undefined) body.images_per_minute = limitValue(imagesPerMinute)
  if (concurrency !== undefined) body.concurrency = limitValue(concurrency)
  if (budget !== undefined) body.budget_usd = numberOrText(budget)
  if (values['no-budget'] === true) body.budget_usd = null
  if (expires !== undefined) body.expires_at = expires
  if (values['no-expiry'] === true) body.expires_at = null
  if (values.disable === true) body.disabled = true
  if (values.enable === true) body.disabled = false
  return body
}

/** A validation error in the CLI's terms: the flag and what it was given, then what it takes. */
function flagError(err: GatewayError, values: Values): string {
  const flag = err.param === null ? undefined : FLAG_OF[err.param]
  if (flag === undefined) return err.message
  if (err.code === 'missing_required_parameter') return `${flag} is required`
  const given = values[flag.slice(2)]
  // "or null" is the JSON spelling; the CLI has "none" and the --no-* flags for it instead.
  const what = err.message.replace(/^Invalid (?:type|value) for '[^']*': /, '').replace(/,? or null\.$/, '.')
  return typeof given === 'string' ? `invalid ${flag} ${JSON.stringify(given)}: ${what}` : `invalid ${flag}: ${what}`
}

function usd(amount: number): string {
  // Cents at least, micro-dollars at most: image prices are often fractions of a cent.
  const fixed = amount.toFixed(6).replace(/0{1,4}$/, '')
  return `$${fixed}`
}

function status(view: KeyView, nowMs: number): string {
  if (view.revoked_at !== null) return 'revoked'
  if (view.expires_at !== null && Date.parse(view.expires_at) <= nowMs) return 'expired'
  return view.disabled ? 'disabled' : 'active'
}

function limit(value: number | null): string {
  return value === null ? 'no limit' : String(value)
}

function describe(view: KeyView, nowMs: number): string[] {
  const metadata = Object.entries(view.metadata).map(([key, value]) => `${key}=${value}`)
  return [
    `id:                ${view.id}`,
    `name:              ${view.name}`,
    `prefix:            ${view.prefix}`,
    `status:            ${status(view, nowMs)}`,
    `models:            ${view.models.join(', ')}`,
    `rpm:               ${limit(view.rpm)}`,
    `images per minute: ${limit(view.images_per_minute)}`,
    `concurrency:       ${limit(view.concurrency)}`,
    `budget:            ${view.budget_usd === null ? 'no limit' : usd(view.budget_usd)}`,
    `spent:             ${usd(view.spent_usd)}`,
    `expires:           ${view.expires_at ?? 'never'}`,
    `created:           ${view.created_at}`,
    ...(view.revoked_at === null ? [] : [`revoked:           ${view.revoked_at}`]),
    ...(metadata.length === 0 ? [] : [`metadata:          ${metadata.join(', ')}`])
  ]
}

function table(rows: string[][]): string[] {
  const widths: number[] = []
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)))
  return rows.map((row) =>
    row
      .map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd()
  )
}

async function view(store: KeyStore, record: KeyRecord): Promise<KeyView> {
  return keyView(record, await store.spentMicroUsd(record.id))
}

/**
 * `image-gateway keys ...` on a key store; returns the exit code. Validation is parseKeyInput's,
 * so the CLI and the admin API take the same values. A key is printed by `create` only.
 */
export async function runKeysCommand(args: string[], store: KeyStore, out: KeysCommandOutput): Promise<number> {
  const [name, ...rest] = args
  if (name === 'help' || name === '--help' || name === '-h') {
    out.log(KEYS_USAGE)
    return EXIT_OK
  }
  // hasOwn: 'constructor' and friends are not subcommands.
  const subcommand = name !== undefined && Object.hasOwn(SUBCOMMANDS, name) ? SUBCOMMANDS[name] : undefined
  if (name === undefined || subcommand === undefined) {
    if (name !== undefined) out.error(`error: unknown subcommand '${name}'`)
    out.error(KEYS_USAGE)
    return EXIT_USAGE
  }

  let values: Values = {}
  try {
    const parsed = parseArgs({ args: rest, options: subcommand.options, strict: true, allowPositionals: true })
    values = parsed.values
    const positionals = parsed.positionals
    const wanted = subcommand.id ? 1 : 0
    if (positionals.length !== wanted) {
      throw new UsageError(subcommand.id ? `${name} takes one key id` : `${name} takes no arguments (got '${positionals.join(' ')}')`)
    }
    return await run(name, positionals[0] ?? '', values, store, out)
  } catch (err) {
    if (err instanceof GatewayError && err.code === 'key_not_found') {
      out.error(`error: ${err.message}`)
      return EXIT_FAILED
    }
    if (err instanceof StoreUnavailableError) {
      out.error(`error: ${err.message}`)
      return EXIT_FAILED
    }
    // parseArgs reports unknown flags and missing values as TypeErrors with ERR_PARSE_ARGS_* codes.
    const parseError = err instanceof TypeError && String((err as NodeJS.ErrnoException).code).startsWith('ERR_PARSE_ARGS')
    if (err instanceof UsageError || err instanceof GatewayError || parseError) {
      out.error(`error: ${err instanceof GatewayError ? flagError(err, values) : (err as Error).message}`)
      out.error(`run 'image-gateway keys help' for usage`)
      return EXIT_USAGE
    }
    throw err
  }
}

async function run(name: string, id: string, values: Values, store: KeyStore, out: KeysCommandOutput): Promise<number> {
  const json = values.json === true
  const nowMs = Date.now()
  const notFound = (): GatewayError => new GatewayError('key_not_found', `no key with id '${id}'`)

  switch (name) {
    case 'create': {
      const input = parseKeyInput(bodyFromFlags(values), 'create')
      const { record, key } = await store.create(input)
      const created = keyView(record, 0)
      if (json) {
        // id and key first: what a script reading this object came for.
        const { id: createdId, ...fields } = created
        out.log(JSON.stringify({ id: createdId, key, ...fields }))
      } else {
        out.log(`Created key ${created.id} (${created.name}).`)
        out.log(`key: ${key}`)
        out.log('Store this key now: it will not be shown again.')
      }
      return EXIT_OK
    }
    case 'list': {
      const records = (await store.list()).sort(compareByCreation)
      const views = await Promise.all(records.map((record) => view(store, record)))
      if (json) {
        out.log(JSON.stringify({ object: 'list', data: views }))
      } else if (views.length === 0) {
        out.log('No keys.')
      } else {
        const rows = views.map((v) => [
          v.id,
          v.prefix,
          status(v, nowMs),
          `${usd(v.spent_usd)}${v.budget_usd === null ? '' : ` / ${usd(v.budget_usd)}`}`,
          v.models.join(','),
          v.name
        ])
        for (const line of table([['ID', 'PREFIX', 'STATUS', 'SPENT', 'MODELS', 'NAME'], ...rows])) out.log(line)
      }
      return EXIT_OK
    }
    case 'show':
    case 'update':
    case 'revoke': {
      let record: KeyRecord | null
      if (name === 'show') {
        record = await store.get(id)
      } else if (name === 'revoke') {
        record = await store.revoke(id)
      } else {
        const patch = parseKeyInput(bodyFromFlags(values), 'update')
        if (Object.keys(patch).length === 0) throw new UsageError('update: nothing to change (give at least one option)')
        record = await store.update(id, patch)
      }
      if (record === null) throw notFound()
      const shown = await view(store, record)
      if (json) {
        out.log(JSON.stringify(shown))
      } else {
        if (name === 'update') out.log(`Updated key ${shown.id}.`)
        if (name === 'revoke') out.log(`Revoked key ${shown.id}.`)
        for (const line of describe(shown, nowMs)) out.log(line)
      }
      return EXIT_OK
    }
    case 'usage': {
      const days = parseUsageDays(str(values, 'days'))
      const record = await store.get(id)
      if (record === null) throw notFound()
      const usage = { key_id: record.id, ...usageView(await store.usage(record.id, days, nowMs)) }
      if (json) {
        out.log(JSON.stringify(usage))
        return EXIT_OK
      }
      out.log(`Usage of ${record.id} (${record.name}), the last ${days} days (UTC):`)
      // Days with no requests are left out: a year of zero rows says less than "no usage".
      const used = usage.data.filter((day) => day.requests > 0)
      if (used.length === 0) {
        out.log('No usage.')
        return EXIT_OK
      }
      const row = (label: string, u: (typeof usage)['total']): string[] => [
        label,
        String(u.requests),
        String(u.images),
        String(u.input_tokens),
        String(u.output_tokens),
        usd(u.cost_usd)
      ]
      const lines = table([
        ['DAY', 'REQUESTS', 'IMAGES', 'INPUT TOKENS', 'OUTPUT TOKENS', 'COST'],
        ...used.map((day) => row(day.day, day)),
        row('total', usage.total)
      ])
      for (const line of lines) out.log(line)
      return EXIT_OK
    }
    default:
      throw new UsageError(`unknown subcommand '${name}'`)
  }
}
