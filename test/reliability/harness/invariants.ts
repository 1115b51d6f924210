import { readFileSync, readdirSync, readlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import type { Test } from 'tap'
import type { Received } from '../../helpers/fake-upstream.js'
import type { Gateway } from '../../helpers/gateway.js'

/*
 * The checks reliability.md section 5 runs after every case, as functions a test calls: nothing
 * leaked (memory, slots, reservations, sockets, temp files), nothing secret shown, every error in
 * OpenAI's envelope. The gateway runs in the test's own process, so its memory, file descriptors
 * and sockets are this process's.
 */

setFlagsFromString('--expose-gc')
const collect = runInNewContext('gc') as () => void

/** Resident set size in MiB after a full garbage collection. */
export function rssAfterGcMb(): number {
  collect()
  collect()
  return process.memoryUsage().rss / 1024 / 1024
}

/** Samples this process's RSS every `everyMs` until stopped; the peak in MiB. */
export function rssSampler(everyMs = 20): { stop(): number } {
  let peak = process.memoryUsage().rss
  const timer = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage().rss)
  }, everyMs)
  return {
    stop() {
      clearInterval(timer)
      return Math.max(peak, process.memoryUsage().rss) / 1024 / 1024
    }
  }
}

/** The states tcpSockets tells apart, as /proc/net/tcp writes them (include/net/tcp_states.h). */
const TCP_STATES = { ESTABLISHED: '01', CLOSE_WAIT: '08' } as const

/**
 * Sockets in `state` (in /proc/net/tcp and tcp6) whose local or remote port is one of `ports`, or
 * with `side: 'remote'` whose remote port is (the connecting side only, not the accepted one).
 * CLOSE_WAIT: the peer closed, we never did.
 */
export function tcpSockets(state: keyof typeof TCP_STATES, ports: number[], side: 'either' | 'remote' = 'either'): number {
  const wanted = new Set(ports)
  let count = 0
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string
    try {
      text = readFileSync(table, 'utf8')
    } catch {
      continue
    }
    for (const line of text.split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/)
      if (fields.length < 4 || fields[3] !== TCP_STATES[state]) continue
      const local = parseInt((fields[1] ?? '').split(':')[1] ?? '', 16)
      const remote = parseInt((fields[2] ?? '').split(':')[1] ?? '', 16)
      if (wanted.has(remote) || (side === 'either' && wanted.has(local))) count += 1
    }
  }
  return count
}

/**
 * Spool files this process holds open (they are unlinked as soon as they are made, so the directory
 * never shows them: an open descriptor is the only trace a leaked one leaves), plus any that are
 * still visible in the temp directory.
 */
export function spoolFiles(): number {
  let open = 0
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (/image-gateway-[0-9a-f]+\.spool/.test(readlinkSync(`/proc/self/fd/${fd}`))) open += 1
    } catch {
      // closed between the listing and the readlink
    }
  }
  const visible = readdirSync(tmpdir()).filter((name) => /^image-gateway-[0-9a-f]+\.spool$/.test(name)).length
  return open + visible
}

/** The port a gateway or upstream URL listens on. */
export function portOf(url: string): number {
  return Number(new URL(url).port)
}

/**
 * True when no request of any key holds a concurrency slot or a budget reservation: for each key a
 * probe admission with a concurrency of 1 and a budget of exactly what is spent plus one micro-USD
 * must pass (its own slot is then released, with no usage).
 */
export async function noSlotsOrReservations(gateway: Gateway): Promise<{ ok: boolean; held: string[] }> {
  const held: string[] = []
  for (const record of await gateway.store.list()) {
    const spent = await gateway.store.spentMicroUsd(record.id)
    const ticket = `probe-${record.id}-${Date.now()}`
    const result = await gateway.store.admit({
      keyId: record.id,
      ticket,
      images: 0,
      imagesPerMinute: null,
      concurrency: 1,
      reserveMicroUsd: 1,
      budgetMicroUsd: spent + 1,
      leaseMs: 60_000,
      nowMs: Date.now()
    })
    if (result.ok) await gateway.store.settle(record.id, ticket, { requests: 0, images: 0, inputTokens: 0, outputTokens: 0, costMicroUsd: 0 }, Date.now())
    else held.push(`${record.id}: ${result.limit}`)
  }
  return { ok: held.length === 0, held }
}

/** Resolves true once every request the upstream received has ended (body whole or cut off). */
export async function upstreamSettled(received: Received[], timeoutMs = 3000): Promise<boolean> {
  const timeout = new Promise<false>((resolve) => setTimeout(() => resolve(false), timeoutMs).unref())
  return Promise.race([Promise.all(received.map((r) => r.done)).then(() => true as const), timeout])
}

/** Test secrets that must never be shown: client keys, the upstream's key, Authorization values. */
export function secretsIn(text: string, secrets: string[]): string[] {
  return secrets.filter((secret) => secret !== '' && text.includes(secret))
}

/**
 * OpenAI's error envelope, exactly: `error` with message (a non-empty string), type (a string),
 * param and code (a string or null), and no stack trace anywhere in the body.
 */
export function envelopeProblems(body: string): string[] {
  const problems: string[] = []
  if (/\n\s+at .+:\d+:\d+\)?/.test(body) || /node_modules|\/src\/.+\.ts/.test(body)) problems.push('a stack trace or source path')
  let parsed: unknown
  try {
    parsed = JSON.parse(body)
  } catch {
    return [...problems, `not JSON: ${body.slice(0, 120)}`]
  }
  const error = (parsed as { error?: Record<string, unknown> } | null)?.error
  if (typeof error !== 'object' || error === null) return [...problems, 'no error object']
  if (typeof error.message !== 'string' || error.message === '') problems.push('no message')
  if (typeof error.type !== 'string') problems.push('no type')
  for (const field of ['param', 'code'] as const) {
    if (!(field in error) || (error[field] !== null && typeof error[field] !== 'string')) problems.push(`${field} missing or not string|null`)
  }
  return problems
}

/** Asserts an error answer: its status, its envelope and (when given) its code. */
export function assertError(t: Test, answer: { status: number; body: string }, status: number, code?: string | null): void {
  t.equal(answer.status, status, `status ${status}`)
  t.same(envelopeProblems(answer.body), [], 'OpenAI error envelope, no stack')
  if (code !== undefined) {
    const parsed = JSON.parse(answer.body) as { error?: { code?: unknown } }
    t.equal(parsed.error?.code, code, `code ${String(code)}`)
  }
}

export interface AfterCase {
  gateway: Gateway
  /** Ports whose sockets must not sit in CLOSE_WAIT (the gateway's and the upstreams'). */
  ports: number[]
  /** Requests the upstreams received, which must all have ended. */
  received?: Received[]
  /** Strings that must appear in no log line (and in none of `bodies`). */
  secrets: string[]
  /** Every response body the case saw. */
  bodies?: string[]
  /** Spool files open before the case. */
  spoolBaseline?: number
  /** RSS (after GC) before the case, and how much more is allowed after it. */
  rssBaselineMb?: number
  rssSlackMb?: number
}

/** Invariants (i) to (v) of reliability.md section 5; (vi) is asserted by each case on its answers. */
export async function assertNothingLeaked(t: Test, after: AfterCase): Promise<void> {
  if (after.received !== undefined) t.ok(await upstreamSettled(after.received), 'every upstream request ended')
  const slots = await noSlotsOrReservations(after.gateway)
  t.same(slots.held, [], 'no concurrency slot or budget reservation held')
  const deadline = Date.now() + 3000
  while (tcpSockets('CLOSE_WAIT', after.ports) > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50))
  t.equal(tcpSockets('CLOSE_WAIT', after.ports), 0, 'no socket in CLOSE_WAIT')
  const spoolDeadline = Date.now() + 3000
  const spoolBaseline = after.spoolBaseline ?? 0
  while (spoolFiles() > spoolBaseline && Date.now() < spoolDeadline) await new Promise((resolve) => setTimeout(resolve, 50))
  t.ok(spoolFiles() <= spoolBaseline, 'no spool file left open')
  const shown = secretsIn([after.gateway.logText(), ...(after.bodies ?? [])].join('\n'), after.secrets)
  t.same(shown, [], 'no secret in any log line or answer')
  if (after.rssBaselineMb !== undefined) {
    const rss = rssAfterGcMb()
    t.ok(rss <= after.rssBaselineMb + (after.rssSlackMb ?? 32), `RSS after GC ${rss.toFixed(0)} MB within ${after.rssSlackMb ?? 32} MB of ${after.rssBaselineMb.toFixed(0)} MB`)
  }
}
