/**
 * Gateway keys and what is counted against them. A key is shown once, at creation; at rest there
 * is only its SHA-256 digest and a short display prefix. Amounts of money are integers of
 * micro-USD (1 USD = 1_000_000), so that Redis can add them exactly.
 */
export interface KeyRecord {
  /** `key_` + 24 hex; what admins and logs use. */
  id: string
  name: string
  /** The first characters of the key, for people to recognise it (`igw_Ab12Cd34`). */
  prefix: string
  /** SHA-256 of the whole key, hex. */
  digest: string
  /** Model names and `*` patterns (`gpt-image-*`); `['*']` allows every configured model. */
  models: string[]
  /** null: no limit. */
  rpm: number | null
  imagesPerMinute: number | null
  concurrency: number | null
  budgetMicroUsd: number | null
  /** ISO 8601, or null for never. */
  expiresAt: string | null
  disabled: boolean
  createdAt: string
  revokedAt: string | null
  metadata: Record<string, string>
}

export interface NewKey {
  name: string
  models?: string[]
  rpm?: number | null
  imagesPerMinute?: number | null
  concurrency?: number | null
  budgetMicroUsd?: number | null
  expiresAt?: string | null
  metadata?: Record<string, string>
}

/** Fields an update may change (never the digest, id or creation time). */
export type KeyPatch = Partial<
  Pick<KeyRecord, 'name' | 'models' | 'rpm' | 'imagesPerMinute' | 'concurrency' | 'budgetMicroUsd' | 'expiresAt' | 'disabled' | 'metadata'>
>

/** What one image request asks of its key's limits, checked and taken in one atomic step. */
export interface Admission {
  keyId: string
  /** Unique per request; names its concurrency slot and budget reservation. */
  ticket: string
  /** Images this request may make (`n`), for images per minute. */
  images: number
  imagesPerMinute: number | null
  concurrency: number | null
  /** The most this request can cost, reserved until it is settled or released. */
  reserveMicroUsd: number
  budgetMicroUsd: number | null
  /** After this long a slot or reservation that was never released lapses (a crashed instance). */
  leaseMs: number
  nowMs: number
}

export type AdmitResult =
  | { ok: true }
  | { ok: false; limit: 'images' | 'concurrency' | 'budget'; retryAfterMs: number | null; limitValue: number; remaining: number }

/** What a request used, recorded per key per UTC day. */
export interface UsageDelta {
  requests: number
  images: number
  inputTokens: number
  outputTokens: number
  costMicroUsd: number
}

export interface DayUsage extends UsageDelta {
  /** YYYY-MM-DD, UTC. */
  day: string
}

export interface KeyStore {
  readonly kind: 'redis' | 'memory'
  /** Makes a key; the plaintext is returned here and never again. */
  create(input: NewKey): Promise<{ record: KeyRecord; key: string }>
  findByDigest(digest: string): Promise<KeyRecord | null>
  get(id: string): Promise<KeyRecord | null>
  list(): Promise<KeyRecord[]>
  update(id: string, patch: KeyPatch): Promise<KeyRecord | null>
  /** Marks the key revoked (kept for its usage history); it no longer authenticates. */
  revoke(id: string): Promise<KeyRecord | null>

  /** Checks images per minute, concurrency and budget, and takes them all or nothing. */
  admit(admission: Admission): Promise<AdmitResult>
  /**
   * Ends a request: frees its concurrency slot and reservation, adds `usage` (the real cost, or
   * zero when the upstream failed) to what the key has spent and to today's usage. Idempotent per
   * ticket.
   */
  settle(keyId: string, ticket: string, usage: UsageDelta, nowMs: number): Promise<void>
  spentMicroUsd(keyId: string): Promise<number>
  usage(keyId: string, days: number, nowMs: number): Promise<DayUsage[]>

  /** Called with a key id when any instance updates or revokes it (drop it from caches). */
  onInvalidate(listener: (keyId: string) => void): void
  /** Resolves when the store answers; rejects fast when it cannot. */
  ping(): Promise<void>
  close(): Promise<void>
}

/** The store could not answer (Redis down, frozen or timing out): callers answer 503, never 401. */
export class StoreUnavailableError extends Error {
  constructor(cause: unknown) {
    // Only the cause's name and message are kept: ioredis errors carry the command's arguments
    // (a key's digest among them), which must not reach a log line.
    const summary = cause instanceof Error ? `${cause.name}: ${cause.message}` : String(cause)
    super(`the key store is unavailable (${summary})`)
    this.name = 'StoreUnavailableError'
  }
}
