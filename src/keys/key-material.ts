import { createHash, randomBytes } from 'node:crypto'
import type { KeyRecord, NewKey } from './types.js'

/** Recognisable in logs, configs and secret scanners; the rest is 256 random bits. */
export const KEY_PREFIX = 'igw_'
const DISPLAY_PREFIX_CHARS = 12

export function digestOf(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex')
}

/** A new key (shown once), its digest (stored) and its display prefix (stored). */
export function newKey(): { key: string; digest: string; prefix: string } {
  const key = `${KEY_PREFIX}${randomBytes(32).toString('base64url')}`
  return { key, digest: digestOf(key), prefix: key.slice(0, DISPLAY_PREFIX_CHARS) }
}

export function newKeyId(): string {
  return `key_${randomBytes(12).toString('hex')}`
}

/**
 * A cheap filter before any lookup: plain characters and a sane length. Issued keys are
 * `igw_` + 43 characters; a development key (GATEWAY_DEV_KEY) may be any such string of 16 or more.
 */
export function looksLikeKey(candidate: string): boolean {
  return /^[A-Za-z0-9_.-]{16,200}$/.test(candidate)
}

/** A new key's record, as every store keeps it (defaults: every model, no limits, no expiry). */
export function newRecord(input: NewKey, material: { digest: string; prefix: string }): KeyRecord {
  return {
    id: newKeyId(),
    name: input.name,
    prefix: material.prefix,
    digest: material.digest,
    models: input.models ?? ['*'],
    rpm: input.rpm ?? null,
    imagesPerMinute: input.imagesPerMinute ?? null,
    concurrency: input.concurrency ?? null,
    budgetMicroUsd: input.budgetMicroUsd ?? null,
    expiresAt: input.expiresAt ?? null,
    disabled: false,
    createdAt: new Date().toISOString(),
    revokedAt: null,
    metadata: input.metadata ?? {}
  }
}
