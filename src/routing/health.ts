import type { RoutingConfig } from '../config/schema.js'
import type { CooldownBoard, CooldownNotice } from './cooldown-board.js'

/** Why an attempt at a deployment failed, as far as its health is concerned. */
export type FailureKind = 'connect' | 'reset' | 'timeout' | 'server_error' | 'rate_limited' | 'credentials' | 'quota'

export type Availability = 'healthy' | 'probe' | 'cooling'

/** Outcomes kept per deployment for its error rate and latency (this instance's own view). */
const WINDOW = 100

interface Outcome {
  ok: boolean
  ms: number
}

interface State {
  consecutiveFailures: number
  level: number
  coolingUntil: number
  reason: string | null
  /** This instance has a probe in flight; others wait for it. */
  probing: boolean
  outcomes: Outcome[]
  next: number
}

export interface DeploymentStatus {
  id: string
  state: Availability
  coolingUntil: string | null
  reason: string | null
  consecutiveFailures: number
  /** Among the last (up to 100) attempts here. */
  attempts: number
  errorRate: number | null
  latencyMs: { p50: number; p95: number } | null
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? 0
}

/**
 * Each deployment's health: failures in a row put it in cooldown, for a period that doubles with
 * each cooldown in a row (up to a cap); when the period ends one request probes it, and a success
 * puts it back. Some failures take it out at once: its credentials refused, its quota gone, or a
 * 429 with a retry-after. Cooldowns go through the board, so every instance on one Redis agrees;
 * error rates and latencies are each instance's own.
 */
export class DeploymentHealth {
  private readonly states = new Map<string, State>()
  private readonly options: RoutingConfig['cooldown']
  private readonly board: CooldownBoard
  private readonly now: () => number

  constructor(options: RoutingConfig['cooldown'], board: CooldownBoard, now: () => number = Date.now) {
    this.options = options
    this.board = board
    this.now = now
    board.listen((notice) => this.apply(notice))
  }

  private state(id: string): State {
    let state = this.states.get(id)
    if (state === undefined) {
      state = { consecutiveFailures: 0, level: 0, coolingUntil: 0, reason: null, probing: false, outcomes: [], next: 0 }
      this.states.set(id, state)
    }
    return state
  }

  private apply(notice: CooldownNotice): void {
    const state = this.state(notice.id)
    state.coolingUntil = notice.until
    state.level = notice.level
    state.reason = notice.reason
    if (notice.until === 0) state.consecutiveFailures = 0
  }

  availability(id: string): Availability {
    const state = this.states.get(id)
    if (state === undefined || state.coolingUntil === 0) return 'healthy'
    if (this.now() < state.coolingUntil || state.probing) return 'cooling'
    return 'probe'
  }

  /** When the cooldown ends (epoch ms); 0 for a deployment in service. */
  coolingUntil(id: string): number {
    return this.states.get(id)?.coolingUntil ?? 0
  }

  /** Takes this instance's one probe of a deployment whose cooldown has run out. */
  startProbe(id: string): void {
    if (this.availability(id) === 'probe') this.state(id).probing = true
  }

  /** An attempt that ended with no verdict on the deployment (the client left, say) frees its probe. */
  released(id: string): void {
    const state = this.states.get(id)
    if (state !== undefined) state.probing = false
  }

  private record(state: State, outcome: Outcome): void {
    if (state.outcomes.length < WINDOW) state.outcomes.push(outcome)
    else state.outcomes[state.next] = outcome
    state.next = (state.next + 1) % WINDOW
  }

  succeeded(id: string, latencyMs: number): void {
    const state = this.state(id)
    this.record(state, { ok: true, ms: latencyMs })
    state.consecutiveFailures = 0
    state.probing = false
    if (state.coolingUntil !== 0 || state.level !== 0) {
      state.coolingUntil = 0
      state.level = 0
      state.reason = null
      this.board.announce({ id, until: 0, level: 0, reason: null })
    }
  }

  /**
   * `forMs` takes the deployment out at once for that long (a retry-after); `now` takes it out at
   * once for the next step of its doubling period (credentials, quota).
   */
  failed(id: string, kind: FailureKind, latencyMs: number, takeOut: { forMs?: number; now?: boolean } = {}): void {
    const state = this.state(id)
    this.record(state, { ok: false, ms: latencyMs })
    const wasProbe = state.probing
    state.probing = false
    const now = this.now()
    if (!wasProbe && now < state.coolingUntil) {
      // Already out (requests that were in flight when it broke): one cooldown per episode, but a
      // longer retry-after still extends it.
      if (takeOut.forMs !== undefined) this.coolUntil(id, state, now + Math.min(takeOut.forMs, this.options.maxMs), kind)
      return
    }
    state.consecutiveFailures++
    const due = wasProbe || takeOut.now === true || state.consecutiveFailures >= this.options.failures
    if (due) {
      state.level++
      state.consecutiveFailures = 0
      let period = Math.min(this.options.baseMs * 2 ** (state.level - 1), this.options.maxMs)
      if (takeOut.forMs !== undefined) period = Math.max(period, Math.min(takeOut.forMs, this.options.maxMs))
      this.coolUntil(id, state, now + period, kind)
    } else if (takeOut.forMs !== undefined) {
      this.coolUntil(id, state, now + Math.min(takeOut.forMs, this.options.maxMs), kind)
    }
  }

  /** Never shortens a cooldown in force. */
  private coolUntil(id: string, state: State, until: number, reason: FailureKind): void {
    if (until <= state.coolingUntil) return
    state.coolingUntil = until
    state.reason = reason
    this.board.announce({ id, until, level: state.level, reason })
  }

  status(id: string): DeploymentStatus {
    const state = this.states.get(id)
    const availability = this.availability(id)
    if (state === undefined) {
      return { id, state: availability, coolingUntil: null, reason: null, consecutiveFailures: 0, attempts: 0, errorRate: null, latencyMs: null }
    }
    const latencies = state.outcomes.map((o) => o.ms).sort((a, b) => a - b)
    const failures = state.outcomes.filter((o) => !o.ok).length
    return {
      id,
      state: availability,
      coolingUntil: state.coolingUntil === 0 ? null : new Date(state.coolingUntil).toISOString(),
      reason: state.reason,
      consecutiveFailures: state.consecutiveFailures,
      attempts: state.outcomes.length,
      errorRate: state.outcomes.length === 0 ? null : failures / state.outcomes.length,
      latencyMs: latencies.length === 0 ? null : { p50: percentile(latencies, 0.5), p95: percentile(latencies, 0.95) }
    }
  }

  async close(): Promise<void> {
    await this.board.close()
  }
}
