import { LocalLimits } from '../limits/local-limits.js'
import { digestOf, newKey, newRecord } from './key-material.js'
import type { Admission, AdmitResult, DayUsage, KeyPatch, KeyRecord, KeyStore, NewKey, UsageDelta } from './types.js'

/** A settled ticket is remembered this long (settling twice must not charge twice), as in Redis. */
const SETTLED_MEMORY_MS = 60 * 60_000

interface KeyState {
  record: KeyRecord
  limits: LocalLimits
  /** ticket -> when it was settled; pruned as new ones come. */
  settled: Map<string, number>
  spentMicroUsd: number
  usage: Map<string, UsageDelta>
}

function utcDay(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10)
}

function emptyUsage(): UsageDelta {
  return { requests: 0, images: 0, inputTokens: 0, outputTokens: 0, costMicroUsd: 0 }
}

/**
 * The key store for one instance with no Redis: a first run, development, tests. Same semantics
 * as the Redis store (the shared suite in test/helpers/key-store-suite.ts runs on both).
 */
export class MemoryKeyStore implements KeyStore {
  readonly kind = 'memory' as const
  private readonly keys = new Map<string, KeyState>()
  private readonly byDigest = new Map<string, string>()
  private readonly listeners: ((keyId: string) => void)[] = []

  async create(input: NewKey): Promise<{ record: KeyRecord; key: string }> {
    return this.createWith(newKey(), input)
  }

  /** A key whose plaintext the operator chose (GATEWAY_DEV_KEY); only the in-process store takes one. */
  async importKey(key: string, input: NewKey): Promise<KeyRecord> {
    return (await this.createWith({ key, digest: digestOf(key), prefix: key.slice(0, 12) }, input)).record
  }

  private async createWith(
    material: { key: string; digest: string; prefix: string },
    input: NewKey
  ): Promise<{ record: KeyRecord; key: string }> {
    const record = newRecord(input, material)
    this.keys.set(record.id, { record, limits: new LocalLimits(), settled: new Map(), spentMicroUsd: 0, usage: new Map() })
    this.byDigest.set(record.digest, record.id)
    return { record: structuredClone(record), key: material.key }
  }

  async findByDigest(digest: string): Promise<KeyRecord | null> {
    const id = this.byDigest.get(digest)
    return id === undefined ? null : this.get(id)
  }

  async get(id: string): Promise<KeyRecord | null> {
    const state = this.keys.get(id)
    return state === undefined ? null : structuredClone(state.record)
  }

  async list(): Promise<KeyRecord[]> {
    return [...this.keys.values()].map((s) => structuredClone(s.record))
  }

  async update(id: string, patch: KeyPatch): Promise<KeyRecord | null> {
    const state = this.keys.get(id)
    if (state === undefined) return null
    state.record = { ...state.record, ...structuredClone(patch) }
    this.invalidate(id)
    return structuredClone(state.record)
  }

  async revoke(id: string): Promise<KeyRecord | null> {
    const state = this.keys.get(id)
    if (state === undefined) return null
    state.record = { ...state.record, revokedAt: state.record.revokedAt ?? new Date().toISOString() }
    this.invalidate(id)
    return structuredClone(state.record)
  }

  async admit(a: Admission): Promise<AdmitResult> {
    const state = this.keys.get(a.keyId)
    if (state === undefined) return { ok: false, limit: 'budget', retryAfterMs: null, limitValue: 0, remaining: 0 }
    return state.limits.admit(a, state.spentMicroUsd)
  }

  async settle(keyId: string, ticket: string, usage: UsageDelta, nowMs: number): Promise<void> {
    const state = this.keys.get(keyId)
    if (state === undefined || state.settled.has(ticket)) return
    for (const [old, at] of state.settled) {
      // Map order is insertion order: the first one still young ends the pruning.
      if (nowMs - at < SETTLED_MEMORY_MS) break
      state.settled.delete(old)
    }
    state.settled.set(ticket, nowMs)
    state.limits.release(ticket)
    state.spentMicroUsd += usage.costMicroUsd
    const day = utcDay(nowMs)
    const today = state.usage.get(day) ?? emptyUsage()
    state.usage.set(day, {
      requests: today.requests + usage.requests,
      images: today.images + usage.images,
      inputTokens: today.inputTokens + usage.inputTokens,
      outputTokens: today.outputTokens + usage.outputTokens,
      costMicroUsd: today.costMicroUsd + usage.costMicroUsd
    })
  }

  async spentMicroUsd(keyId: string): Promise<number> {
    return this.keys.get(keyId)?.spentMicroUsd ?? 0
  }

  async usage(keyId: string, days: number, nowMs: number): Promise<DayUsage[]> {
    const state = this.keys.get(keyId)
    const out: DayUsage[] = []
    for (let i = 0; i < days; i++) {
      const day = utcDay(nowMs - i * 86_400_000)
      out.push({ day, ...(state?.usage.get(day) ?? emptyUsage()) })
    }
    return out
  }

  onInvalidate(listener: (keyId: string) => void): void {
    this.listeners.push(listener)
  }

  private invalidate(id: string): void {
    for (const listener of this.listeners) listener(id)
  }

  async ping(): Promise<void> {}

  async close(): Promise<void> {}
}

