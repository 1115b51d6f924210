import type { IncomingHttpHeaders } from 'node:http'
import type { OpenAIErrorBody } from '../errors/catalogue.js'
import { errorCode } from '../upstream/transport-errors.js'
import type { FailureKind } from './health.js'

/** Answers that say the deployment, not the request, is at fault: the request goes to the next one. */
const FAILOVER_STATUSES: ReadonlySet<number> = new Set([401, 403, 429, 500, 502, 503])

/** Failures in reaching the upstream at all: no byte of the request reached it. */
// Only codes that cannot come from an established connection: EHOSTUNREACH, ENETUNREACH and
// ETIMEDOUT can also end a connection mid-request (keepalive probes), so they count as resets.
const CONNECT_CODES: ReadonlySet<string> = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'UND_ERR_CONNECT_TIMEOUT'])

export interface AttemptFailure {
  kind: FailureKind
  /** Whether the request may go to another deployment (the body permitting). */
  failover: boolean
  /** How long the deployment asked us to stay away (retry-after), if it did. */
  retryAfterMs: number | null
  /** Take the deployment out now, whatever its count of failures. */
  takeOutNow: boolean
}

export function isFailoverStatus(status: number): boolean {
  return FAILOVER_STATUSES.has(status)
}

/**
 * How long an answer asks to wait: `retry-after-ms` (OpenAI's), `x-ms-retry-after-ms` (Azure's),
 * or `retry-after` in seconds or as an HTTP date.
 */
export function retryAfterMs(headers: IncomingHttpHeaders, now: number = Date.now()): number | null {
  for (const name of ['retry-after-ms', 'x-ms-retry-after-ms']) {
    const text = headers[name]
    if (typeof text !== 'string' || text.trim() === '') continue
    const value = Number(text)
    if (Number.isFinite(value) && value >= 0) return value
  }
  const value = headers['retry-after']
  if (typeof value !== 'string' || value.trim() === '') return null
  const seconds = Number(value)
  if (Number.isFinite(seconds)) return seconds >= 0 ? seconds * 1000 : null
  const date = Date.parse(value)
  return Number.isNaN(date) ? null : Math.max(0, date - now)
}

/** What an error answer from a deployment says about it (null: the request's own fault, relay it). */
export function answerFailure(status: number, headers: IncomingHttpHeaders, body: OpenAIErrorBody | null): AttemptFailure | null {
  if (!isFailoverStatus(status)) return null
  const retryAfter = retryAfterMs(headers)
  if (status === 401 || status === 403) return { kind: 'credentials', failover: true, retryAfterMs: null, takeOutNow: true }
  if (status === 429) {
    const quota = body?.error.code === 'insufficient_quota' || body?.error.type === 'insufficient_quota'
    if (quota) return { kind: 'quota', failover: true, retryAfterMs: null, takeOutNow: true }
    return { kind: 'rate_limited', failover: true, retryAfterMs: retryAfter, takeOutNow: false }
  }
  return { kind: 'server_error', failover: true, retryAfterMs: retryAfter, takeOutNow: false }
}

/**
 * What a transport failure says. A failure to connect never reached the upstream, so another
 * deployment may have the request. A reset, or no answer in time, after the upstream had the whole
 * request may mean it is generating (and billing): that request is not sent again.
 */
export function transportFailure(err: unknown, wholeRequestSent: boolean): AttemptFailure {
  const code = errorCode(err)
  if (code !== undefined && CONNECT_CODES.has(code)) {
    return { kind: 'connect', failover: true, retryAfterMs: null, takeOutNow: false }
  }
  const kind = code === 'UND_ERR_HEADERS_TIMEOUT' ? 'timeout' : 'reset'
  return { kind, failover: !wholeRequestSent, retryAfterMs: null, takeOutNow: false }
}
