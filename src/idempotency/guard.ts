import { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Config } from '../config/schema.js'
import { GatewayError } from '../errors/catalogue.js'
import { safeError } from '../errors/safe-error.js'
import type { SharedCounters } from '../keys/backend.js'
import { StoreUnavailableError } from '../keys/types.js'
import type { Endpoint } from '../openai/models.js'
import type { AnswerCopy, AnswerRecorder, LostAnswer } from '../upstream/answer.js'
import { idempotencyKeyOf, scopeOf, type FormWitness } from './fingerprint.js'
import { MEMORY_STORE_MAX_BYTES, MemoryIdempotencyStore } from './memory-store.js'
import { RedisIdempotencyStore } from './redis-store.js'
import { IDEMPOTENCY_LEASE_MS, toParts, type Begin, type IdempotencyStore, type NotStoredReason, type ReplayableAnswer } from './store.js'

/** What `open` returns when it answered the request itself, with the stored answer. */
export const REPLAYED = Symbol('replayed')

/** A repeat that waits looks at the entry again after 25 ms, then ever less often, up to this. */
const POLL_FIRST_MS = 25
const POLL_MAX_MS = 250
/** A repeat refused because the first is still running: the SDKs retry a 409 after this. */
const IN_PROGRESS_RETRY_AFTER_S = '1'
/** Headers of the first answer that belong to it alone: a replay has its own request id and length. */
const PER_REQUEST_HEADERS = ['x-request-id', 'content-length', 'transfer-encoding']

const NOT_STORED_BECAUSE: Record<NotStoredReason, string> = {
  too_large: 'its answer was larger than the gateway keeps (idempotency.maxStoredBytes)',
  event_stream: 'it was answered as an event stream, which is not kept',
  client_left: 'its client disconnected before the answer was complete',
  upstream_failed: 'the upstream failed after it had the request',
  store_failed: 'its answer could not be stored',
  lapsed: 'the gateway instance running it stopped before it finished',
  evicted: 'its answer was dropped to make room'
}

export interface IdempotentRequest {
  endpoint: Endpoint
  /** What identifies the request before it runs (fingerprint.ts); computed only with a key. */
  fingerprint: () => string
  /** The client's lifetime: a repeat stops waiting when it aborts. */
  signal: AbortSignal
  form?: FormWitness | null
}

export interface IdempotencyOptions {
  store: IdempotencyStore
  config: Config['idempotency']
  /** How long a run's entry holds without renewal; renewed every third of it. */
  leaseMs?: number
}

function reused(): GatewayError {
  return new GatewayError(
    'idempotency_key_reused',
    'This Idempotency-Key was already used for a different request to this endpoint. Use a new key for a new request.'
  )
}

function inProgress(requestId: string): GatewayError {
  return new GatewayError('idempotency_in_progress', `The request with this Idempotency-Key (${requestId}) is still running. Retry shortly.`, {
    headers: { 'retry-after': IN_PROGRESS_RETRY_AFTER_S }
  })
}

function notStored(reason: NotStoredReason, requestId: string): GatewayError {
  return new GatewayError(
    'idempotency_answer_not_stored',
    `The request with this Idempotency-Key already ran (${requestId}) and may have been billed, but ${NOT_STORED_BECAUSE[reason]}. ` +
      'It is not run twice; send a new Idempotency-Key to run it again.',
    { headers: { 'x-should-retry': 'false' } }
  )
}

/**
 * Requests with an Idempotency-Key run once per caller, endpoint and key within `ttlMs`; a repeat
 * gets the stored answer with `idempotent-replayed: true`, waits for a first that is still
 * running, or is refused (docs/routing.md#idempotency). The relay flows call `open` after routing
 * and validation, before the key's limits are taken, and hand the run to `dispatch` as its
 * AnswerRecorder.
 */
export class Idempotency {
  readonly store: IdempotencyStore
  private readonly config: Config['idempotency']
  private readonly leaseMs: number

  constructor(options: IdempotencyOptions) {
    this.store = options.store
    this.config = options.config
    this.leaseMs = options.leaseMs ?? IDEMPOTENCY_LEASE_MS
  }

  /** The request's Idempotency-Key (400 when malformed); null when it has none or is not deduplicated. */
  keyOf(request: FastifyRequest): string | null {
    if (!this.config.enabled || request.apiKey === null) return null
    return idempotencyKeyOf(request.headers)
  }

  /**
   * A run to hand to dispatch; REPLAYED when the stored answer was sent; null when the request
   * is not deduplicated. Throws the refusals (422 another request, 409 still running or not stored).
   */
  async open(request: FastifyRequest, reply: FastifyReply, ask: IdempotentRequest): Promise<IdempotentRun | typeof REPLAYED | null> {
    const key = this.keyOf(request)
    const apiKey = request.apiKey
    if (key === null || apiKey === null) return null
    const scope = scopeOf(apiKey.id, ask.endpoint, key)
    const fingerprint = ask.fingerprint()
    const deadline = Date.now() + this.config.waitMs
    for (let poll = 0; ; poll++) {
      const found = await this.begin(scope, fingerprint, request.id)
      if (found.state === 'run') {
        const run = new IdempotentRun(this.store, scope, found.token, request, ask.form ?? null, this.config.maxStoredBytes, this.leaseMs)
        // Dispatch settles the run at once when the client leaves. One never settled (a bug) is not
        // kept alive past its request: its lease lapses, and repeats are refused, never run twice.
        reply.raw.once('close', () => run.stopRenewing())
        return run
      }
      if (found.fingerprint !== fingerprint) throw reused()
      if (found.state === 'done') {
        await replay(request, reply, found.answer, ask.form ?? null)
        return REPLAYED
      }
      if (found.state === 'not_stored') throw notStored(found.reason, found.requestId)
      const left = deadline - Date.now()
      if (left <= 0) throw inProgress(found.requestId)
      await sleep(Math.min(POLL_FIRST_MS * 2 ** poll, POLL_MAX_MS, left), undefined, { signal: ask.signal }).catch(() => undefined)
      if (ask.signal.aborted) throw ask.signal.reason
    }
  }

  private async begin(scope: string, fingerprint: string, requestId: string): Promise<Begin> {
    try {
      return await this.store.begin(scope, fingerprint, requestId)
    } catch (err) {
      // Running it unchecked could bill twice, which is what the client sent the key to prevent.
      if (err instanceof StoreUnavailableError) {
        throw new GatewayError('service_unavailable', 'The gateway cannot check this Idempotency-Key right now. Try again shortly.', { cause: err })
      }
      throw err
    }
  }

  async close(): Promise<void> {
    await this.store.close()
  }
}

/** The stored answer, as the first request's client got it; a multipart repeat's form must match first. */
async function replay(request: FastifyRequest, reply: FastifyReply, answer: ReplayableAnswer, form: FormWitness | null): Promise<void> {
  if (form !== null) {
    // The rest of the upload is read in any case, so that the client reads the answer.
    const digest = await form.readToEnd()
    // A stored answer with no digest (the upstream answered before the form was read whole) cannot
    // vouch for this form: refused rather than replayed to a form it may not be for.
    if (answer.formDigest === null || digest !== answer.formDigest) throw reused()
  }
  request.gateway.idempotent = 'replayed'
  reply
    .code(answer.status)
    .headers(answer.headers)
    .header('content-length', String(answer.size))
    .header('idempotent-replayed', 'true')
    .send(Readable.from(answer.body(), { objectMode: false }))
}

/**
 * One request that holds its key's entry. Settled once, at the points where its Charge is: failed
 * (released: a retry runs again), abandoned (may have cost: kept as not stored), or answered (the
 * copy is stored, or, too large, kept as not stored). Its lease is renewed until then.
 */
export class IdempotentRun implements AnswerRecorder {
  private settled = false
  /** A 2xx answer is being copied: only the copy settles the run now. */
  private copying = false
  private readonly heartbeat: NodeJS.Timeout

  constructor(
    private readonly store: IdempotencyStore,
    private readonly scope: string,
    private readonly token: string,
    private readonly request: FastifyRequest,
    private readonly form: FormWitness | null,
    private readonly maxStoredBytes: number,
    leaseMs: number
  ) {
    this.heartbeat = setInterval(() => {
      this.store.renew(scope, token).catch(() => undefined)
    }, Math.max(1, Math.floor(leaseMs / 3))).unref()
  }

  /** The run cost nothing (also for refusals before dispatch, such as the key's limits): a retry runs. */
  failed(): void {
    // Once a 2xx answer has begun, the upstream did the work, whatever fails after.
    if (this.copying || !this.settle()) return
    this.request.gateway.idempotent = 'released'
    this.finish(this.store.release(this.scope, this.token), false)
  }

  abandoned(why: LostAnswer): void {
    this.notStored(why)
  }

  answer(status: number, headers: Readonly<Record<string, string>>, streaming: boolean): AnswerCopy | null {
    if (this.settled) return null
    if (streaming) {
      this.notStored('event_stream')
      return null
    }
    this.copying = true
    const kept: Record<string, string> = { ...headers }
    for (const name of PER_REQUEST_HEADERS) delete kept[name]
    const deployment = this.request.gateway.deployment
    if (deployment !== null) kept['x-gateway-deployment'] = deployment
    return new StoredCopy(this, status, kept, this.maxStoredBytes)
  }

  /** @internal The run may have cost, and its answer is not kept. */
  notStored(reason: NotStoredReason): void {
    if (!this.settle()) return
    this.request.gateway.idempotent = `not_stored:${reason}`
    this.finish(this.store.markNotStored(this.scope, this.token, reason), false)
  }

  /** @internal The whole answer, read as it went to the client. */
  keep(status: number, headers: Record<string, string>, chunks: Buffer[]): void {
    if (!this.settle()) return
    this.request.gateway.idempotent = 'stored'
    const answer = { status, headers, parts: toParts(chunks), formDigest: this.form?.digest() ?? null }
    this.finish(this.store.complete(this.scope, this.token, answer), true)
  }

  /** @internal */
  stopRenewing(): void {
    if (!this.settled) clearInterval(this.heartbeat)
  }

  private settle(): boolean {
    if (this.settled) return false
    this.settled = true
    return true
  }

  /**
   * The lease is renewed until the store has taken the outcome. A store that fails here leaves the
   * entry running; its lease lapses, and repeats are refused as `lapsed` (never run twice).
   */
  private finish(step: Promise<boolean>, storing: boolean): void {
    step
      .then(
        (held) => {
          if (!held) this.request.log.warn('idempotency entry was no longer held by this request')
        },
        async (err: unknown) => {
          this.request.log.warn({ err: safeError(err) }, 'idempotency store failed')
          if (storing) await this.store.markNotStored(this.scope, this.token, 'store_failed').catch(() => undefined)
        }
      )
      .finally(() => clearInterval(this.heartbeat))
  }
}

/** The answer's chunks, kept as they pass to the client, up to the cap. */
class StoredCopy implements AnswerCopy {
  private chunks: Buffer[] = []
  private size = 0
  private done = false

  constructor(
    private readonly run: IdempotentRun,
    private readonly status: number,
    private readonly headers: Record<string, string>,
    private readonly maxBytes: number
  ) {}

  push(chunk: Buffer): void {
    if (this.done) return
    this.size += chunk.length
    if (this.size <= this.maxBytes) {
      this.chunks.push(chunk)
      return
    }
    this.done = true
    this.chunks = []
    this.run.notStored('too_large')
  }

  end(): void {
    if (this.done) return
    this.done = true
    this.run.keep(this.status, this.headers, this.chunks)
    this.chunks = []
  }

  abort(why: LostAnswer): void {
    if (this.done) return
    this.done = true
    this.chunks = []
    this.run.notStored(why)
  }
}

/** In Redis when the gateway has one (every instance shares the entries), else in this process. */
export function createIdempotency(config: Config['idempotency'], shared: SharedCounters | null): Idempotency {
  const store =
    shared === null
      ? // Room for at least one answer of the largest size kept, or none could ever be replayed.
        new MemoryIdempotencyStore({ ttlMs: config.ttlMs, maxBytes: Math.max(MEMORY_STORE_MAX_BYTES, config.maxStoredBytes) })
      : new RedisIdempotencyStore(shared.redis, { prefix: shared.keyPrefix, ttlMs: config.ttlMs })
  return new Idempotency({ store, config })
}
