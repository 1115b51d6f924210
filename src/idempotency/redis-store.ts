import { randomUUID } from 'node:crypto'
import type { RedisClient } from '../redis/client.js'
import {
  IDEMPOTENCY_LEASE_MS,
  type Begin,
  type IdempotencyStore,
  type IdempotencyStoreOptions,
  type NotStoredReason,
  type ReplayableAnswer,
  type StoredAnswer
} from './store.js'
import { storeCall } from '../keys/store-call.js'

/*
 * One hash per scope, `{prefix}idem:{scope}`, and every step a script on that one key, so that it
 * is atomic and lives on one Redis Cluster node. Fields: state, token, fp (fingerprint), rid (the
 * request id that ran it), lease (ms, Redis clock: instances' clocks may differ); when done also
 * status, headers (JSON), size, parts, form, and the body in fields p0, p1, ...
 */

/** The Redis clock in ms (scripts are replicated by their effects since Redis 5, so TIME is fine). */
const NOW_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

/** The rest of a script runs only for the token that holds a running entry. */
const HELD_LUA = `
local held = redis.call('HMGET', KEYS[1], 'state', 'token')
if held[1] ~= 'running' or held[2] ~= ARGV[1] then
  return 0
end
`

const BEGIN_LUA = `${NOW_LUA}
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  redis.call('HSET', KEYS[1], 'state', 'running', 'token', ARGV[1], 'fp', ARGV[2], 'rid', ARGV[3], 'lease', now + tonumber(ARGV[4]))
  redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[5]), tonumber(ARGV[4])))
  return {'run'}
end
local f = redis.call('HMGET', KEYS[1], 'fp', 'rid', 'lease', 'reason', 'status', 'headers', 'size', 'parts', 'form')
if state == 'running' and tonumber(f[3]) < now then
  return {'not_stored', f[1], f[2], 'lapsed'}
end
return {state, f[1], f[2], f[4], f[5], f[6], f[7], f[8], f[9]}
`

// A run longer than the ttl must not lose its entry (a repeat would run it again): the entry lives
// at least as long as the lease.
const RENEW_LUA = `${HELD_LUA}${NOW_LUA}
redis.call('HSET', KEYS[1], 'lease', now + tonumber(ARGV[2]))
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
`

/** One part of an answer's body, written before the entry is marked done. */
const PUT_PART_LUA = `${HELD_LUA}
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
`

const COMPLETE_LUA = `${HELD_LUA}
redis.call('HSET', KEYS[1], 'state', 'done', 'status', ARGV[2], 'headers', ARGV[3], 'size', ARGV[4], 'parts', ARGV[5], 'form', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
return 1
`

/** Parts written by a completion that failed half way go with the rest. */
const NOT_STORED_LUA = `${HELD_LUA}
local kept = redis.call('HMGET', KEYS[1], 'fp', 'rid')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'not_stored', 'token', ARGV[1], 'fp', kept[1], 'rid', kept[2], 'reason', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
`

const RELEASE_LUA = `${HELD_LUA}
redis.call('DEL', KEYS[1])
return 1
`

const SCRIPTS = {
  igwIdemBegin: BEGIN_LUA,
  igwIdemRenew: RENEW_LUA,
  igwIdemPutPart: PUT_PART_LUA,
  igwIdemComplete: COMPLETE_LUA,
  igwIdemNotStored: NOT_STORED_LUA,
  igwIdemRelease: RELEASE_LUA
} as const

type ScriptName = keyof typeof SCRIPTS

const REASONS: ReadonlySet<string> = new Set<NotStoredReason>([
  'client_left',
  'upstream_failed',
  'too_large',
  'event_stream',
  'store_failed',
  'lapsed',
  'evicted'
])

function text(value: unknown): string {
  if (typeof value === 'string') return value
  if (Buffer.isBuffer(value)) return value.toString('utf8')
  throw new TypeError('unexpected idempotency entry reply')
}

function parseHeaders(json: string): Record<string, string> {
  const value: unknown = JSON.parse(json)
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new TypeError('stored headers are not an object')
  const headers: Record<string, string> = {}
  for (const [name, v] of Object.entries(value)) if (typeof v === 'string') headers[name] = v
  return headers
}

/**
 * Idempotency entries in Redis, shared by every instance. A Redis that cannot answer is a
 * StoreUnavailableError, never an empty entry (which would let a request run twice).
 */
export class RedisIdempotencyStore implements IdempotencyStore {
  readonly kind = 'redis' as const
  private readonly redis: RedisClient
  private readonly prefix: string
  private readonly ttlMs: number
  private readonly leaseMs: number

  constructor(redis: RedisClient, options: IdempotencyStoreOptions & { prefix: string }) {
    this.redis = redis
    this.prefix = options.prefix
    this.ttlMs = options.ttlMs
    this.leaseMs = options.leaseMs ?? IDEMPOTENCY_LEASE_MS
    for (const [name, lua] of Object.entries(SCRIPTS)) redis.defineCommand(name, { lua, numberOfKeys: 1 })
  }

  private key(scope: string): string {
    return `${this.prefix}idem:${scope}`
  }

  private run<T>(operation: () => Promise<T>): Promise<T> {
    return storeCall(this.redis, operation)
  }

  private script(name: ScriptName, args: (string | number | Buffer)[]): Promise<unknown> {
    const command: unknown = Reflect.get(this.redis, name)
    if (typeof command !== 'function') throw new Error(`script ${name} is not defined on this client`)
    return Reflect.apply(command, this.redis, args) as Promise<unknown>
  }

  private async held(name: ScriptName, scope: string, token: string, args: (string | number | Buffer)[]): Promise<boolean> {
    return this.run(async () => Number(await this.script(name, [this.key(scope), token, ...args])) === 1)
  }

  async begin(scope: string, fingerprint: string, requestId: string): Promise<Begin> {
    const token = randomUUID()
    const reply = await this.run(() => this.script('igwIdemBegin', [this.key(scope), token, fingerprint, requestId, this.leaseMs, this.ttlMs]))
    if (!Array.isArray(reply) || reply.length === 0) throw new TypeError('unexpected idempotency begin reply')
    const [state, fp, rid, reason, status, headers, size, parts, form] = reply as unknown[]
    if (state === 'run') return { state: 'run', token }
    const seen = { fingerprint: text(fp), requestId: text(rid) }
    if (state === 'running') return { state: 'running', ...seen }
    if (state === 'not_stored') {
      const why = text(reason)
      return { state: 'not_stored', ...seen, reason: REASONS.has(why) ? (why as NotStoredReason) : 'store_failed' }
    }
    if (state !== 'done') throw new TypeError(`unexpected idempotency state ${String(state)}`)
    const formDigest = form === null || form === undefined || text(form) === '' ? null : text(form)
    return {
      state: 'done',
      ...seen,
      answer: this.replayable(scope, Number(text(status)), parseHeaders(text(headers)), Number(text(size)), Number(text(parts)), formDigest)
    }
  }

  private replayable(scope: string, status: number, headers: Record<string, string>, size: number, parts: number, formDigest: string | null): ReplayableAnswer {
    const redis = this.redis
    const key = this.key(scope)
    return {
      status,
      headers,
      size,
      formDigest,
      // Part by part, as the client reads: a replay holds one part in memory, not the answer.
      body: async function* () {
        for (let i = 0; i < parts; i++) {
          const part = await redis.hgetBuffer(key, `p${i}`)
          if (part === null) throw new Error('the stored answer expired while it was replayed')
          yield part
        }
      }
    }
  }

  async renew(scope: string, token: string): Promise<boolean> {
    return this.held('igwIdemRenew', scope, token, [this.leaseMs])
  }

  async complete(scope: string, token: string, answer: StoredAnswer): Promise<boolean> {
    // Part by part (one command each stays inside the client's command timeout); the entry reads
    // as done only once every part is in.
    for (const [i, part] of answer.parts.entries()) {
      if (!(await this.held('igwIdemPutPart', scope, token, [`p${i}`, part]))) return false
    }
    const size = answer.parts.reduce((sum, part) => sum + part.length, 0)
    return this.held('igwIdemComplete', scope, token, [
      answer.status,
      JSON.stringify(answer.headers),
      size,
      answer.parts.length,
      answer.formDigest ?? '',
      this.ttlMs
    ])
  }

  async markNotStored(scope: string, token: string, reason: NotStoredReason): Promise<boolean> {
    return this.held('igwIdemNotStored', scope, token, [reason, this.ttlMs])
  }

  async release(scope: string, token: string): Promise<boolean> {
    return this.held('igwIdemRelease', scope, token, [])
  }

  /** The connection belongs to the key store, which closes it. */
  async close(): Promise<void> {}
}
