import type { FastifyInstance } from 'fastify'
import { GatewayError } from '../errors/catalogue.js'
import type { KeyRecord, KeyStore } from '../keys/types.js'

/** What relay clients read as "no limit" in the legacy shape (one-api and its forks use the same). */
const UNLIMITED_USD = 100_000_000
const MAX_USAGE_DAYS = 100
const DAY_MS = 86_400_000

function usd(micro: number): number {
  return Math.round(micro / 10_000) / 100
}

function callerOf(key: KeyRecord | null): KeyRecord {
  if (key === null) throw new Error('billing routes require auth')
  return key
}

function parseDay(value: unknown, param: string): number {
  if (typeof value !== 'string' || !/^\d{4}-\d{2}-\d{2}$/.test(value) || Number.isNaN(Date.parse(`${value}T00:00:00Z`))) {
    throw new GatewayError('invalid_value', `Invalid '${param}': expected a date as YYYY-MM-DD.`, { param })
  }
  return Date.parse(`${value}T00:00:00Z`)
}

/**
 * The caller's own balance in the legacy shape that chat front ends and relay dashboards query:
 * GET /v1/dashboard/billing/subscription (the budget) and /usage (what was spent, in cents, as
 * OpenAI's old endpoint reported it).
 */
export default async function billingRoutes(app: FastifyInstance, options: { store: KeyStore }): Promise<void> {
  const { store } = options
  const auth = { auth: true }

  app.get('/v1/dashboard/billing/subscription', { config: auth }, async (request) => {
    const key = callerOf(request.apiKey)
    const limit = key.budgetMicroUsd === null ? UNLIMITED_USD : usd(key.budgetMicroUsd)
    return {
      object: 'billing_subscription',
      has_payment_method: true,
      soft_limit_usd: limit,
      hard_limit_usd: limit,
      system_hard_limit_usd: limit,
      access_until: key.expiresAt === null ? 0 : Math.floor(Date.parse(key.expiresAt) / 1000)
    }
  })

  app.get<{ Querystring: { start_date?: string; end_date?: string } }>(
    '/v1/dashboard/billing/usage',
    { config: auth },
    async (request) => {
      const key = callerOf(request.apiKey)
      const now = Date.now()
      const end = request.query.end_date === undefined ? now + DAY_MS : parseDay(request.query.end_date, 'end_date')
      const start = request.query.start_date === undefined ? end - 30 * DAY_MS : parseDay(request.query.start_date, 'start_date')
      if (start >= end || end - start > MAX_USAGE_DAYS * DAY_MS) {
        throw new GatewayError('invalid_value', `The date range must be 1 to ${MAX_USAGE_DAYS} days, end_date exclusive.`, {
          param: 'start_date'
        })
      }
      // Days are kept back from today; those outside [start, end) are dropped.
      const back = Math.ceil((now - start) / DAY_MS) + 1
      const days = (await store.usage(key.id, Math.min(back, 400), now)).filter((d) => {
        const at = Date.parse(`${d.day}T00:00:00Z`)
        return at >= start && at < end
      })
      const dailyCosts = days
        .map((d) => ({ timestamp: Date.parse(`${d.day}T00:00:00Z`) / 1000, line_items: [{ name: 'Image models', cost: d.costMicroUsd / 10_000 }] }))
        .sort((a, b) => a.timestamp - b.timestamp)
      return {
        object: 'list',
        daily_costs: dailyCosts,
        total_usage: days.reduce((sum, d) => sum + d.costMicroUsd, 0) / 10_000
      }
    }
  )
}
