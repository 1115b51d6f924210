import { z } from 'zod'
import {
  DEFAULT_BODY_IDLE_TIMEOUT_MS,
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_HEADERS_TIMEOUT_MS,
  DEFAULT_HOLD_MEMORY_BYTES,
  DEFAULT_HOST,
  DEFAULT_JSON_BODY_BYTES,
  DEFAULT_JSON_EDIT_BODY_BYTES,
  DEFAULT_KEY_CACHE_TTL_MS,
  DEFAULT_KEY_NEGATIVE_CACHE_TTL_MS,
  DEFAULT_KEY_STALE_MS,
  DEFAULT_LEASE_MS,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_MULTIPART_BODY_BYTES,
  DEFAULT_PORT,
  DEFAULT_SHUTDOWN_GRACE_MS,
  DEFAULT_UPLOAD_IDLE_MS
} from './defaults.js'
import { priceTableSchema } from '../billing/prices.js'
import { KNOWN_MODEL_NAMES } from '../openai/models.js'

export const PROVIDER_TYPES = ['openai'] as const

const positiveInt = z.number().int().positive()
const byteCount = positiveInt

const timeoutsSchema = z
  .object({
    connectMs: positiveInt.default(DEFAULT_CONNECT_TIMEOUT_MS),
    headersMs: positiveInt.default(DEFAULT_HEADERS_TIMEOUT_MS),
    bodyIdleMs: positiveInt.default(DEFAULT_BODY_IDLE_TIMEOUT_MS)
  })
  .strict()

const headerName = z.string().regex(/^[A-Za-z0-9-]+$/, 'must be a header name (letters, digits, dashes)')
// CR and LF in a configured header value would let config split the upstream request.
const headerValue = z.string().regex(/^[^\r\n]*$/, 'must not contain CR or LF')

const providerSchema = z
  .object({
    id: z.string().regex(/^[A-Za-z0-9_.-]+$/, 'must be letters, digits, "_", "." or "-"'),
    type: z.string(),
    // An unparsable URL is reported once, by .url(); the refinements judge only parsable ones.
    baseUrl: z
      .string()
      .url()
      .refine((u) => !URL.canParse(u) || /^https?:$/.test(new URL(u).protocol), 'must be an http or https URL')
      .refine((u) => !URL.canParse(u) || (new URL(u).search === '' && new URL(u).hash === ''), 'must have no query or fragment'),
    // An empty value (an unset `${VAR:-}`) means no key: some local upstreams take none.
    apiKey: z
      .string()
      .optional()
      .transform((key) => (key === '' ? undefined : key)),
    organization: headerValue.optional(),
    project: headerValue.optional(),
    headers: z.record(headerName, headerValue).default({}),
    timeouts: timeoutsSchema.prefault({}),
    maxConnections: positiveInt.default(DEFAULT_MAX_CONNECTIONS)
  })
  .strict()

const deploymentSchema = z
  .object({
    provider: z.string(),
    /** The name the upstream knows the model by; defaults to the client-facing name. */
    model: z.string().min(1).optional()
  })
  .strict()

const modelSchema = z
  .object({
    name: z.string().min(1).regex(/^[^\s/]+$/, 'must have no spaces or "/"'),
    deployments: z.array(deploymentSchema).min(1),
    /** Whose request rules to check against, for a name the gateway does not know (an alias). */
    rulesOf: z.string().optional()
  })
  .strict()

const limitsSchema = z
  .object({
    jsonBodyBytes: byteCount.default(DEFAULT_JSON_BODY_BYTES),
    jsonEditBodyBytes: byteCount.default(DEFAULT_JSON_EDIT_BODY_BYTES),
    multipartBodyBytes: byteCount.default(DEFAULT_MULTIPART_BODY_BYTES),
    holdMemoryBytes: byteCount.default(DEFAULT_HOLD_MEMORY_BYTES),
    uploadIdleMs: positiveInt.default(DEFAULT_UPLOAD_IDLE_MS)
  })
  .strict()

const serverSchema = z
  .object({
    host: z.string().min(1).default(DEFAULT_HOST),
    port: z.number().int().min(0).max(65535).default(DEFAULT_PORT),
    logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
    shutdownGraceMs: positiveInt.default(DEFAULT_SHUTDOWN_GRACE_MS)
  })
  .strict()

const redisNode = z.object({ host: z.string().min(1), port: z.number().int().min(1).max(65535) }).strict()

/** One of: a server by URL, a Sentinel-managed primary, or a Redis Cluster. */
const redisSchema = z
  .object({
    url: z.string().regex(/^rediss?:\/\//, 'must be a redis:// or rediss:// URL').optional(),
    sentinels: z.array(redisNode).min(1).optional(),
    /** The primary's name as the sentinels know it. */
    sentinelName: z.string().min(1).optional(),
    cluster: z.array(redisNode).min(1).optional(),
    username: z.string().min(1).optional(),
    password: z.string().min(1).optional(),
    /** Prefix of every Redis key the gateway writes, so several gateways can share one Redis. */
    keyPrefix: z.string().min(1).default('igw:')
  })
  .strict()
  .superRefine((redis, ctx) => {
    const given = [redis.url, redis.sentinels, redis.cluster].filter((v) => v !== undefined).length
    if (given !== 1) {
      ctx.addIssue({ code: 'custom', message: 'give exactly one of url, sentinels (with sentinelName) or cluster' })
    }
    if (redis.sentinels !== undefined && redis.sentinelName === undefined) {
      ctx.addIssue({ code: 'custom', path: ['sentinelName'], message: 'required with sentinels' })
    }
    if (redis.url !== undefined && (redis.username !== undefined || redis.password !== undefined)) {
      ctx.addIssue({ code: 'custom', path: ['password'], message: 'with url, put the credentials in the URL' })
    }
  })

const keysSchema = z
  .object({
    cacheTtlMs: positiveInt.default(DEFAULT_KEY_CACHE_TTL_MS),
    negativeCacheTtlMs: positiveInt.default(DEFAULT_KEY_NEGATIVE_CACHE_TTL_MS),
    staleMs: z.number().int().min(0).default(DEFAULT_KEY_STALE_MS),
    leaseMs: positiveInt.default(DEFAULT_LEASE_MS)
  })
  .strict()

const adminSchema = z
  .object({
    /** Bearer token for /admin/*; none means the admin API is off. */
    token: z
      .string()
      .optional()
      .transform((token) => (token === '' ? undefined : token))
      .refine((token) => token === undefined || token.length >= 16, 'must be at least 16 characters')
  })
  .strict()

export const configSchema = z
  .object({
    server: serverSchema.prefault({}),
    limits: limitsSchema.prefault({}),
    redis: redisSchema.optional(),
    keys: keysSchema.prefault({}),
    admin: adminSchema.prefault({}),
    /** Prices per model (USD), over the shipped defaults (docs/prices.md). */
    prices: priceTableSchema.optional(),
    providers: z.array(providerSchema).min(1),
    models: z.array(modelSchema).min(1)
  })
  .strict()

type Problem = { path: (string | number)[]; message: string }

function records(value: unknown): Record<string, unknown>[] {
  return Array.isArray(value) ? value.map((item) => (item !== null && typeof item === 'object' ? item : {})) : []
}

/**
 * Checks across entries (unique ids, references to providers and known models). They read the
 * document tolerantly and run whatever the schema found, so a type error elsewhere does not hide
 * them: an operator sees every problem of a file at once.
 */
export function crossCheck(document: unknown): Problem[] {
  const problems: Problem[] = []
  const root = document !== null && typeof document === 'object' ? (document as Record<string, unknown>) : {}
  const providerIds = new Set<string>()
  records(root.providers).forEach((provider, i) => {
    const id = provider.id
    if (typeof id === 'string') {
      if (providerIds.has(id)) problems.push({ path: ['providers', i, 'id'], message: `duplicate provider id "${id}"` })
      providerIds.add(id)
    }
    const type = provider.type
    if (typeof type === 'string' && !(PROVIDER_TYPES as readonly string[]).includes(type)) {
      problems.push({
        path: ['providers', i, 'type'],
        message: `unknown provider type "${type}" (known: ${PROVIDER_TYPES.join(', ')})`
      })
    }
  })
  const modelNames = new Set<string>()
  records(root.models).forEach((model, i) => {
    const name = model.name
    if (typeof name === 'string') {
      if (modelNames.has(name)) problems.push({ path: ['models', i, 'name'], message: `duplicate model name "${name}"` })
      modelNames.add(name)
    }
    const rulesOf = model.rulesOf
    if (typeof rulesOf === 'string' && !KNOWN_MODEL_NAMES.includes(rulesOf)) {
      problems.push({
        path: ['models', i, 'rulesOf'],
        message: `unknown model "${rulesOf}" (known: ${KNOWN_MODEL_NAMES.join(', ')})`
      })
    }
    records(model.deployments).forEach((deployment, j) => {
      const provider = deployment.provider
      if (typeof provider === 'string' && !providerIds.has(provider)) {
        problems.push({ path: ['models', i, 'deployments', j, 'provider'], message: `unknown provider "${provider}"` })
      }
    })
  })
  return problems
}

export type Config = z.infer<typeof configSchema>
export type ProviderConfig = Config['providers'][number]
export type ModelConfig = Config['models'][number]
