import type { Admission, AdmitResult } from '../keys/types.js'

const MINUTE_MS = 60_000

interface Lease {
  expiresAtMs: number
  reservedMicroUsd: number
}

/**
 * One key's images-per-minute window, concurrency slots and budget reservations, in this process.
 * The in-process key store keeps one per key; the Redis path falls back to them while Redis is
 * down, so limits hold (per instance) instead of switching off. Same rules as the Redis script.
 */
export class LocalLimits {
  private readonly leases = new Map<string, Lease>()
  private window = { startMs: 0, images: 0 }

  admit(a: Admission, spentMicroUsd: number): AdmitResult {
    for (const [ticket, lease] of this.leases) if (lease.expiresAtMs <= a.nowMs) this.leases.delete(ticket)
    const windowStart = a.nowMs - (a.nowMs % MINUTE_MS)
    if (this.window.startMs !== windowStart) this.window = { startMs: windowStart, images: 0 }
    if (a.imagesPerMinute !== null && this.window.images + a.images > a.imagesPerMinute) {
      return {
        ok: false,
        limit: 'images',
        retryAfterMs: windowStart + MINUTE_MS - a.nowMs,
        limitValue: a.imagesPerMinute,
        remaining: Math.max(0, a.imagesPerMinute - this.window.images)
      }
    }
    if (a.concurrency !== null && this.leases.size >= a.concurrency) {
      return { ok: false, limit: 'concurrency', retryAfterMs: null, limitValue: a.concurrency, remaining: 0 }
    }
    if (a.budgetMicroUsd !== null) {
      let committed = spentMicroUsd
      for (const lease of this.leases.values()) committed += lease.reservedMicroUsd
      if (committed + a.reserveMicroUsd > a.budgetMicroUsd) {
        return {
          ok: false,
          limit: 'budget',
          retryAfterMs: null,
          limitValue: a.budgetMicroUsd,
          remaining: Math.max(0, a.budgetMicroUsd - committed)
        }
      }
    }
    this.window.images += a.images
    this.leases.set(a.ticket, { expiresAtMs: a.nowMs + a.leaseMs, reservedMicroUsd: a.reserveMicroUsd })
    return { ok: true }
  }

  /** Frees the ticket's slot and reservation; true if it held one. */
  release(ticket: string): boolean {
    return this.leases.delete(ticket)
  }
}
