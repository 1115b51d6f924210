import { storeCall } from '../keys/store-call.js'
import type { RedisClient } from '../redis/client.js'
import { IMAGE_NAME, type ImageStore, type StoreUsage } from './store.js'

export interface RedisImageStoreOptions {
  /** The clock, in ms since the epoch; tests move it. */
  now?: () => number
  /** The client is this store's own (see imageClient in setup.ts): close() quits it. */
  ownsClient?: boolean
}

/*
 * Two kinds of key under the prefix:
 *   {prefix}image:{name}  the bytes, with a Redis expiry at the image's expiresAt, so Redis itself
 *                         deletes them; nothing else has to.
 *   {prefix}images        a sorted set, score expiresAt, member `{name}:{size}`, only for usage():
 *                         counting images must not SCAN the keyspace or read their bytes.
 * They are written by separate commands, never MULTI or a script: on a Redis Cluster the two keys
 * are in different slots. The image key goes first, so a failure between the two leaves an image
 * that usage() does not count rather than a count of an image that is not there.
 */

/**
 * Hosted images shared by every instance on one Redis (or Sentinel, or Cluster). A Redis failure is
 * a StoreUnavailableError, as for the other Redis stores.
 */
export class RedisImageStore implements ImageStore {
  readonly kind = 'redis' as const
  private readonly now: () => number
  private readonly ownsClient: boolean
  private readonly indexKey: string

  constructor(
    private readonly redis: RedisClient,
    private readonly keyPrefix: string,
    options: RedisImageStoreOptions = {}
  ) {
    this.now = options.now ?? Date.now
    this.ownsClient = options.ownsClient ?? false
    this.indexKey = `${keyPrefix}images`
  }

  async put(name: string, bytes: Buffer, expiresAt: number): Promise<void> {
    const key = this.imageKey(name)
    const ttlMs = expiresAt - this.now()
    // Already expired: storing it would only make usage() count it until the next trim.
    if (ttlMs <= 0) return
    await this.call(async () => {
      await this.redis.set(key, bytes, 'PX', Math.max(1, Math.ceil(ttlMs)))
      await this.redis.zadd(this.indexKey, expiresAt, `${name}:${bytes.length}`)
      // The index has no expiry of its own; trimming on every put keeps it to the live images even
      // when nothing calls usage().
      await this.redis.zremrangebyscore(this.indexKey, '-inf', this.now())
    })
  }

  async get(name: string): Promise<Buffer | null> {
    const key = this.imageKey(name)
    return this.call(() => this.redis.getBuffer(key))
  }

  async usage(): Promise<StoreUsage> {
    return this.call(async () => {
      await this.redis.zremrangebyscore(this.indexKey, '-inf', this.now())
      const members = await this.redis.zrange(this.indexKey, '0', '-1')
      let bytes = 0
      for (const member of members) bytes += Number(member.slice(member.lastIndexOf(':') + 1)) || 0
      return { images: members.length, bytes }
    })
  }

  /** A shared client is closed by whoever created it. */
  async close(): Promise<void> {
    if (this.ownsClient) await this.redis.quit().catch(() => undefined)
  }

  /** The same names as the directory store refuses, so that the two backends are interchangeable. */
  private imageKey(name: string): string {
    if (!IMAGE_NAME.test(name)) throw new TypeError(`not an image name: ${JSON.stringify(name)}`)
    return `${this.keyPrefix}image:${name}`
  }

  private call<T>(operation: () => Promise<T>): Promise<T> {
    return storeCall(this.redis, operation)
  }
}
