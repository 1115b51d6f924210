import { isIP } from 'node:net'
import { z } from 'zod'
import {
  DEFAULT_BODY_IDLE_TIMEOUT_MS,
  DEFAULT_CLIENT_HEADERS_TIMEOUT_MS,
  DEFAULT_CLIENT_REQUEST_TIMEOUT_MS,
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_COOLDOWN_BASE_MS,
  DEFAULT_COOLDOWN_FAILURES,
  DEFAULT_COOLDOWN_MAX_MS,
  DEFAULT_HEADERS_TIMEOUT_MS,
  DEFAULT_HOLD_MEMORY_BYTES,
  DEFAULT_HOST,
  DEFAULT_IDEMPOTENCY_MAX_STORED_BYTES,
  DEFAULT_IDEMPOTENCY_TTL_MS,
  DEFAULT_IDEMPOTENCY_WAIT_MS,
  DEFAULT_IMAGE_ANSWER_BYTES,
  DEFAULT_IMAGE_DIRECTORY,
  DEFAULT_IMAGE_FETCH_BYTES,
  DEFAULT_IMAGE_FETCH_TIMEOUT_MS,
  DEFAULT_IMAGE_LINK_TTL_MS,
  DEFAULT_JSON_BODY_BYTES,
  DEFAULT_JSON_EDIT_BODY_BYTES,
  DEFAULT_KEEP_ALIVE_TIMEOUT_MS,
  DEFAULT_KEY_CACHE_TTL_MS,
  DEFAULT_KEY_NEGATIVE_CACHE_TTL_MS,
  DEFAULT_KEY_STALE_MS,
  DEFAULT_LEASE_MS,
  DEFAULT_MAX_ATTEMPTS,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_MAX_IN_FLIGHT,
  DEFAULT_MAX_RETRY_WAIT_MS,
  DEFAULT_MAX_TOTAL_MS,
  DEFAULT_MULTIPART_BODY_BYTES,
  DEFAULT_PORT,
  DEFAULT_REPLAY_BODY_BYTES,
  DEFAULT_SHUTDOWN_GRACE_MS,
  DEFAULT_UPLOAD_IDLE_MS
} from './defaults.js'
import { priceTableSchema } from '../billing/prices.js'
import { KNOWN_MODEL_NAMES } from '../openai/models.js'

export const PROVIDER_TYPES = ['openai', 'azure', 'sandbox'] as const
/** Provider types that make their own images in this process and take no `baseUrl`. */
export const LOCAL_PROVIDER_TYPES: readonly string[] = ['sandbox']

const positiveInt = z.number().int().positive()
const byteCount = positiveInt

const timeoutsSchema = z
  .object({
    connectMs: positiveInt.default(DEFAULT_CONNECT_TIMEOUT_MS),
    headersMs: positiveInt.default(DEFAULT_HEADERS_TIMEOUT_MS),
    bodyIdleMs: positiveInt.default(DEFAULT_BODY_IDLE_TIMEOUT_MS)
  })
  .strict()

/** An http(s) URL with no query or fragment; an unparsable one is reported once, by .url(). */
const baseUrl = z
  .string()
  .url()
  .refine((u) => !URL.canParse(u) || /^https?:$/.test(new URL(u).protocol), 'must be an http or https URL')
  .refine((u) => !URL.canParse(u) || (new URL(u).search === '' && new URL(u).hash === ''), 'must have no query or fragment')

const headerName = z.string().regex(/^[A-Za-z0-9-]+$/, 'must be a header name (letters, digits, dashes)')
// CR and LF in a configured header value would let config split the upstream request.
const headerValue = z.string().regex(/^[^\r\n]*$/, 'must not contain CR or LF')

const providerSchema = z
  .object({
    id: z.string().regex(/^[A-Za-z0-9_.-]+$/, 'must be letters, digits, "_", "." or "-"'),
    type: z.string(),
    // An unparsable URL is reported once, by .url(); the refinements judge only parsable ones.
    // Required for every type but the local ones (crossCheck says so); a sandbox has no upstream.
    baseUrl: baseUrl.optional(),
    /** Azure's `api-version` query parameter. */
    apiVersion: z.string().regex(/^[A-Za-z0-9.-]+$/, 'must be an API version such as 2025-04-01-preview').optional(),
    // An empty value (an unset `${VAR:-}`) means no key: some local upstreams take none.
    apiKey: z
      .string()
      .optional()
      .transform((key) => (key === '' ? undefined : key)),
    organization: headerValue.optional(),
    project: headerValue.optional(),
    headers: z.record(headerName, headerValue).default({}),
    timeouts: timeoutsSchema.prefault({}),
    maxConnections: positiveInt.default(DEFAULT_MAX_CONNECTIONS),
    /** Images this provider answers with as URLs are fetched once and served from the gateway's own links. */
    rehostUrls: z.boolean().default(false)
  })
  .strict()

const deploymentSchema = z
  .object({
    provider: z.string(),
    /** The name the upstream knows the model by (an Azure deployment's name); defaults to the client-facing name. */
    model: z.string().min(1).optional(),
    /** Share of its priority tier's traffic, relative to the tier's other weights. */
    weight: z.number().positive().default(1),
    /** Tiers are tried lowest first: a tier gets traffic only when every lower one is cooling down or failed. */
    priority: z.number().int().min(0).default(0)
  })
  .strict()

const modelSchema = z
  .object({
    name: z.string().min(1).regex(/^[^\s/]+$/, 'must have no spaces or "/"'),
    deployments: z.array(deploymentSchema).min(1),
    /** Whose request rules to check against, for a name the gateway does not know (an alias). */
    rulesOf: z.string().optional(),
    /**
     * The gateway answers `response_format` itself: base64 images are stored and answered as links,
     * URLs fetched and inlined; a base64-only upstream never sees the field (docs/images.md).
     */
    hostImages: z.boolean().default(false)
  })
  .strict()

const cooldownSchema = z
  .object({
    /** Failures in a row that take a deployment out. */
    failures: positiveInt.default(DEFAULT_COOLDOWN_FAILURES),
    /** The first cooldown; each failed probe after it doubles it, up to maxMs. */
    baseMs: positiveInt.default(DEFAULT_COOLDOWN_BASE_MS),
    maxMs: positiveInt.default(DEFAULT_COOLDOWN_MAX_MS)
  })
  .strict()

const routingSchema = z
  .object({
    /** Deployments tried for one request, the first included. */
    maxAttempts: positiveInt.default(DEFAULT_MAX_ATTEMPTS),
    /** No new attempt starts once the request is this old. */
    maxTotalMs: positiveInt.default(DEFAULT_MAX_TOTAL_MS),
    /** A multipart upload larger than this is not kept for a second attempt (it is not failed over). */
    replayBodyBytes: byteCount.default(DEFAULT_REPLAY_BODY_BYTES),
    /** The longest retry-after waited out when no other deployment is left; longer ones go back to the client. */
    maxRetryWaitMs: z.number().int().min(0).default(DEFAULT_MAX_RETRY_WAIT_MS),
    cooldown: cooldownSchema.prefault({})
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

/** Named ranges fastify's trustProxy (proxy-addr) knows, besides addresses and CIDRs. */
const PROXY_RANGE_NAMES: readonly string[] = ['loopback', 'linklocal', 'uniquelocal']

/** An IP address, a CIDR (`10.0.0.0/8`, `fd00::/8`), or a named range, as proxy-addr compiles them. */
function isProxyAddress(entry: string): boolean {
  if (PROXY_RANGE_NAMES.includes(entry)) return true
  const [address = '', prefix, ...rest] = entry.split('/')
  const family = isIP(address)
  if (family === 0 || rest.length > 0) return false
  return prefix === undefined || (/^[0-9]{1,3}$/.test(prefix) && Number(prefix) <= (family === 4 ? 32 : 128))
}

/**
 * Whose X-Forwarded-For / -Proto / -Host to believe: false (nobody, the default), true (any peer:
 * only behind a proxy that every connection goes through), or the proxies' addresses. A comma
 * separated string (from `${ENV}`) is a list; "true" and "false" are booleans. No hop count:
 * fastify 5 trusts no peer at all when given a number.
 */
const trustProxySchema = z
  .union([z.boolean(), z.string(), z.array(z.string())], {
    error: (issue) =>
      typeof issue.input === 'number'
        ? "a hop count is not supported (fastify 5 would trust no proxy): list the proxies' addresses"
        : 'must be true, false, or a list of proxy addresses (IPs, CIDRs, loopback, linklocal, uniquelocal)'
  })
  .transform((value): boolean | string[] => {
    if (value === 'true' || value === 'false') return value === 'true'
    const list = typeof value === 'string' ? value.split(',') : value
    if (typeof list === 'boolean') return list
    const entries = list.map((entry) => entry.trim()).filter((entry) => entry !== '')
    return entries.length === 0 ? false : entries
  })
  .superRefine((value, ctx) => {
    if (typeof value === 'boolean') return
    for (const entry of value.filter((e) => !isProxyAddress(e))) {
      ctx.addIssue({ code: 'custom', message: `"${entry}" is not an IP address, a CIDR or one of ${PROXY_RANGE_NAMES.join(', ')}` })
    }
  })

const serverSchema = z
  .object({
    host: z.string().min(1).default(DEFAULT_HOST),
    port: z.number().int().min(0).max(65535).default(DEFAULT_PORT),
    logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
    shutdownGraceMs: positiveInt.default(DEFAULT_SHUTDOWN_GRACE_MS),
    /** Node's server.headersTimeout: the first byte of a request (or connection) to the end of its headers. */
    headersTimeoutMs: positiveInt.default(DEFAULT_CLIENT_HEADERS_TIMEOUT_MS),
    /** Node's server.keepAliveTimeout: how long an idle keep-alive connection stays open. */
    keepAliveTimeoutMs: positiveInt.default(DEFAULT_KEEP_ALIVE_TIMEOUT_MS),
    /** Node's server.requestTimeout: a deadline for the whole request, body included; 0 is off. */
    requestTimeoutMs: z.number().int().min(0).default(DEFAULT_CLIENT_REQUEST_TIMEOUT_MS),
    /** Image requests in flight on this instance; past it, 503 server_busy with retry-after. 0 is no cap. */
    maxInFlight: z.number().int().min(0).default(DEFAULT_MAX_IN_FLIGHT),
    trustProxy: trustProxySchema.default(false)
  })
  .strict()
  .superRefine((server, ctx) => {
    // Node swaps the two when the headers timeout is the longer one, silently; refuse that instead.
    if (server.requestTimeoutMs > 0 && server.requestTimeoutMs < server.headersTimeoutMs) {
      ctx.addIssue({ code: 'custom', path: ['requestTimeoutMs'], message: 'must be 0 (off) or at least headersTimeoutMs' })
    }
  })

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

/** Requests with an Idempotency-Key header run once per key, caller and endpoint (docs/routing.md#idempotency). */
const idempotencySchema = z
  .object({
    enabled: z.boolean().default(true),
    /** How long a key's outcome (its stored answer, or the fact that it ran) is kept. */
    ttlMs: positiveInt.default(DEFAULT_IDEMPOTENCY_TTL_MS),
    /** Larger answers are not kept: a repeat gets 409 idempotency_answer_not_stored. 0 keeps none. */
    maxStoredBytes: z.number().int().min(0).default(DEFAULT_IDEMPOTENCY_MAX_STORED_BYTES),
    /** How long a repeat waits for the first request to finish before 409 idempotency_in_progress. */
    waitMs: z.number().int().min(0).default(DEFAULT_IDEMPOTENCY_WAIT_MS)
  })
  .strict()

/** Hosted image links (docs/images.md): where images are kept, for how long, and how links are signed. */
const imagesSchema = z
  .object({
    /** The gateway's URL as clients reach it; links are made under it. Default: http://localhost:{port}. */
    publicBaseUrl: baseUrl.optional(),
    /** Signs links; the same on every instance, so that any instance serves any link. */
    signingSecret: z
      .string()
      .optional()
      .transform((secret) => (secret === '' ? undefined : secret))
      .refine((secret) => secret === undefined || secret.length >= 32, 'must be at least 32 characters'),
    ttlMs: positiveInt.default(DEFAULT_IMAGE_LINK_TTL_MS),
    store: z.enum(['directory', 'redis']).default('directory'),
    directory: z.string().min(1).default(DEFAULT_IMAGE_DIRECTORY),
    maxAnswerBytes: byteCount.default(DEFAULT_IMAGE_ANSWER_BYTES),
    fetchMaxBytes: byteCount.default(DEFAULT_IMAGE_FETCH_BYTES),
    fetchTimeoutMs: positiveInt.default(DEFAULT_IMAGE_FETCH_TIMEOUT_MS)
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
    routing: routingSchema.prefault({}),
    redis: redisSchema.optional(),
    keys: keysSchema.prefault({}),
    idempotency: idempotencySchema.prefault({}),
    admin: adminSchema.prefault({}),
    images: imagesSchema.prefault({}),
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
    if (typeof type === 'string' && !LOCAL_PROVIDER_TYPES.includes(type) && provider.baseUrl === undefined) {
      problems.push({ path: ['providers', i, 'baseUrl'], message: `required for a provider of type "${type}"` })
    }
    if (provider.apiVersion !== undefined && type !== 'azure') {
      problems.push({ path: ['providers', i, 'apiVersion'], message: 'only azure providers take an apiVersion' })
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
  const images = root.images !== null && typeof root.images === 'object' ? (root.images as Record<string, unknown>) : {}
  if (images.store === 'redis') {
    if (root.redis === undefined) problems.push({ path: ['images', 'store'], message: 'the redis store needs the redis section' })
    // A secret made up per process would make links work only on the instance that made them.
    if (images.signingSecret === undefined || images.signingSecret === '') {
      problems.push({ path: ['images', 'signingSecret'], message: 'required with the redis store (every instance must sign alike)' })
    }
  }
  return problems
}

export type Config = z.infer<typeof configSchema>
export type ProviderConfig = Config['providers'][number]
export type ModelConfig = Config['models'][number]
export type RoutingConfig = Config['routing']
