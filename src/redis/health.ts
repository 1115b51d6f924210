import type { RedisClient } from './client.js'

/** After a failed command, Redis is skipped this long (a frozen Redis keeps its socket open). */
const SKIP_AFTER_FAILURE_MS = 1_000

/**
 * Whether Redis is worth asking right now. Paths that have a local fallback (rate limits) skip a
 * Redis that is down or just failed, instead of waiting a command timeout on every request.
 */
export class RedisHealth {
  private readonly redis: RedisClient
  private lastFailureMs = -Infinity

  constructor(redis: RedisClient) {
    this.redis = redis
  }

  usable(nowMs = Date.now()): boolean {
    return this.redis.status === 'ready' && nowMs - this.lastFailureMs >= SKIP_AFTER_FAILURE_MS
  }

  failed(nowMs = Date.now()): void {
    this.lastFailureMs = nowMs
  }
}
