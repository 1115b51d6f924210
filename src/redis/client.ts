import { Cluster, type ClusterOptions, type Redis, type RedisOptions } from 'ioredis'
import { DeadlineCluster, DeadlineRedis } from './command-deadline.js'

export type RedisRole = 'commands' | 'subscriber'

export interface RedisNode {
  host: string
  port: number
}

/** Where Redis is: one server by URL, a Sentinel-managed primary, or a Redis Cluster. */
export type RedisTarget =
  | { url: string }
  | { sentinels: RedisNode[]; sentinelName: string; username?: string; password?: string }
  | { cluster: RedisNode[]; username?: string; password?: string }

/** A client of any of the three; their command methods are the same. */
export type RedisClient = Redis | Cluster

/**
 * A frozen Redis keeps its socket open, so only a client-side deadline ends a command. It does not
 * count time the event loop was held (command-deadline.ts).
 */
const COMMAND_TIMEOUT_MS = 300
const CONNECT_TIMEOUT_MS = 1_000
const MAX_RECONNECT_DELAY_MS = 2_000
/** How long a command may wait for a connection that is being made (startup, reconnect). */
export const READY_WAIT_MS = 500

/** Exponential from 100 ms, jittered so that many instances do not reconnect in step, never above 2 s. */
export function reconnectDelay(attempt: number): number {
  const base = 50 * 2 ** Math.min(attempt, 16)
  return Math.min(base + Math.floor(Math.random() * 100), MAX_RECONNECT_DELAY_MS)
}

/**
 * A client that fails fast: a down or frozen Redis rejects a command in well under a second
 * instead of queueing it (ioredis 6 defaults wait 73 s when down and forever when frozen).
 * It keeps reconnecting forever, at most 2 s apart.
 *
 * The subscriber role has no command deadline (a subscriber waits by design) and keeps an offline
 * queue, because a SUBSCRIBE issued before the first connection would otherwise be dropped and
 * never resubscribed.
 */
export function createRedis(
  target: string | RedisTarget,
  options: { role: RedisRole } = { role: 'commands' }
): RedisClient {
  const where: RedisTarget = typeof target === 'string' ? { url: target } : target
  const common: RedisOptions = {
    connectTimeout: CONNECT_TIMEOUT_MS,
    retryStrategy: reconnectDelay,
    lazyConnect: false,
    autoResendUnfulfilledCommands: false
  }
  const role: RedisOptions =
    options.role === 'subscriber'
      ? { ...common, enableOfflineQueue: true, maxRetriesPerRequest: null, autoResubscribe: true, connectionName: 'igw-subscriber' }
      : {
          ...common,
          commandTimeout: COMMAND_TIMEOUT_MS,
          enableOfflineQueue: false,
          maxRetriesPerRequest: 1,
          connectionName: 'igw-commands',
          // Commands of one event-loop turn (many requests' limits and settles under load) go out
          // in one write and come back in one read: fewer syscalls on both sides (docs/performance.md).
          enableAutoPipelining: true
        }
  let client: RedisClient
  if ('url' in where) {
    if (!/^rediss?:\/\//i.test(where.url)) throw new TypeError('a Redis URL starts with redis:// or rediss://')
    client = new DeadlineRedis(role, where.url)
  } else if ('sentinels' in where) {
    client = new DeadlineRedis({
      ...role,
      sentinels: where.sentinels,
      name: where.sentinelName,
      sentinelRetryStrategy: reconnectDelay,
      ...(where.username === undefined ? {} : { username: where.username }),
      ...(where.password === undefined ? {} : { password: where.password })
    })
  } else {
    const auth = {
      ...(where.username === undefined ? {} : { username: where.username }),
      ...(where.password === undefined ? {} : { password: where.password })
    }
    // Per-node options may not carry lazyConnect, retryStrategy or enableOfflineQueue: the cluster
    // manages its node connections itself (lazyConnect: false there made about a quarter of new
    // clients fail their ready check and reconnect, refusing the first commands).
    // Auto-pipelining is a cluster option: ioredis does not read it from the node options.
    const { lazyConnect: _lazy, retryStrategy: _retry, enableOfflineQueue, enableAutoPipelining, ...nodeOptions } = role
    const cluster: ClusterOptions = {
      clusterRetryStrategy: reconnectDelay,
      enableOfflineQueue: enableOfflineQueue ?? false,
      enableAutoPipelining: enableAutoPipelining ?? false,
      redisOptions: { ...nodeOptions, ...auth }
    }
    client = new DeadlineCluster(where.cluster, cluster)
  }
  // Failures reach callers as rejected commands; without a listener ioredis prints every
  // reconnect error to stderr, once per attempt, for as long as Redis is down.
  client.on('error', () => {})
  return client
}

/**
 * A second connection like `redis` (same server or cluster, same credentials) whose commands get
 * `deadlineMs` instead of the commands connection's 300 ms, with its own failures silenced.
 */
export function secondConnection(redis: RedisClient, deadlineMs: number, connectionName: string): RedisClient {
  let client: RedisClient
  if (redis instanceof DeadlineRedis || redis instanceof DeadlineCluster) client = redis.withDeadline(deadlineMs, connectionName)
  // A client made elsewhere (not by createRedis): ioredis's own deadline.
  else if (redis instanceof Cluster) client = redis.duplicate(undefined, { redisOptions: { commandTimeout: deadlineMs, connectionName } })
  else client = redis.duplicate({ commandTimeout: deadlineMs, connectionName })
  client.on('error', () => {})
  return client
}

/**
 * Resolves when the client can take a command. A client that is connecting gets up to `waitMs`
 * (so the first commands after startup or a reconnect are not refused); one that is waiting to
 * retry a refused connection, or was closed, is refused at once.
 */
export function whenReady(redis: RedisClient, waitMs = READY_WAIT_MS): Promise<void> {
  const status = redis.status
  if (status === 'ready') return Promise.resolve()
  if (status !== 'wait' && status !== 'connecting' && status !== 'connect') {
    return Promise.reject(new Error(`Redis connection is ${status}`))
  }
  return new Promise((resolve, reject) => {
    const done = (error?: Error): void => {
      clearTimeout(timer)
      redis.off('ready', onReady)
      redis.off('close', onClose)
      redis.off('end', onClose)
      if (error === undefined) resolve()
      else reject(error)
    }
    const onReady = (): void => done()
    const onClose = (): void => done(new Error('Redis connection closed while connecting'))
    const timer = setTimeout(() => done(new Error(`Redis not ready within ${waitMs} ms`)), waitMs)
    redis.once('ready', onReady)
    redis.once('close', onClose)
    redis.once('end', onClose)
  })
}
