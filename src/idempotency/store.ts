import type { LostAnswer } from '../upstream/answer.js'

/**
 * Where Idempotency-Key outcomes live: one entry per scope (caller's key id, endpoint and the
 * Idempotency-Key, as a digest; see fingerprint.ts), in one of three states:
 *
 * - `running`: a request holds it. The holder renews a short lease while it runs; an entry whose
 *   lease lapsed (its instance died, or lost the store) reads as `not_stored` / `lapsed`, since the
 *   upstream may have done the work.
 * - `done`: the answer is kept (status, headers, body in parts) for replay.
 * - `not_stored`: the request ran and may have cost, but its answer was not kept; repeats are
 *   refused rather than run twice.
 *
 * A request that failed without cost releases its entry, so that a retry runs again. Every entry
 * expires `ttlMs` after it was written last. The memory and Redis stores pass one test suite
 * (test/helpers/idempotency-store-suite.ts).
 */

/** Why a request that ran has no stored answer (a repeat is told, in its 409). */
export type NotStoredReason = LostAnswer | 'too_large' | 'event_stream' | 'store_failed' | 'lapsed' | 'evicted'

/** A successful answer as kept: what relaySuccess sent, minus per-request headers. */
export interface StoredAnswer {
  status: number
  headers: Record<string, string>
  /** The body, in parts of at most ANSWER_PART_BYTES (one Redis command each). */
  parts: Buffer[]
  /**
   * Multipart requests: the form's digest (fingerprint.ts FormDigest), which a repeat's form must
   * match to be replayed. JSON requests: null (their fingerprint is the whole body's digest).
   */
  formDigest: string | null
}

export interface ReplayableAnswer {
  status: number
  headers: Record<string, string>
  /** Body bytes. */
  size: number
  formDigest: string | null
  /** The body, part by part; fails if the entry expired meanwhile. */
  body(): AsyncIterable<Buffer>
}

export type Begin =
  /** The caller holds the entry now: run the request, then settle with the token. */
  | { state: 'run'; token: string }
  | { state: 'running'; fingerprint: string; requestId: string }
  | { state: 'done'; fingerprint: string; requestId: string; answer: ReplayableAnswer }
  | { state: 'not_stored'; fingerprint: string; requestId: string; reason: NotStoredReason }

export interface IdempotencyStore {
  readonly kind: 'memory' | 'redis'
  /** Takes the scope's entry for a new run, or reports what it holds. */
  begin(scope: string, fingerprint: string, requestId: string): Promise<Begin>
  /** Extends a running entry's lease; false when the token no longer holds it. */
  renew(scope: string, token: string): Promise<boolean>
  /** Keeps the answer for replay; false when the token no longer holds the entry. */
  complete(scope: string, token: string, answer: StoredAnswer): Promise<boolean>
  /** The run may have cost but left no answer to keep: repeats are refused with the reason. */
  markNotStored(scope: string, token: string, reason: NotStoredReason): Promise<boolean>
  /** The run cost nothing: the entry goes, and the next request with the key runs. */
  release(scope: string, token: string): Promise<boolean>
  close(): Promise<void>
}

export interface IdempotencyStoreOptions {
  /** How long an entry is kept after it was last written. */
  ttlMs: number
  /** How long a running entry holds without a renewal. */
  leaseMs?: number
}

/**
 * A running entry's lease. Renewed every third of it while the request runs (however long the
 * upload and the image take), so only an instance that died or lost its store lets one lapse.
 */
export const IDEMPOTENCY_LEASE_MS = 30_000

/** Stored answers are cut into parts of this size: one Redis command each stays well inside its timeout. */
export const ANSWER_PART_BYTES = 1024 * 1024

/** The chunks of an answer regrouped into parts of at most `partBytes` (large chunks are cut, small ones joined). */
export function toParts(chunks: readonly Buffer[], partBytes = ANSWER_PART_BYTES): Buffer[] {
  const parts: Buffer[] = []
  let pending: Buffer[] = []
  let pendingBytes = 0
  const flush = (): void => {
    if (pendingBytes > 0) parts.push(pending.length === 1 ? (pending[0] as Buffer) : Buffer.concat(pending, pendingBytes))
    pending = []
    pendingBytes = 0
  }
  for (const chunk of chunks) {
    let offset = 0
    while (offset < chunk.length) {
      const take = Math.min(partBytes - pendingBytes, chunk.length - offset)
      pending.push(chunk.subarray(offset, offset + take))
      pendingBytes += take
      offset += take
      if (pendingBytes === partBytes) flush()
    }
  }
  flush()
  return parts
}
