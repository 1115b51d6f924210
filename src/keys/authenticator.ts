import { GatewayError } from '../errors/catalogue.js'
import { bearerToken } from '../http/bearer.js'
import { digestOf, looksLikeKey } from './key-material.js'
import type { KeyRecord, KeyStore } from './types.js'

export interface AuthCacheOptions {
  /** How long a found key is trusted without asking the store again. */
  ttlMs: number
  /** How long "no such key" is remembered, so random keys cannot flood the store. */
  negativeTtlMs: number
  /** While the store is unreachable, a cached key keeps working this long past its ttl. */
  staleMs: number
  maxEntries: number
}

export const DEFAULT_AUTH_CACHE: AuthCacheOptions = { ttlMs: 5_000, negativeTtlMs: 2_000, staleMs: 60_000, maxEntries: 10_000 }

interface Entry {
  record: KeyRecord | null
  fetchedAtMs: number
}

export interface CacheStats {
  hits: number
  misses: number
}

function invalidKey(message: string): GatewayError {
  return new GatewayError('invalid_api_key', message)
}

/** 401 for what no retry can fix; the status of a known key is checked on every request. */
function checkUsable(record: KeyRecord, nowMs: number): KeyRecord {
  if (record.revokedAt !== null) throw invalidKey('This API key has been revoked.')
  if (record.disabled) throw invalidKey('This API key is disabled.')
  if (record.expiresAt !== null && Date.parse(record.expiresAt) <= nowMs) throw invalidKey('This API key has expired.')
  return record
}

/**
 * Turns an Authorization header into a usable key record. Keys are found by their SHA-256 digest
 * (no plaintext at rest, no string comparison), through a small cache that any instance's update
 * or revocation clears at once (the store's invalidation channel).
 */
export class Authenticator {
  readonly stats: CacheStats = { hits: 0, misses: 0 }
  private readonly store: KeyStore
  private readonly options: AuthCacheOptions
  private readonly cache = new Map<string, Entry>()
  private readonly digestById = new Map<string, string>()
  /** Counts invalidations, so a lookup that raced one does not cache what it read before it. */
  private epoch = 0

  constructor(store: KeyStore, options: AuthCacheOptions = DEFAULT_AUTH_CACHE) {
    this.store = store
    this.options = options
    store.onInvalidate((keyId) => this.drop(keyId))
  }

  drop(keyId: string): void {
    this.epoch++
    const digest = this.digestById.get(keyId)
    if (digest === undefined) return
    this.cache.delete(digest)
    this.digestById.delete(keyId)
  }

  async authenticate(authorization: string | undefined, nowMs: number): Promise<KeyRecord> {
    if (authorization === undefined || authorization === '') {
      throw invalidKey(
        "You didn't provide an API key. Provide your gateway key in an Authorization header using Bearer auth (Authorization: Bearer YOUR_KEY)."
      )
    }
    const candidate = bearerToken(authorization)
    if (candidate === null || !looksLikeKey(candidate)) throw invalidKey('Incorrect API key provided.')
    const record = await this.lookup(digestOf(candidate), nowMs)
    if (record === null) throw invalidKey('Incorrect API key provided.')
    return checkUsable(record, nowMs)
  }

  private async lookup(digest: string, nowMs: number): Promise<KeyRecord | null> {
    const cached = this.cache.get(digest)
    if (cached !== undefined) {
      const ttl = cached.record === null ? this.options.negativeTtlMs : this.options.ttlMs
      if (nowMs - cached.fetchedAtMs < ttl) {
        this.stats.hits++
        return cached.record
      }
    }
    this.stats.misses++
    const epoch = this.epoch
    let record: KeyRecord | null
    try {
      record = await this.store.findByDigest(digest)
    } catch (err) {
      // A known key keeps working for a while when the store is down; anything else is a 503, never a 401.
      if (cached?.record != null && nowMs - cached.fetchedAtMs < this.options.ttlMs + this.options.staleMs) {
        return cached.record
      }
      throw new GatewayError('service_unavailable', 'The gateway cannot check keys right now. Try again shortly.', {
        cause: err
      })
    }
    // Read before an update or revocation that arrived meanwhile: usable once, not cached.
    if (this.epoch === epoch) this.remember(digest, record, nowMs)
    return record
  }

  private remember(digest: string, record: KeyRecord | null, nowMs: number): void {
    if (this.cache.size >= this.options.maxEntries) {
      const oldest = this.cache.keys().next().value
      if (oldest !== undefined) this.cache.delete(oldest)
    }
    this.cache.delete(digest)
    this.cache.set(digest, { record, fetchedAtMs: nowMs })
    if (record !== null) this.digestById.set(record.id, digest)
  }
}
