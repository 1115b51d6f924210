import type { RedisClient } from '../redis/client.js'
import { z } from 'zod'
import { newKey, newRecord } from './key-material.js'
import {
  type Admission,
  type AdmitResult,
  type DayUsage,
  type KeyPatch,
  type KeyRecord,
  type KeyStore,
  type NewKey,
  type UsageDelta
} from './types.js'
import { storeCall } from './store-call.js'

const MINUTE_MS = 60_000
const DAY_MS = 86_400_000
/** Usage is kept a little over a year, so a year-on-year report still has its first day. */
const USAGE_TTL_MS = 400 * DAY_MS
/**
 * How long a settled ticket is remembered. Double settles come from the same request's end
 * handlers within moments; an hour is far past that and bounds the memory one marker per
 * request costs.
 */
const SETTLED_TTL_MS = 60 * MINUTE_MS
/** Slots and reservations outlive their last lease by this much, then Redis drops the keys. */
const LEASE_KEY_GRACE_MS = MINUTE_MS

const RECORD_FIELDS = [
  'id',
  'name',
  'prefix',
  'digest',
  'models',
  'rpm',
  'imagesPerMinute',
  'concurrency',
  'budgetMicroUsd',
  'expiresAt',
  'disabled',
  'createdAt',
  'revokedAt',
  'metadata'
] as const satisfies readonly (keyof KeyRecord)[]

const PATCHABLE_FIELDS: ReadonlySet<string> = new Set<keyof KeyPatch>([
  'name',
  'models',
  'rpm',
  'imagesPerMinute',
  'concurrency',
  'budgetMicroUsd',
  'expiresAt',
  'disabled',
  'metadata'
])

const recordSchema: z.ZodType<KeyRecord> = z.object({
  id: z.string(),
  name: z.string(),
  prefix: z.string(),
  digest: z.string(),
  models: z.array(z.string()),
  rpm: z.number().nullable(),
  imagesPerMinute: z.number().nullable(),
  concurrency: z.number().nullable(),
  budgetMicroUsd: z.number().nullable(),
  expiresAt: z.string().nullable(),
  disabled: z.boolean(),
  createdAt: z.string(),
  revokedAt: z.string().nullable(),
  metadata: z.record(z.string(), z.string())
})

/*
 * Lapsed leases (a crashed instance never settled) are dropped first, with their reservations,
 * so that they can neither hold a slot nor hold budget. Null limits arrive as -1. Everything is
 * checked before anything is taken, so a refusal changes nothing but the lapsed leases.
 */
const ADMIT_LUA = `
local ticket = ARGV[1]
local images = tonumber(ARGV[2])
local imagesLimit = tonumber(ARGV[3])
local concurrencyLimit = tonumber(ARGV[4])
local reserve = tonumber(ARGV[5])
local budget = tonumber(ARGV[6])
local leaseMs = tonumber(ARGV[7])
local now = tonumber(ARGV[8])
local windowEnd = tonumber(ARGV[9])
local grace = tonumber(ARGV[10])

local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, t in ipairs(lapsed) do
  redis.call('HDEL', KEYS[3], t)
end
if #lapsed > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end

local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if imagesLimit >= 0 and used + images > imagesLimit then
  return {'images', windowEnd - now, imagesLimit, math.max(imagesLimit - used, 0)}
end

local live = redis.call('ZCARD', KEYS[2])
if concurrencyLimit >= 0 and live >= concurrencyLimit then
  return {'concurrency', -1, concurrencyLimit, math.max(concurrencyLimit - live, 0)}
end

if budget >= 0 then
  local committed = tonumber(redis.call('GET', KEYS[4]) or '0')
  for _, amount in ipairs(redis.call('HVALS', KEYS[3])) do
    committed = committed + tonumber(amount)
  end
  if committed + reserve > budget then
    return {'budget', -1, budget, math.max(budget - committed, 0)}
  end
end

redis.call('ZADD', KEYS[2], now + leaseMs, ticket)
redis.call('HSET', KEYS[3], ticket, ARGV[5])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
local leaseTtl = math.max(tonumber(last[2]) - now, 1) + grace
redis.call('PEXPIRE', KEYS[2], leaseTtl)
redis.call('PEXPIRE', KEYS[3], leaseTtl)
if images > 0 then
  redis.call('INCRBY', KEYS[1], images)
  redis.call('PEXPIRE', KEYS[1], windowEnd - now + grace)
end
return {'ok'}
`

/*
 * The settled marker makes a second settle of a ticket a no-op, and lets a ticket whose lease
 * lapsed still be charged: the money was spent whether or not its slot was still held.
 */
const SETTLE_LUA = `
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[8]) then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if tonumber(ARGV[6]) ~= 0 then
  redis.call('INCRBY', KEYS[4], ARGV[6])
end
redis.call('HINCRBY', KEYS[5], 'requests', ARGV[2])
redis.call('HINCRBY', KEYS[5], 'images', ARGV[3])
redis.call('HINCRBY', KEYS[5], 'inputTokens', ARGV[4])
redis.call('HINCRBY', KEYS[5], 'outputTokens', ARGV[5])
redis.call('HINCRBY', KEYS[5], 'costMicroUsd', ARGV[6])
redis.call('PEXPIRE', KEYS[5], ARGV[7])
return 1
`

/*
 * Changes fields of an existing record and publishes its id in the same step, so that no
 * instance can keep a stale copy of a change that happened. A revocation keeps the first
 * revocation time.
 */
const PATCH_LUA = `
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {}
end
if ARGV[3] == 'revoke' then
  if redis.call('HGET', KEYS[1], 'revokedAt') == 'null' then
    redis.call('HSET', KEYS[1], 'revokedAt', ARGV[4])
  end
elseif #ARGV > 3 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 4))
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return redis.call('HGETALL', KEYS[1])
`

const SCRIPTS = {
  igwAdmit: { lua: ADMIT_LUA, numberOfKeys: 4 },
  igwSettle: { lua: SETTLE_LUA, numberOfKeys: 5 },
  igwPatch: { lua: PATCH_LUA, numberOfKeys: 1 }
} as const

type ScriptName = keyof typeof SCRIPTS

function utcDay(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10)
}

function assertCount(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`${name} must be a non-negative integer, got ${value}`)
  }
}

function limitArg(name: string, value: number | null): number {
  if (value === null) return -1
  assertCount(name, value)
  return value
}

function encodeRecord(record: KeyRecord): string[] {
  return RECORD_FIELDS.flatMap((field) => [field, JSON.stringify(record[field])])
}

function decodeRecord(hash: Record<string, string>): KeyRecord | null {
  if (Object.keys(hash).length === 0) return null
  const fields: Record<string, unknown> = {}
  for (const field of RECORD_FIELDS) {
    const raw = hash[field]
    if (raw !== undefined) fields[field] = JSON.parse(raw) as unknown
  }
  return recordSchema.parse(fields)
}

function pairsToHash(reply: unknown): Record<string, string> {
  if (!Array.isArray(reply)) throw new TypeError('expected a flat array of field/value pairs')
  const hash: Record<string, string> = {}
  for (let i = 0; i + 1 < reply.length; i += 2) hash[String(reply[i])] = String(reply[i + 1])
  return hash
}

function parseAdmitReply(reply: unknown): AdmitResult {
  if (!Array.isArray(reply) || reply.length === 0) throw new TypeError('unexpected admit reply')
  const [limit, retryAfter, limitValue, remaining] = reply as unknown[]
  if (limit === 'ok') return { ok: true }
  if (limit !== 'images' && limit !== 'concurrency' && limit !== 'budget') {
    throw new TypeError(`unexpected admit reply ${String(limit)}`)
  }
  const retryAfterMs = Number(retryAfter)
  return {
    ok: false,
    limit,
    retryAfterMs: retryAfterMs < 0 ? null : retryAfterMs,
    limitValue: Number(limitValue),
    remaining: Number(remaining)
  }
}

/** Throws the first error of a MULTI or pipeline, which ioredis reports per command. */
function results(replies: [Error | null, unknown][] | null): unknown[] {
  if (replies === null) throw new Error('transaction aborted')
  return replies.map(([error, value]) => {
    if (error !== null) throw error
    return value
  })
}

async function shut(client: RedisClient): Promise<void> {
  const ended = (): boolean => client.status === 'end'
  if (ended()) return
  let timer: NodeJS.Timeout | undefined
  try {
    // QUIT lets replies already on their way arrive; a frozen Redis never answers it.
    await Promise.race([client.quit(), new Promise((resolve) => (timer = setTimeout(resolve, 500)))])
  } catch {
    // Closing a client whose Redis is gone is the point; there is nothing to report.
  } finally {
    clearTimeout(timer)
    if (!ended()) client.disconnect()
  }
}

/**
 * Keys, limits and usage in Redis, shared by every gateway instance. Per-key data is under
 * `{prefix}…:{keyId}…` with the id in braces (a Redis Cluster hash tag), so that everything
 * one admission or settlement touches lives in one slot.
 *
 * Every Redis failure (down, frozen, timed out, refused) is a StoreUnavailableError: a store
 * that cannot answer must never look like a store that answered "no such key".
 */
export class RedisKeyStore implements KeyStore {
  readonly kind = 'redis' as const
  private readonly redis: RedisClient
  private readonly subscriber: RedisClient
  private readonly prefix: string
  private readonly channel: string
  private readonly listeners: ((keyId: string) => void)[] = []
  private closed = false
  private readonly onMessage = (channel: string, message: string): void => {
    if (channel === this.channel) this.notify(message)
  }

  private notify(keyId: string): void {
    for (const listener of this.listeners) {
      try {
        listener(keyId)
      } catch {
        // A listener that throws must not stop the others, nor break the subscriber connection.
      }
    }
  }

  constructor(redis: RedisClient, subscriber: RedisClient, options: { prefix?: string } = {}) {
    this.redis = redis
    this.subscriber = subscriber
    this.prefix = options.prefix ?? 'igw:'
    this.channel = `${this.prefix}invalidate`
    for (const [name, definition] of Object.entries(SCRIPTS)) redis.defineCommand(name, definition)
    subscriber.on('message', this.onMessage)
    this.subscribe()
  }

  private subscribe(): void {
    if (this.closed) return
    // Resubscription after a reconnect is ioredis's job, but only for a SUBSCRIBE that succeeded.
    this.subscriber.subscribe(this.channel).catch(() => {
      if (!this.closed) this.subscriber.once('ready', () => this.subscribe())
    })
  }

  private recordKey(id: string): string {
    return `${this.prefix}key:{${id}}`
  }

  private digestKey(digest: string): string {
    return `${this.prefix}digest:{${digest}}`
  }

  private get idsKey(): string {
    return `${this.prefix}keys`
  }

  private perKey(kind: string, id: string, suffix?: string): string {
    return suffix === undefined ? `${this.prefix}${kind}:{${id}}` : `${this.prefix}${kind}:{${id}}:${suffix}`
  }

  private run<T>(operation: () => Promise<T>): Promise<T> {
    return storeCall(this.redis, operation)
  }

  private script(name: ScriptName, args: (string | number)[]): Promise<unknown> {
    const command: unknown = Reflect.get(this.redis, name)
    if (typeof command !== 'function') throw new Error(`script ${name} is not defined on this client`)
    return Reflect.apply(command, this.redis, args) as Promise<unknown>
  }

  async create(input: NewKey): Promise<{ record: KeyRecord; key: string }> {
    const material = newKey()
    const record = newRecord(input, material)
    // Three writes, not one MULTI: in a Redis Cluster they live in three hash slots. The digest
    // index goes last, so a key is usable only once its record exists (a failure in between
    // leaves an unreachable record, never a key without one).
    await this.run(async () => {
      await this.redis.hset(this.recordKey(record.id), ...encodeRecord(record))
      await this.redis.sadd(this.idsKey, record.id)
      await this.redis.set(this.digestKey(record.digest), record.id)
    })
    return { record, key: material.key }
  }

  async findByDigest(digest: string): Promise<KeyRecord | null> {
    return this.run(async () => {
      const id = await this.redis.get(this.digestKey(digest))
      if (id === null) return null
      return decodeRecord(await this.redis.hgetall(this.recordKey(id)))
    })
  }

  async get(id: string): Promise<KeyRecord | null> {
    return this.run(async () => decodeRecord(await this.redis.hgetall(this.recordKey(id))))
  }

  async list(): Promise<KeyRecord[]> {
    return this.run(async () => {
      const ids = await this.redis.smembers(this.idsKey)
      if (ids.length === 0) return []
      // One command per record: a Cluster pipeline may not span hash slots.
      const hashes = await Promise.all(ids.map((id) => this.redis.hgetall(this.recordKey(id))))
      const records: KeyRecord[] = []
      for (const hash of hashes) {
        const record = decodeRecord(hash)
        if (record !== null) records.push(record)
      }
      return records.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id))
    })
  }

  async update(id: string, patch: KeyPatch): Promise<KeyRecord | null> {
    const fields: string[] = []
    for (const [field, value] of Object.entries(patch)) {
      if (PATCHABLE_FIELDS.has(field) && value !== undefined) fields.push(field, JSON.stringify(value))
    }
    return this.patch(id, 'update', fields)
  }

  async revoke(id: string): Promise<KeyRecord | null> {
    return this.patch(id, 'revoke', [JSON.stringify(new Date().toISOString())])
  }

  private async patch(id: string, mode: 'update' | 'revoke', args: string[]): Promise<KeyRecord | null> {
    const record = await this.run(async () =>
      decodeRecord(pairsToHash(await this.script('igwPatch', [this.recordKey(id), this.channel, id, mode, ...args])))
    )
    // This instance drops its copy now, not when its own published notice comes back: Redis could
    // go away in between, and the stale copy would then be served through the outage.
    if (record !== null) this.notify(id)
    return record
  }

  async admit(a: Admission): Promise<AdmitResult> {
    assertCount('images', a.images)
    assertCount('reserveMicroUsd', a.reserveMicroUsd)
    assertCount('leaseMs', a.leaseMs)
    assertCount('nowMs', a.nowMs)
    const windowStart = a.nowMs - (a.nowMs % MINUTE_MS)
    const args = [
      this.perKey('ipm', a.keyId, String(windowStart)),
      this.perKey('slots', a.keyId),
      this.perKey('reserved', a.keyId),
      this.perKey('spent', a.keyId),
      a.ticket,
      a.images,
      limitArg('imagesPerMinute', a.imagesPerMinute),
      limitArg('concurrency', a.concurrency),
      a.reserveMicroUsd,
      limitArg('budgetMicroUsd', a.budgetMicroUsd),
      a.leaseMs,
      a.nowMs,
      windowStart + MINUTE_MS,
      LEASE_KEY_GRACE_MS
    ]
    return this.run(async () => parseAdmitReply(await this.script('igwAdmit', args)))
  }

  async settle(keyId: string, ticket: string, usage: UsageDelta, nowMs: number): Promise<void> {
    for (const field of ['requests', 'images', 'inputTokens', 'outputTokens', 'costMicroUsd'] as const) {
      assertCount(field, usage[field])
    }
    const args = [
      this.perKey('settled', keyId, ticket),
      this.perKey('slots', keyId),
      this.perKey('reserved', keyId),
      this.perKey('spent', keyId),
      this.perKey('usage', keyId, utcDay(nowMs)),
      ticket,
      usage.requests,
      usage.images,
      usage.inputTokens,
      usage.outputTokens,
      usage.costMicroUsd,
      USAGE_TTL_MS,
      SETTLED_TTL_MS
    ]
    await this.run(() => this.script('igwSettle', args))
  }

  async spentMicroUsd(keyId: string): Promise<number> {
    return this.run(async () => Number((await this.redis.get(this.perKey('spent', keyId))) ?? 0))
  }

  async usage(keyId: string, days: number, nowMs: number): Promise<DayUsage[]> {
    const dayNames: string[] = []
    for (let i = 0; i < days; i++) dayNames.push(utcDay(nowMs - i * DAY_MS))
    if (dayNames.length === 0) return []
    return this.run(async () => {
      const pipeline = this.redis.pipeline()
      for (const day of dayNames) pipeline.hgetall(this.perKey('usage', keyId, day))
      const hashes = results(await pipeline.exec()) as Record<string, string | undefined>[]
      return dayNames.map((day, i) => {
        const hash = hashes[i] ?? {}
        return {
          day,
          requests: Number(hash.requests ?? 0),
          images: Number(hash.images ?? 0),
          inputTokens: Number(hash.inputTokens ?? 0),
          outputTokens: Number(hash.outputTokens ?? 0),
          costMicroUsd: Number(hash.costMicroUsd ?? 0)
        }
      })
    })
  }

  onInvalidate(listener: (keyId: string) => void): void {
    this.listeners.push(listener)
  }

  async ping(): Promise<void> {
    await this.run(() => this.redis.ping())
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.subscriber.off('message', this.onMessage)
    await Promise.all([shut(this.redis), shut(this.subscriber)])
  }
}
