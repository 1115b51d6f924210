import { GatewayError } from '../errors/catalogue.js'

/** A duration the way OpenAI writes its x-ratelimit-reset-* headers: `120ms`, `12s`, `6m0s`. */
export function goDuration(ms: number): string {
  const whole = Math.max(0, Math.ceil(ms))
  if (whole < 1000) return `${whole}ms`
  const seconds = Math.ceil(whole / 1000)
  if (seconds < 60) return `${seconds}s`
  return `${Math.floor(seconds / 60)}m${seconds % 60}s`
}

export type LimitDimension = 'requests' | 'images' | 'concurrency'

/**
 * 429 for a key over one of its limits, with OpenAI's header names (`x-ratelimit-*-requests`,
 * `-images`) and `retry-after` in whole seconds (the SDKs honour it up to 60 s).
 */
export function rateLimited(
  dimension: LimitDimension,
  limit: number,
  remaining: number,
  retryAfterMs: number | null
): GatewayError {
  const headers: Record<string, string> = {
    [`x-ratelimit-limit-${dimension}`]: String(limit),
    [`x-ratelimit-remaining-${dimension}`]: String(remaining)
  }
  if (retryAfterMs !== null) {
    headers[`x-ratelimit-reset-${dimension}`] = goDuration(retryAfterMs)
    headers['retry-after'] = String(Math.max(1, Math.ceil(retryAfterMs / 1000)))
    headers['retry-after-ms'] = String(Math.max(0, Math.ceil(retryAfterMs)))
  }
  const what =
    dimension === 'requests'
      ? `${limit} requests per minute`
      : dimension === 'images'
        ? `${limit} images per minute`
        : `${limit} concurrent requests`
  const when = retryAfterMs === null ? 'Try again when one of its requests has finished.' : `Try again in ${goDuration(retryAfterMs)}.`
  return new GatewayError('rate_limit_exceeded', `Rate limit reached for this key: ${what}. ${when}`, { headers })
}

export function overBudget(budgetMicroUsd: number, remainingMicroUsd: number): GatewayError {
  const usd = (micro: number): string => (micro / 1_000_000).toFixed(2)
  return new GatewayError(
    'insufficient_quota',
    `This key's budget of $${usd(budgetMicroUsd)} cannot cover this request ($${usd(remainingMicroUsd)} left).`,
    { headers: { 'x-should-retry': 'false' } }
  )
}
