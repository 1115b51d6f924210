import type { Redis } from 'ioredis'
import type { Config } from '../config/schema.js'
import { createRedis } from '../redis/client.js'
import { RedisHealth } from '../redis/health.js'
import { MemoryKeyStore } from './memory-store.js'
import { RedisKeyStore } from './redis-store.js'
import type { KeyStore } from './types.js'

/** The Redis connection that counters shared by every instance (requests per minute) use. */
export interface SharedCounters {
  redis: Redis
  health: RedisHealth
  keyPrefix: string
}

/** Where shared state lives: Redis when configured (any number of instances), else this process. */
export interface StateBackend {
  store: KeyStore
  /** null with the in-process store. */
  shared: SharedCounters | null
  describe: string
}

export function createBackend(config: Config): StateBackend {
  if (config.redis === undefined) {
    return { store: new MemoryKeyStore(), shared: null, describe: 'in-process key store (one instance; keys vanish on restart)' }
  }
  const redis = createRedis(config.redis.url)
  const subscriber = createRedis(config.redis.url, { role: 'subscriber' })
  const url = new URL(config.redis.url)
  return {
    store: new RedisKeyStore(redis, subscriber, { prefix: config.redis.keyPrefix }),
    shared: { redis, health: new RedisHealth(redis), keyPrefix: config.redis.keyPrefix },
    // Host and port only: a Redis URL may carry a password.
    describe: `Redis key store at ${url.hostname}:${url.port || '6379'}`
  }
}
