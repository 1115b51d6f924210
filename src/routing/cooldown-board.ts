import { randomUUID } from 'node:crypto'
import type { RedisClient } from '../redis/client.js'

/** One deployment's cooldown as every instance should see it. */
export interface CooldownNotice {
  id: string
  /** Epoch ms the cooldown ends; 0 when the deployment is back. */
  until: number
  /** Cooldowns in a row, which sets the next one's length. */
  level: number
  reason: string | null
}

/**
 * Where instances tell each other which deployments are cooling down. In-process there is no one
 * to tell; with Redis, notices are kept in one hash (read at startup and on reconnect) and
 * published, so an instance that joins or reconnects late still learns of a cooldown in force.
 */
export interface CooldownBoard {
  announce(notice: CooldownNotice): void
  /** Called with each notice from elsewhere (and, for Redis, those already in force at startup). */
  listen(listener: (notice: CooldownNotice) => void): void
  close(): Promise<void>
}

export const localBoard = (): CooldownBoard => ({
  announce: () => undefined,
  listen: () => undefined,
  close: async () => undefined
})

function parseNotice(text: string): CooldownNotice | null {
  try {
    const value: unknown = JSON.parse(text)
    if (value === null || typeof value !== 'object') return null
    const { id, until, level, reason } = value as Record<string, unknown>
    if (typeof id !== 'string' || typeof until !== 'number' || typeof level !== 'number') return null
    return { id, until, level, reason: typeof reason === 'string' ? reason : null }
  } catch {
    return null
  }
}

function parseMessage(text: string): { from: string | null; notice: CooldownNotice | null } {
  const notice = parseNotice(text)
  let from: string | null = null
  try {
    const value: unknown = JSON.parse(text)
    if (value !== null && typeof value === 'object' && typeof (value as { from?: unknown }).from === 'string') {
      from = (value as { from: string }).from
    }
  } catch {
    // parseNotice already said null
  }
  return { from, notice }
}

/** How long close() waits for UNSUBSCRIBE (as the key store waits for QUIT). */
const UNSUBSCRIBE_WAIT_MS = 500

export class RedisCooldownBoard implements CooldownBoard {
  private readonly redis: RedisClient
  private readonly subscriber: RedisClient
  private readonly key: string
  private readonly listeners: ((notice: CooldownNotice) => void)[] = []
  private closed = false
  /** Published notices carry it, so this instance skips its own when they come back. */
  private readonly instance = randomUUID()
  private readonly onMessage = (channel: string, message: string): void => {
    if (channel !== this.key) return
    const { from, notice } = parseMessage(message)
    if (notice !== null && from !== this.instance) this.deliver(notice)
  }
  private readonly onReady = (): void => this.subscribe()

  /** `subscriber` may be shared with other channels; only this board's channel is read here. */
  constructor(redis: RedisClient, subscriber: RedisClient, prefix: string) {
    this.redis = redis
    this.subscriber = subscriber
    // The hash and the channel share one name: one Cluster slot, one thing to look for.
    this.key = `${prefix}cooldowns`
    subscriber.on('message', this.onMessage)
    subscriber.on('ready', this.onReady)
    this.subscribe()
  }

  private subscribe(): void {
    if (this.closed) return
    this.subscriber.subscribe(this.key).then(
      () => this.load(),
      () => undefined // 'ready' comes again when the connection is back
    )
  }

  /** What is in force already: notices published while this instance was away are in the hash. */
  private load(): void {
    this.redis.hgetall(this.key).then(
      (entries) => {
        for (const text of Object.values(entries)) {
          const notice = parseNotice(text)
          if (notice !== null) this.deliver(notice)
        }
      },
      () => undefined
    )
  }

  private deliver(notice: CooldownNotice): void {
    for (const listener of this.listeners) listener(notice)
  }

  announce(notice: CooldownNotice): void {
    const text = JSON.stringify(notice)
    const kept = notice.until === 0 ? this.redis.hdel(this.key, notice.id) : this.redis.hset(this.key, notice.id, text)
    const published = this.redis.publish(this.key, JSON.stringify({ ...notice, from: this.instance }))
    // Best effort: with Redis away, this instance still routes by its own view.
    Promise.all([kept, published]).catch(() => undefined)
  }

  listen(listener: (notice: CooldownNotice) => void): void {
    this.listeners.push(listener)
  }

  async close(): Promise<void> {
    this.closed = true
    this.subscriber.off('message', this.onMessage)
    this.subscriber.off('ready', this.onReady)
    // The subscriber keeps an offline queue and has no command deadline: with Redis down or
    // frozen, UNSUBSCRIBE would wait for its return and hold the gateway's close open forever.
    let timer: NodeJS.Timeout | undefined
    await Promise.race([
      this.subscriber.unsubscribe(this.key).catch(() => undefined),
      new Promise((resolve) => (timer = setTimeout(resolve, UNSUBSCRIBE_WAIT_MS)))
    ])
    clearTimeout(timer)
  }
}
