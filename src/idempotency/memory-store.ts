import { randomUUID } from 'node:crypto'
import { IDEMPOTENCY_LEASE_MS, type Begin, type IdempotencyStore, type IdempotencyStoreOptions, type NotStoredReason, type StoredAnswer } from './store.js'

/**
 * Stored answers an in-process store holds at most. Past it the oldest answers are dropped, but
 * their entries stay as `not_stored` / `evicted`: a repeat is refused, never run twice.
 */
export const MEMORY_STORE_MAX_BYTES = 256 * 1024 * 1024
/** Expired entries are swept at most this often (on the next begin). */
const SWEEP_EVERY_MS = 1_000

interface Entry {
  state: 'running' | 'done' | 'not_stored'
  token: string
  fingerprint: string
  requestId: string
  leaseUntil: number
  expiresAt: number
  reason: NotStoredReason | null
  answer: StoredAnswer | null
  size: number
}

/** Idempotency entries of one instance with no Redis; the same semantics as the Redis store. */
export class MemoryIdempotencyStore implements IdempotencyStore {
  readonly kind = 'memory' as const
  private readonly ttlMs: number
  private readonly leaseMs: number
  private readonly maxBytes: number
  private readonly entries = new Map<string, Entry>()
  private storedBytes = 0
  private lastSweep = 0

  constructor(options: IdempotencyStoreOptions & { maxBytes?: number }) {
    this.ttlMs = options.ttlMs
    this.leaseMs = options.leaseMs ?? IDEMPOTENCY_LEASE_MS
    this.maxBytes = options.maxBytes ?? MEMORY_STORE_MAX_BYTES
  }

  async begin(scope: string, fingerprint: string, requestId: string): Promise<Begin> {
    const now = Date.now()
    this.sweep(now)
    const entry = this.live(scope, now)
    if (entry === null) {
      const token = randomUUID()
      this.entries.set(scope, {
        state: 'running',
        token,
        fingerprint,
        requestId,
        leaseUntil: now + this.leaseMs,
        // A running entry lives at least as long as its lease (renewals extend both).
        expiresAt: now + Math.max(this.ttlMs, this.leaseMs),
        reason: null,
        answer: null,
        size: 0
      })
      return { state: 'run', token }
    }
    const seen = { fingerprint: entry.fingerprint, requestId: entry.requestId }
    if (entry.state === 'running') {
      return entry.leaseUntil < now ? { state: 'not_stored', ...seen, reason: 'lapsed' } : { state: 'running', ...seen }
    }
    if (entry.state === 'not_stored' || entry.answer === null) return { state: 'not_stored', ...seen, reason: entry.reason ?? 'evicted' }
    const answer = entry.answer
    return {
      state: 'done',
      ...seen,
      answer: {
        status: answer.status,
        headers: { ...answer.headers },
        size: entry.size,
        formDigest: answer.formDigest,
        body: async function* () {
          yield* answer.parts
        }
      }
    }
  }

  async renew(scope: string, token: string): Promise<boolean> {
    const entry = this.held(scope, token)
    if (entry === null) return false
    entry.leaseUntil = Date.now() + this.leaseMs
    // A run longer than the ttl keeps its entry (a repeat would run it again).
    entry.expiresAt = Math.max(entry.expiresAt, entry.leaseUntil)
    return true
  }

  async complete(scope: string, token: string, answer: StoredAnswer): Promise<boolean> {
    const entry = this.held(scope, token)
    if (entry === null) return false
    const size = answer.parts.reduce((sum, part) => sum + part.length, 0)
    entry.state = 'done'
    entry.answer = { ...answer, headers: { ...answer.headers }, parts: [...answer.parts] }
    entry.size = size
    entry.expiresAt = Date.now() + this.ttlMs
    this.storedBytes += size
    this.evict()
    return true
  }

  async markNotStored(scope: string, token: string, reason: NotStoredReason): Promise<boolean> {
    const entry = this.held(scope, token)
    if (entry === null) return false
    entry.state = 'not_stored'
    entry.reason = reason
    entry.expiresAt = Date.now() + this.ttlMs
    return true
  }

  async release(scope: string, token: string): Promise<boolean> {
    if (this.held(scope, token) === null) return false
    this.entries.delete(scope)
    return true
  }

  async close(): Promise<void> {
    this.entries.clear()
    this.storedBytes = 0
  }

  /** The scope's running entry, if `token` holds it. */
  private held(scope: string, token: string): Entry | null {
    const entry = this.live(scope, Date.now())
    return entry !== null && entry.state === 'running' && entry.token === token ? entry : null
  }

  private live(scope: string, now: number): Entry | null {
    const entry = this.entries.get(scope)
    if (entry === undefined) return null
    if (entry.expiresAt > now) return entry
    this.drop(scope, entry)
    return null
  }

  private drop(scope: string, entry: Entry): void {
    this.entries.delete(scope)
    if (entry.answer !== null) this.storedBytes -= entry.size
  }

  private sweep(now: number): void {
    if (now - this.lastSweep < SWEEP_EVERY_MS) return
    this.lastSweep = now
    for (const [scope, entry] of this.entries) if (entry.expiresAt <= now) this.drop(scope, entry)
  }

  /** Oldest answers first (Map order is the order the entries began in). */
  private evict(): void {
    for (const entry of this.entries.values()) {
      if (this.storedBytes <= this.maxBytes) return
      if (entry.answer === null) continue
      this.storedBytes -= entry.size
      entry.answer = null
      entry.size = 0
      entry.state = 'not_stored'
      entry.reason = 'evicted'
    }
  }
}
