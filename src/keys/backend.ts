import type { Config } from '../config/schema.js'
import { createRedis, type RedisClient, type RedisTarget } from '../redis/client.js'
import { RedisHealth } from '../redis/health.js'
import { MemoryKeyStore } from './memory-store.js'
import { RedisKeyStore } from './redis-store.js'
import type { KeyStore } from './types.js'

/** The Redis connection that counters shared by every instance (requests per minute) use. */
export interface SharedCounters {
  redis: RedisClient
  /** The connection in subscriber mode, shared by every channel the gateway listens on. */
  subscriber: RedisClient
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
  const target = redisTarget(config.redis)
  const redis = createRedis(target)
  const subscriber = createRedis(target, { role: 'subscriber' })
  return {
    store: new RedisKeyStore(redis, subscriber, { prefix: config.redis.keyPrefix }),
    shared: { redis, subscriber, health: new RedisHealth(redis), keyPrefix: config.redis.keyPrefix },
    describe: describeTarget(target)
  }
}

function redisTarget(redis: NonNullable<Config['redis']>): RedisTarget {
  const auth = {
    ...(redis.username === undefined ? {} : { username: redis.username }),
    ...(redis.password === undefined ? {} : { password: redis.password })
  }
  if (redis.sentinels !== undefined) return { sentinels: redis.sentinels, sentinelName: redis.sentinelName ?? '', ...auth }
  if (redis.cluster !== undefined) return { cluster: redis.cluster, ...auth }
  return { url: redis.url ?? '' }
}

/** Hosts and ports only: never a password (a Redis URL may carry one). */
function describeTarget(target: RedisTarget): string {
  const nodes = (list: { host: string; port: number }[]): string => list.map((n) => `${n.host}:${n.port}`).join(', ')
  if ('sentinels' in target) return `Redis key store, primary "${target.sentinelName}" via sentinels ${nodes(target.sentinels)}`
  if ('cluster' in target) return `Redis Cluster key store at ${nodes(target.cluster)}`
  const url = new URL(target.url)
  return `Redis key store at ${url.hostname}:${url.port || '6379'}`
}
