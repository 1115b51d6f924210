import { Agent, request as httpRequest, type IncomingHttpHeaders } from 'node:http'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'

/*
 * Group F of reliability.md section 5 (Redis faults): steady traffic, a node loop at a fixed rate
 * over keep-alive connections, while Redis fails. The Redis is test/helpers/redis.ts's, started
 * with `{ persistent: true, debugCommand: true }` as a deployment's is (docker-compose.yml runs it
 * with append-only persistence): it comes back with its keys, slots and counters after a stop or a
 * kill -9, and it accepts `DEBUG SLEEP`.
 */

export interface ShotSpec {
  /** Which series the answer belongs to (a key's role in the case). */
  label: string
  key: string
  body: unknown
  path?: string
}

export interface Shot {
  label: string
  /** When it was sent, ms since the traffic began. */
  sentMs: number
  latencyMs: number
  /** 0: no answer within the client's deadline (a hang) or a connection error. */
  status: number
  code: string | null
  body: string
  headers: IncomingHttpHeaders
}

export interface Traffic {
  shots: Shot[]
  /** ms since the traffic began. */
  now(): number
  /** Stops sending and resolves once every request sent has ended. */
  stop(): Promise<Shot[]>
}

const CLIENT_DEADLINE_MS = 5_000

function send(agent: Agent, baseUrl: string, spec: ShotSpec): Promise<Omit<Shot, 'label' | 'sentMs'>> {
  const payload = Buffer.from(JSON.stringify(spec.body))
  const started = performance.now()
  return new Promise((resolve) => {
    const done = (status: number, body: string, headers: IncomingHttpHeaders): void => {
      let code: string | null = null
      try {
        code = (JSON.parse(body) as { error?: { code?: string } }).error?.code ?? null
      } catch {
        // not JSON: an answer of ours would have been
      }
      resolve({ latencyMs: performance.now() - started, status, code, body, headers })
    }
    const req = httpRequest(
      `${baseUrl}${spec.path ?? '/v1/images/generations'}`,
      {
        method: 'POST',
        agent,
        headers: { 'content-type': 'application/json', 'content-length': String(payload.length), authorization: `Bearer ${spec.key}` },
        timeout: CLIENT_DEADLINE_MS
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (chunk: Buffer) => chunks.push(chunk))
        res.on('end', () => done(res.statusCode ?? 0, Buffer.concat(chunks).toString('utf8'), res.headers))
        res.on('error', () => done(0, 'response error', {}))
      }
    )
    req.on('timeout', () => req.destroy(new Error('client deadline')))
    req.on('error', (error) => done(0, String(error), {}))
    req.end(payload)
  })
}

/**
 * Sends `rps` requests a second (`next(i)` says which), each without waiting for the previous
 * ones, over a keep-alive agent; every answer is recorded with its latency.
 */
export function steadyTraffic(baseUrl: string, rps: number, next: (i: number) => ShotSpec | null): Traffic {
  const agent = new Agent({ keepAlive: true, maxSockets: 64 })
  const shots: Shot[] = []
  const inFlight = new Set<Promise<void>>()
  const began = performance.now()
  const now = (): number => performance.now() - began
  const gapMs = 1000 / rps
  let sent = 0
  let stopped = false
  let timer: NodeJS.Timeout | null = null
  const tick = (): void => {
    if (stopped) return
    // Catch up after a slow turn of the event loop, so the rate holds on a loaded machine.
    while (sent * gapMs <= now()) {
      const spec = next(sent)
      sent += 1
      if (spec === null) continue
      const sentMs = now()
      const flight = send(agent, baseUrl, spec).then((answer) => {
        shots.push({ label: spec.label, sentMs, ...answer })
      })
      inFlight.add(flight)
      void flight.finally(() => inFlight.delete(flight))
    }
    timer = setTimeout(tick, Math.max(1, sent * gapMs - now()))
  }
  tick()
  return {
    shots,
    now,
    async stop() {
      stopped = true
      if (timer !== null) clearTimeout(timer)
      await Promise.all([...inFlight])
      agent.destroy()
      return shots
    }
  }
}

/** Counts of each status (and error code) in `shots`, e.g. {"200": 40, "503 service_unavailable": 3}. */
export function tally(shots: Shot[]): Record<string, number> {
  const counts: Record<string, number> = {}
  for (const shot of shots) {
    const name = shot.code === null ? String(shot.status) : `${shot.status} ${shot.code}`
    counts[name] = (counts[name] ?? 0) + 1
  }
  return counts
}

export function maxLatency(shots: Shot[]): number {
  return shots.reduce((max, shot) => Math.max(max, shot.latencyMs), 0)
}

/** Sends `specs` at `rps` (each without waiting for the previous ones) and resolves with every answer. */
export async function paced(baseUrl: string, rps: number, specs: ShotSpec[]): Promise<Shot[]> {
  const traffic = steadyTraffic(baseUrl, rps, (i) => specs[i] ?? null)
  while (traffic.shots.length < specs.length && traffic.now() < specs.length * (1000 / rps) + CLIENT_DEADLINE_MS + 1_000) {
    await sleep(20)
  }
  return traffic.stop()
}
