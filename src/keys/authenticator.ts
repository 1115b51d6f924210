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
  /** Found keys kept, and, apart, unknown digests kept. */
  maxEntries: number
}

export const DEFAULT_AUTH_CACHE: AuthCacheOptions = { ttlMs: 5_000, negativeTtlMs: 2_000, staleMs: 60_000, maxEntries: 10_000 }

interface Entry {
  record: KeyRecord
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
  /**
   * Digests the store did not know, and when it said so. Apart from found keys, so that a flood of
   * random keys evicts only its own kind: found keys are what carries callers through a store outage.
   */
  private readonly unknown = new Map<string, number>()
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
    if (cached !== undefined && nowMs - cached.fetchedAtMs < this.options.ttlMs) {
      this.stats.hits++
      return cached.record
    }
    const unknownAtMs = this.unknown.get(digest)
    if (unknownAtMs !== undefined && nowMs - unknownAtMs < this.options.negativeTtlMs) {
      this.stats.hits++
      return null
    }
    this.stats.misses++
    const epoch = this.epoch
    let record: KeyRecord | null
    try {
      record = await this.store.findByDigest(digest)
    } catch (err) {
      // A known key keeps working for a while when the store is down; anything else is a 503, never a 401.
      if (cached !== undefined && nowMs - cached.fetchedAtMs < this.options.ttlMs + this.options.staleMs) {
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
    if (record === null) {
      this.cache.delete(digest)
      setBounded(this.unknown, digest, nowMs, this.options.maxEntries)
      return
    }
    this.unknown.delete(digest)
    setBounded(this.cache, digest, { record, fetchedAtMs: nowMs }, this.options.maxEntries)
    this.digestById.set(record.id, digest)
  }
}

/** Sets `key` last in insertion order, first dropping the oldest entry when the map is full. */
function setBounded<V>(map: Map<string, V>, key: string, value: V, maxEntries: number): void {
  map.delete(key)
  if (map.size >= maxEntries) {
    const oldest = map.keys().next().value
    if (oldest !== undefined) map.delete(oldest)
  }
  map.set(key, value)
}
