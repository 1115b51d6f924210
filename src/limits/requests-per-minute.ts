import rateLimit, {
  type FastifyRateLimitOptions,
  type FastifyRateLimitStore,
  type FastifyRateLimitStoreCtor
} from '@fastify/rate-limit'
import LocalStore from '@fastify/rate-limit/store/LocalStore.js'
import RedisStore from '@fastify/rate-limit/store/RedisStore.js'
import type { FastifyInstance } from 'fastify'
import type { RedisClient } from '../redis/client.js'
import type { RedisHealth } from '../redis/health.js'
import { rateLimited } from './headers.js'
import type { SharedCounters } from '../keys/backend.js'

/** The store contract @fastify/rate-limit calls (see its store/LocalStore.js). */
export type RateLimitStore = FastifyRateLimitStore
type IncrCallback = Parameters<RateLimitStore['incr']>[1]
type ChildOptions = Parameters<RateLimitStore['child']>[0]

interface StoreParams {
  continueExceeding: boolean
  exponentialBackoff: boolean
}

/**
 * Counts in Redis, so every instance enforces one limit; while Redis is down or failing, counts in
 * this process instead. Limits never switch off (LiteLLM shipped that outage as a feature).
 */
class FallbackStore implements RateLimitStore {
  constructor(
    private readonly shared: RateLimitStore,
    private readonly local: RateLimitStore,
    private readonly health: RedisHealth
  ) {}

  incr(key: string, callback: IncrCallback, timeWindow: number, max: number): void {
    if (!this.health.usable()) {
      this.local.incr(key, callback, timeWindow, max)
      return
    }
    this.shared.incr(
      key,
      (err, result) => {
        if (err === null) {
          callback(null, result)
          return
        }
        this.health.failed()
        this.local.incr(key, callback, timeWindow, max)
      },
      timeWindow,
      max
    )
  }

  child(routeOptions: ChildOptions): RateLimitStore {
    return new FallbackStore(this.shared.child(routeOptions), this.local.child(routeOptions), this.health)
  }
}

function fallbackStoreClass(redis: RedisClient, health: RedisHealth, keyPrefix: string): FastifyRateLimitStoreCtor {
  return class implements RateLimitStore {
    private readonly inner: FallbackStore
    constructor(params: FastifyRateLimitOptions) {
      // The plugin passes its merged settings, which carry these two (its types leave them out).
      const { continueExceeding = false, exponentialBackoff = false } = params as FastifyRateLimitOptions & Partial<StoreParams>
      this.inner = new FallbackStore(
        new RedisStore(continueExceeding, exponentialBackoff, redis, `${keyPrefix}rpm:`),
        new LocalStore(continueExceeding, exponentialBackoff),
        health
      )
    }
    incr(key: string, callback: IncrCallback, timeWindow: number, max: number): void {
      this.inner.incr(key, callback, timeWindow, max)
    }
    child(routeOptions: ChildOptions): RateLimitStore {
      return this.inner.child(routeOptions)
    }
  }
}

const NO_HEADERS = {
  'x-ratelimit-limit': false,
  'x-ratelimit-remaining': false,
  'x-ratelimit-reset': false,
  'retry-after': false
} as const

/**
 * Each key's requests per minute, counted before any body byte is read (onRequest, after auth),
 * on every route of the scope it is registered in. Keys with no rpm are not counted.
 */
export async function requestsPerMinute(
  app: FastifyInstance,
  shared: SharedCounters | null
): Promise<void> {
  await app.register(rateLimit, {
    global: true,
    hook: 'onRequest',
    timeWindow: 60_000,
    max: (request) => request.apiKey?.rpm ?? Number.MAX_SAFE_INTEGER,
    allowList: (request) => request.apiKey === null || request.apiKey.rpm === null,
    keyGenerator: (request) => request.apiKey?.id ?? 'anonymous',
    ...(shared === null ? {} : { store: fallbackStoreClass(shared.redis, shared.health, shared.keyPrefix) }),
    addHeaders: NO_HEADERS,
    addHeadersOnExceeding: { 'x-ratelimit-limit': false, 'x-ratelimit-remaining': false, 'x-ratelimit-reset': false },
    errorResponseBuilder: (_request, context) => rateLimited('requests', context.max, 0, context.ttl)
  })
}
