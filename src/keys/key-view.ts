import { z } from 'zod'
import { GatewayError, type ErrorCode } from '../errors/catalogue.js'
import type { DayUsage, KeyPatch, KeyRecord, NewKey } from './types.js'

const MICRO_PER_USD = 1_000_000

/** What the admin API and the CLI show of a key: never its digest, never the key itself. */
export interface KeyView {
  id: string
  name: string
  prefix: string
  models: string[]
  rpm: number | null
  images_per_minute: number | null
  concurrency: number | null
  budget_usd: number | null
  spent_usd: number
  expires_at: string | null
  disabled: boolean
  created_at: string
  revoked_at: string | null
  metadata: Record<string, string>
}

export interface UsageDayView {
  /** YYYY-MM-DD, UTC. */
  day: string
  requests: number
  images: number
  input_tokens: number
  output_tokens: number
  cost_usd: number
}

export interface UsageView {
  object: 'list'
  /** One entry per UTC day, in the store's order (today first). */
  data: UsageDayView[]
  total: Omit<UsageDayView, 'day'>
}

function usd(microUsd: number): number {
  return microUsd / MICRO_PER_USD
}

export function keyView(record: KeyRecord, spentMicroUsd: number): KeyView {
  // Field by field, never a spread: a field added to KeyRecord later (or the digest) must not leak.
  return {
    id: record.id,
    name: record.name,
    prefix: record.prefix,
    models: [...record.models],
    rpm: record.rpm,
    images_per_minute: record.imagesPerMinute,
    concurrency: record.concurrency,
    budget_usd: record.budgetMicroUsd === null ? null : usd(record.budgetMicroUsd),
    spent_usd: usd(spentMicroUsd),
    expires_at: record.expiresAt,
    disabled: record.disabled,
    created_at: record.createdAt,
    revoked_at: record.revokedAt,
    metadata: { ...record.metadata }
  }
}

export function usageView(days: DayUsage[]): UsageView {
  const total = { requests: 0, images: 0, inputTokens: 0, outputTokens: 0, costMicroUsd: 0 }
  for (const day of days) {
    total.requests += day.requests
    total.images += day.images
    total.inputTokens += day.inputTokens
    total.outputTokens += day.outputTokens
    // Summed in micro-USD (integers) and converted once, so the total has no float drift.
    total.costMicroUsd += day.costMicroUsd
  }
  return {
    object: 'list',
    data: days.map((day) => ({
      day: day.day,
      requests: day.requests,
      images: day.images,
      input_tokens: day.inputTokens,
      output_tokens: day.outputTokens,
      cost_usd: usd(day.costMicroUsd)
    })),
    total: {
      requests: total.requests,
      images: total.images,
      input_tokens: total.inputTokens,
      output_tokens: total.outputTokens,
      cost_usd: usd(total.costMicroUsd)
    }
  }
}

/** Oldest first, then by id: the store's own order is unspecified (Redis sets have none). */
export function compareByCreation(a: KeyRecord, b: KeyRecord): number {
  if (a.createdAt !== b.createdAt) return a.createdAt < b.createdAt ? -1 : 1
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0
}

export const MAX_USAGE_DAYS = 366
export const DEFAULT_USAGE_DAYS = 30

/** `days` of a usage query (HTTP query string or CLI flag): an integer 1..366, 30 when absent. */
export function parseUsageDays(value: string | undefined): number {
  if (value === undefined) return DEFAULT_USAGE_DAYS
  const days = /^[0-9]{1,4}$/.test(value) ? Number(value) : Number.NaN
  if (!(days >= 1 && days <= MAX_USAGE_DAYS)) {
    throw new GatewayError('invalid_value', `Invalid value for 'days': expected an integer from 1 to ${MAX_USAGE_DAYS}.`, {
      param: 'days'
    })
  }
  return days
}

// The largest budget whose micro-USD amount is still an exact integer in a double (and in Redis).
const MAX_BUDGET_USD = Math.floor(Number.MAX_SAFE_INTEGER / MICRO_PER_USD)

const limit = z.number().int().positive().nullable()

const FIELDS = {
  name: z
    .string()
    .min(1)
    .max(200)
    // Names are printed on terminals and in logs, where control characters could rewrite lines.
    .regex(/^\P{Cc}*$/u),
  models: z
    .array(z.string().regex(/^\S+$/))
    // A key that may use no model could do nothing; disabling it says so plainly.
    .min(1),
  rpm: limit,
  images_per_minute: limit,
  concurrency: limit,
  budget_usd: z.number().min(0).max(MAX_BUDGET_USD).nullable(),
  // Only with Z or an offset: a local time would mean a different instant on each server.
  expires_at: z.iso.datetime({ offset: true }).nullable(),
  metadata: z.record(z.string().min(1), z.string()),
  disabled: z.boolean()
} as const

type Field = keyof typeof FIELDS

/** What each field takes, for error messages (the same words on HTTP and in the CLI). */
const EXPECTED: Record<Field, string> = {
  name: 'a string of 1 to 200 characters with no control characters',
  models: 'a non-empty array of model names or `*` patterns (non-empty strings without spaces)',
  rpm: 'a positive integer or null',
  images_per_minute: 'a positive integer or null',
  concurrency: 'a positive integer or null',
  budget_usd: `a number of USD from 0 to ${MAX_BUDGET_USD}, or null`,
  expires_at: 'an ISO 8601 date-time with Z or an offset (2030-01-01T00:00:00Z), or null',
  metadata: 'an object of non-empty string keys to string values',
  disabled: 'a boolean'
}

const createSchema = z.strictObject({
  name: FIELDS.name,
  models: FIELDS.models.optional(),
  rpm: FIELDS.rpm.optional(),
  images_per_minute: FIELDS.images_per_minute.optional(),
  concurrency: FIELDS.concurrency.optional(),
  budget_usd: FIELDS.budget_usd.optional(),
  expires_at: FIELDS.expires_at.optional(),
  metadata: FIELDS.metadata.optional()
})

// Everything optional, and `disabled` too: a new key always starts enabled.
const updateSchema = z.strictObject({
  name: FIELDS.name.optional(),
  models: FIELDS.models.optional(),
  rpm: FIELDS.rpm.optional(),
  images_per_minute: FIELDS.images_per_minute.optional(),
  concurrency: FIELDS.concurrency.optional(),
  budget_usd: FIELDS.budget_usd.optional(),
  expires_at: FIELDS.expires_at.optional(),
  metadata: FIELDS.metadata.optional(),
  disabled: FIELDS.disabled.optional()
})

function isField(name: string): name is Field {
  return Object.hasOwn(FIELDS, name)
}

/** The first zod issue, in the catalogue's terms, with `param` naming the top-level field. */
function toGatewayError(issue: z.core.$ZodIssue, body: Record<string, unknown>): GatewayError {
  if (issue.code === 'unrecognized_keys') {
    const key = issue.keys[0] ?? ''
    return new GatewayError('invalid_value', `Unknown parameter: '${key}'.`, { param: key })
  }
  const field = String(issue.path[0] ?? '')
  if (!Object.hasOwn(body, field) || body[field] === undefined) {
    return new GatewayError('missing_required_parameter', `Missing required parameter: '${field}'.`, { param: field })
  }
  const expected = isField(field) ? EXPECTED[field] : 'another value'
  // zod calls 1.5 a wrong *type* for an integer field; to a caller it is a number with a wrong value.
  const actual = valueAt(body, issue.path)
  const numeric = issue.code === 'invalid_type' && (issue.expected === 'number' || issue.expected === 'int')
  const wrongType = issue.code === 'invalid_type' && !(numeric && typeof actual === 'number')
  const code: ErrorCode = wrongType ? 'invalid_type' : 'invalid_value'
  const what = code === 'invalid_type' ? 'Invalid type' : 'Invalid value'
  return new GatewayError(code, `${what} for '${field}': expected ${expected}.`, { param: field })
}

function valueAt(body: Record<string, unknown>, path: readonly PropertyKey[]): unknown {
  let value: unknown = body
  for (const key of path) {
    if (value === null || typeof value !== 'object' || typeof key === 'symbol') return undefined
    value = (value as Record<string, unknown>)[key]
  }
  return value
}

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
}

/** USD (as people write it) to integer micro-USD (as the store counts it). */
function microUsd(usdAmount: number | null): number | null {
  return usdAmount === null ? null : Math.round(usdAmount * MICRO_PER_USD)
}

/** Normalised to UTC `toISOString()`, so stored and shown expiries all look alike. */
function instant(iso: string | null): string | null {
  return iso === null ? null : new Date(iso).toISOString()
}

/**
 * Validates a key's fields as the admin API takes them (snake_case, budget in USD) and returns
 * them as the store takes them. Only the fields present are in the result: an update must not
 * reset what it does not mention.
 */
export function parseKeyInput(body: unknown, mode: 'create'): NewKey
export function parseKeyInput(body: unknown, mode: 'update'): KeyPatch
export function parseKeyInput(body: unknown, mode: 'create' | 'update'): NewKey | KeyPatch
export function parseKeyInput(body: unknown, mode: 'create' | 'update'): NewKey | KeyPatch {
  if (!isObject(body)) throw new GatewayError('invalid_type', 'The request body must be a JSON object.')
  const result = (mode === 'create' ? createSchema : updateSchema).safeParse(body)
  if (!result.success) {
    const issue = result.error.issues[0]
    throw issue === undefined ? new GatewayError('invalid_value', 'Invalid key fields.') : toGatewayError(issue, body)
  }
  const input: z.infer<typeof updateSchema> = result.data
  const out: KeyPatch = {}
  if (input.name !== undefined) out.name = input.name
  if (input.models !== undefined) out.models = input.models
  if (input.rpm !== undefined) out.rpm = input.rpm
  if (input.images_per_minute !== undefined) out.imagesPerMinute = input.images_per_minute
  if (input.concurrency !== undefined) out.concurrency = input.concurrency
  if (input.budget_usd !== undefined) out.budgetMicroUsd = microUsd(input.budget_usd)
  if (input.expires_at !== undefined) out.expiresAt = instant(input.expires_at)
  if (input.metadata !== undefined) out.metadata = input.metadata
  if (input.disabled !== undefined) out.disabled = input.disabled
  if (mode === 'update') return out
  // createSchema required a name; the check narrows the type without a cast.
  if (out.name === undefined) throw new GatewayError('missing_required_parameter', "Missing required parameter: 'name'.", { param: 'name' })
  return { ...out, name: out.name }
}
