import type { FastifyBaseLogger } from 'fastify'
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

  /**
   * Logs each change between reachable and unreachable once: the connection's 'close' comes once
   * per failed reconnect attempt, and requests never log Redis errors of their own beyond their
   * 'request failed' line, so an outage is one warning and its end one info line.
   */
  watch(log: FastifyBaseLogger): void {
    let downSinceMs: number | null = null
    const down = (): void => {
      // 'end' follows a close that was asked for (QUIT at shutdown): no outage.
      if (downSinceMs !== null || this.redis.status === 'end') return
      downSinceMs = Date.now()
      log.warn('redis unreachable: cached keys only, limits counted in this instance, budgeted keys refused (503)')
    }
    const up = (): void => {
      if (downSinceMs === null) return
      log.info({ downMs: Date.now() - downSinceMs }, 'redis reachable again')
      downSinceMs = null
    }
    this.redis.on('close', down)
    this.redis.on('ready', up)
  }
}
