import { randomUUID } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import { GatewayError } from '../errors/catalogue.js'
import { StoreUnavailableError, type KeyRecord, type KeyStore, type UsageDelta } from '../keys/types.js'
import { safeError } from '../errors/safe-error.js'
import type { Endpoint } from '../openai/models.js'
import type { Fields } from '../openai/validate.js'
import { overBudget, rateLimited } from './headers.js'
import { LocalLimits } from './local-limits.js'

/** What an answer turned out to contain (see billing/usage-tap.ts). */
export interface Tapped {
  imagesReturned: number | null
  usage: unknown
  partialImages: number
}

/** Prices, as the charging path needs them. */
export interface CostModel {
  /** The most the request can cost, in micro-USD (0 for a model with no price). */
  worstCase(model: string, endpoint: Endpoint, fields: Fields): number
  /** What the answer cost, from its usage block or the images it returned. */
  actual(model: string, endpoint: Endpoint, fields: Fields, tapped: Tapped): number
  /** Whether the table has a price under this name. */
  priced(model: string): boolean
}

export interface MeterOptions {
  store: KeyStore
  costs: CostModel
  leaseMs: number
  log: FastifyBaseLogger
}

const SETTLE_RETRY_MS = 1_000
/**
 * How long close() waits for requests still being settled. When a shutdown cuts requests short,
 * their relays settle a few event-loop turns after the connections closed, after close() began.
 */
const CLOSE_WAIT_MS = 500
const MAX_PENDING_SETTLEMENTS = 10_000

interface Settlement {
  keyId: string
  ticket: string
  usage: UsageDelta
  nowMs: number
}

/**
 * Takes each request's share of its key's limits before dispatch and settles it after. While the
 * store is unreachable: limits fall back to this process (requests of keys with a budget are
 * refused with 503, as spending cannot be checked), and settlements wait in a bounded queue that
 * is replayed when the store is back (settling is idempotent per ticket).
 */
export class Meter {
  private readonly options: MeterOptions
  private readonly fallback = new Map<string, LocalLimits>()
  private readonly pending: Settlement[] = []
  private retryTimer: NodeJS.Timeout | null = null
  /** Tickets admitted and not yet settled, and settlements sent and not yet answered: close() waits for both. */
  private readonly open = new Set<string>()
  private readonly sending = new Set<Promise<void>>()

  constructor(options: MeterOptions) {
    this.options = options
  }

  /**
   * The name a request is priced under: the client's model name when the price table has it,
   * else the upstream's (an alias is priced as the model it stands for).
   */
  priceName(clientModel: string, upstreamModel: string): string {
    return this.options.costs.priced(clientModel) ? clientModel : upstreamModel
  }

  async admit(key: KeyRecord, model: string, endpoint: Endpoint, fields: Fields): Promise<Charge> {
    const images = requestedImages(fields)
    const reserveMicroUsd = key.budgetMicroUsd === null ? 0 : this.options.costs.worstCase(model, endpoint, fields)
    return this.take(key, model, endpoint, fields, images, reserveMicroUsd, key.concurrency)
  }

  /**
   * Takes more for a request whose fields grew after it was admitted (a multipart `n` sent after
   * the model): the extra images and reservation, in a second ticket settled with the first.
   */
  async topUp(charge: Charge, key: KeyRecord, fields: Fields): Promise<void> {
    const extraImages = requestedImages(fields) - charge.images
    const worst = key.budgetMicroUsd === null ? 0 : this.options.costs.worstCase(charge.model, charge.endpoint, fields)
    const extraReserve = Math.max(0, worst - charge.reservedMicroUsd)
    if (extraImages <= 0 && extraReserve <= 0) return
    const extra = await this.take(key, charge.model, charge.endpoint, fields, Math.max(0, extraImages), extraReserve, null)
    charge.attach(extra)
  }

  private async take(
    key: KeyRecord,
    model: string,
    endpoint: Endpoint,
    fields: Fields,
    images: number,
    reserveMicroUsd: number,
    concurrency: number | null
  ): Promise<Charge> {
    const admission = {
      keyId: key.id,
      ticket: randomUUID(),
      images,
      imagesPerMinute: key.imagesPerMinute,
      concurrency,
      reserveMicroUsd,
      budgetMicroUsd: key.budgetMicroUsd,
      leaseMs: this.options.leaseMs,
      nowMs: Date.now()
    }
    // Nothing to check: no round trip on the way in (usage is still recorded at settlement).
    if (key.imagesPerMinute === null && concurrency === null && key.budgetMicroUsd === null) {
      this.open.add(admission.ticket)
      return new Charge(this, key.id, admission.ticket, model, endpoint, fields, images, reserveMicroUsd, null)
    }
    let result
    let local: LocalLimits | null = null
    try {
      result = await this.options.store.admit(admission)
    } catch (err) {
      if (key.budgetMicroUsd !== null) {
        this.release(admission.keyId, admission.ticket)
        throw new GatewayError('service_unavailable', 'The gateway cannot check this key\'s budget right now. Try again shortly.', { cause: err })
      }
      local = this.fallback.get(key.id) ?? new LocalLimits()
      this.fallback.set(key.id, local)
      result = local.admit({ ...admission, budgetMicroUsd: null }, 0)
    }
    if (!result.ok) {
      if (local !== null) this.release(admission.keyId, admission.ticket)
      if (result.limit === 'budget') throw overBudget(result.limitValue, result.remaining)
      throw rateLimited(result.limit, result.limitValue, result.remaining, result.retryAfterMs)
    }
    this.open.add(admission.ticket)
    return new Charge(this, key.id, admission.ticket, model, endpoint, fields, images, reserveMicroUsd, local)
  }

  /**
   * Frees a ticket whose admission failed in the store and that no Charge will settle. The store
   * may have run the admission and lost only its answer (a command that timed out against a
   * frozen Redis runs when it thaws): its slot and reservation would hold the key until the lease
   * lapses (15 min), a key stuck at 429 (LiteLLM #20256). Settling is idempotent per ticket.
   */
  private release(keyId: string, ticket: string): void {
    // One attempt, never queued: when the admission did reach Redis, this command follows it on
    // the same connection and runs after it even if its own answer times out; when it did not, there
    // is nothing to free. Queued, a flood of refusals during an outage would push real usage out of
    // the bounded settlement queue.
    this.options.store.settle(keyId, ticket, RELEASE_ONLY, Date.now()).catch(() => undefined)
  }

  /** @internal */
  settle(settlement: Settlement, local: LocalLimits | null): void {
    local?.release(settlement.ticket)
    this.open.delete(settlement.ticket)
    const sent = this.options.store.settle(settlement.keyId, settlement.ticket, settlement.usage, settlement.nowMs).catch((err: unknown) => {
      // Only an unreachable store is worth waiting for; anything else would fail the same way forever.
      if (err instanceof StoreUnavailableError) this.enqueue(settlement)
      else this.options.log.error({ keyId: settlement.keyId, err: safeError(err) }, 'usage settlement refused by the key store')
    })
    this.sending.add(sent)
    void sent.finally(() => this.sending.delete(sent))
  }

  costOf(model: string, endpoint: Endpoint, fields: Fields, tapped: Tapped): number {
    return this.options.costs.actual(model, endpoint, fields, tapped)
  }

  private enqueue(settlement: Settlement): void {
    if (this.pending.length >= MAX_PENDING_SETTLEMENTS) {
      const dropped = this.pending.shift()
      this.options.log.warn({ keyId: dropped?.keyId }, 'usage settlement dropped: the key store has been unreachable too long')
    }
    this.pending.push(settlement)
    this.retryTimer ??= setTimeout(() => void this.replay(), SETTLE_RETRY_MS).unref()
  }

  private async replay(): Promise<void> {
    this.retryTimer = null
    while (this.pending.length > 0) {
      const next = this.pending[0] as Settlement
      try {
        await this.options.store.settle(next.keyId, next.ticket, next.usage, next.nowMs)
      } catch (err) {
        if (err instanceof StoreUnavailableError) {
          this.retryTimer = setTimeout(() => void this.replay(), SETTLE_RETRY_MS).unref()
          return
        }
        this.options.log.error({ keyId: next.keyId, err: safeError(err) }, 'usage settlement refused by the key store')
      }
      this.pending.shift()
    }
  }

  /** Settlements still waiting for the store (for tests and shutdown). */
  get pendingSettlements(): number {
    return this.pending.length
  }

  /** Waits a little for requests still settling, then stops retrying, after one last attempt at what is still queued. */
  async close(): Promise<void> {
    const deadline = Date.now() + CLOSE_WAIT_MS
    while ((this.open.size > 0 || this.sending.size > 0) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 10))
    }
    if (this.open.size > 0) {
      this.options.log.warn({ requests: this.open.size }, 'closing with requests never settled: their slots and reservations lapse with their lease')
    }
    if (this.retryTimer !== null) clearTimeout(this.retryTimer)
    this.retryTimer = null
    if (this.pending.length > 0) await this.replay()
    if (this.retryTimer !== null) clearTimeout(this.retryTimer)
    this.retryTimer = null
    if (this.pending.length > 0) {
      this.options.log.warn({ settlements: this.pending.length }, 'closing with usage settlements the key store never took')
    }
  }
}

function requestedImages(fields: Fields): number {
  const n = fields.get('n')
  const value = typeof n === 'number' ? n : typeof n === 'string' ? Number(n) : 1
  return Number.isInteger(value) && value > 0 ? value : 1
}

const NO_USAGE: UsageDelta = { requests: 1, images: 0, inputTokens: 0, outputTokens: 0, costMicroUsd: 0 }
/** A top-up ticket only releases what it held; its request is counted on the main ticket. */
const RELEASE_ONLY: UsageDelta = { ...NO_USAGE, requests: 0 }

/** A token count from the upstream's usage, as a whole number the stores can add (odd values count 0). */
function tokens(usage: unknown, field: 'input_tokens' | 'output_tokens'): number {
  if (usage === null || typeof usage !== 'object') return 0
  const value = (usage as Record<string, unknown>)[field]
  return typeof value === 'number' && Number.isFinite(value) && value > 0 ? Math.min(Math.round(value), 2 ** 40) : 0
}

/** One request's hold on its key's limits; settled exactly once. */
export class Charge {
  private settled = false
  private readonly extras: Charge[] = []

  constructor(
    private readonly meter: Meter,
    readonly keyId: string,
    readonly ticket: string,
    readonly model: string,
    readonly endpoint: Endpoint,
    private readonly fields: Fields,
    readonly images: number,
    readonly reservedMicroUsd: number,
    private readonly local: LocalLimits | null
  ) {}

  /** @internal A top-up, settled (released) together with this charge (at once if that is done). */
  attach(extra: Charge): void {
    if (this.settled) extra.finish(RELEASE_ONLY)
    else this.extras.push(extra)
  }

  private get totalReservedMicroUsd(): number {
    return this.extras.reduce((sum, extra) => sum + extra.reservedMicroUsd, this.reservedMicroUsd)
  }

  /** The upstream answered and the answer reached the client: charge what it used. */
  answered(tapped: Tapped): void {
    this.finish({
      requests: 1,
      images: tapped.imagesReturned ?? 0,
      inputTokens: tokens(tapped.usage, 'input_tokens'),
      outputTokens: tokens(tapped.usage, 'output_tokens'),
      costMicroUsd: this.meter.costOf(this.model, this.endpoint, this.fields, tapped)
    })
  }

  /** The upstream refused or failed: nothing was made, nothing is charged. */
  failed(): void {
    this.finish(NO_USAGE)
  }

  /**
   * The client left while the upstream was working or answering: the upstream may have made (and
   * billed) the images, so the reservation is kept as the cost.
   */
  abandoned(): void {
    this.finish({ ...NO_USAGE, costMicroUsd: this.totalReservedMicroUsd })
  }

  private finish(usage: UsageDelta): void {
    if (this.settled) return
    this.settled = true
    const nowMs = Date.now()
    this.meter.settle({ keyId: this.keyId, ticket: this.ticket, usage, nowMs }, this.local)
    for (const extra of this.extras) extra.finish(RELEASE_ONLY)
  }
}
