import { request as httpRequest, type ClientRequest } from 'node:http'
import type { Test } from 'tap'
import { json, type FakeUpstream, type Received } from '../../helpers/fake-upstream.js'
import { eventually, PROVIDER_KEY, type Gateway, type LogLine } from '../../helpers/gateway.js'
import { int, type Rng } from '../../helpers/random.js'
import { startStack } from '../../helpers/stack.js'
import {
  eventuallyAsync,
  peakRssMb,
  resetPeakRss,
  sawClosingDelimiter,
  settledRssMb,
  streamedForm,
  uploadMany,
  UpstreamWatch
} from './c-uploads.js'
import { assertNothingLeaked, envelopeProblems, noSlotsOrReservations, portOf, rssAfterGcMb, rssSampler, spoolFiles } from './invariants.js'

/*
 * Cases 21 and 23 of reliability.md section 5, shared by the quick versions in
 * test/reliability/c-uploads.test.ts and the full-size ones in test/reliability/soak/.
 */

export const OK = { created: 1, data: [{ b64_json: 'aW1hZ2U=' }] }
/** How soon the upstream request must be cut once the client left: the plan's 100 ms, with room for a loaded machine. */
export const ABORT_BOUND_MS = 1000

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** The request's log line, by the x-request-id the client sent. */
export function logLine(gateway: Gateway, requestId: string): LogLine | undefined {
  return gateway.logs().find((line) => line.msg === 'request' && line.reqId === requestId)
}

/** Starts an upload that the test will cut off with `destroy()`. */
export function startUpload(gateway: Gateway, key: string, form: { body: Buffer; contentType: string }, requestId: string): ClientRequest {
  const req = httpRequest(`${gateway.url}/v1/images/edits`, {
    method: 'POST',
    agent: false,
    headers: {
      authorization: `Bearer ${key}`,
      'content-type': form.contentType,
      'content-length': String(form.body.length),
      'x-request-id': requestId
    }
  })
  req.on('error', () => undefined)
  return req
}

/** Writes the first `bytes` of the body; resolves once they are handed to the socket (or after 5 s if the gateway stopped reading). */
export function writeSome(req: ClientRequest, body: Buffer, bytes: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, 5000)
    req.write(body.subarray(0, bytes), () => {
      clearTimeout(timer)
      resolve()
    })
  })
}

/**
 * What must hold once a client left mid-upload: its request logged as 499, every upstream request
 * it started cut off (never complete) and when, its key's slot free and no spool file open.
 */
export async function afterAbort(
  gateway: Gateway,
  watch: UpstreamWatch,
  upstreamRequests: Received[],
  options: { requestId: string; abortedAt: number; spoolBaseline: number }
): Promise<{ problems: string[]; upstreamMs: number[] }> {
  const problems: string[] = []
  const upstreamMs: number[] = []
  const id = options.requestId
  if (!(await eventually(() => logLine(gateway, id) !== undefined, 5000))) problems.push(`${id}: no log line`)
  else if (logLine(gateway, id)?.status !== 499) problems.push(`${id}: logged as ${String(logLine(gateway, id)?.status)}, not 499`)
  for (const received of upstreamRequests) {
    if (!(await eventually(() => watch.closedAt.has(received), 3000))) {
      problems.push(`${id}: the upstream request was never cut off`)
      continue
    }
    upstreamMs.push((watch.closedAt.get(received) ?? 0) - options.abortedAt)
    if (received.complete) problems.push(`${id}: the upstream got a complete body`)
  }
  if (!(await eventuallyAsync(async () => (await noSlotsOrReservations(gateway)).ok, 1000))) problems.push(`${id}: a slot is still held 1 s later`)
  if (!(await eventually(() => spoolFiles() <= options.spoolBaseline, 1000))) problems.push(`${id}: a spool file is still open 1 s later`)
  return { problems, upstreamMs }
}

export interface RandomAborts {
  problems: string[]
  /** For each upstream request that was live when its client left: how long until it was cut. */
  upstreamMs: number[]
  /** Aborts that came while the upload was held in a spool file. */
  spooled: number
  /** RSS after GC once `warmup` aborts were done (0 if there were none). */
  rssAfterWarmupMb: number
}

/**
 * `count` uploads cut off at random points (one of `forms` each, picked by `rng`), one after the
 * other, each checked with afterAbort. The RSS baseline is taken after `warmup` of them: the first
 * uploads grow the allocator's arenas once (the spool's file writes run on libuv's threads), so a
 * leak shows as growth after that.
 */
export async function randomAborts(
  gateway: Gateway,
  upstream: FakeUpstream,
  watch: UpstreamWatch,
  options: { key: string; forms: { body: Buffer; contentType: string; spools: boolean }[]; rng: Rng; count: number; warmup: number; spoolBaseline: number }
): Promise<RandomAborts> {
  const result: RandomAborts = { problems: [], upstreamMs: [], spooled: 0, rssAfterWarmupMb: 0 }
  const { rng, spoolBaseline } = options
  for (let i = 0; i < options.count; i++) {
    if (i === options.warmup) result.rssAfterWarmupMb = rssAfterGcMb()
    const form = options.forms[int(rng, 0, options.forms.length - 1)] as (typeof options.forms)[number]
    const cut = int(rng, 1, form.body.length - 1)
    const since = upstream.received.length
    const id = `c21-random-${i}`
    const req = startUpload(gateway, options.key, form, id)
    await writeSome(req, form.body, cut)
    if (form.spools && (await eventually(() => spoolFiles() > spoolBaseline, 100))) result.spooled++
    await sleep(int(rng, 0, 20))
    const abortedAt = Date.now()
    req.destroy()
    const live = upstream.received.slice(since)
    const outcome = await afterAbort(gateway, watch, live, { requestId: id, abortedAt, spoolBaseline })
    // An upstream request that began after the client left (the gateway still had bytes to read).
    for (const late of upstream.received.slice(since + live.length)) {
      if (!(await eventually(() => watch.closedAt.has(late), 3000))) outcome.problems.push(`${id}: a late upstream request was never cut off`)
      else if (late.complete) outcome.problems.push(`${id}: a late upstream request got a complete body`)
    }
    result.problems.push(...outcome.problems)
    result.upstreamMs.push(...outcome.upstreamMs)
  }
  return result
}

/** The median and the largest of some timings, for a message. */
export function spread(ms: number[]): string {
  const sorted = [...ms].sort((a, b) => a - b)
  return `median ${sorted[Math.floor(sorted.length / 2)] ?? 0} ms, max ${sorted[sorted.length - 1] ?? 0} ms`
}

export interface CrowdOptions {
  count: number
  fileBytes: number
  /** Peak RSS allowed above the baseline (after GC, before the crowd). */
  peakSlackMb: number
  /** server.maxInFlight for the gateway; undefined: the default. */
  maxInFlight?: number
  /** The crowd must be done within this. */
  withinMs: number
}

/**
 * `count` uploads of a `fileBytes` image at once, in streaming mode (model first), against one
 * gateway, twice. Every answer is 200, or 503 server_busy (retry-after: 1) when `maxInFlight` is
 * below `count`; each accepted form reached the upstream whole; the first crowd's peak RSS (the
 * kernel's high-water mark, cross-checked by sampling) within `peakSlackMb` of the baseline.
 * Leaks are judged on the second crowd: after the first, the allocator keeps its grown arenas for
 * a while (RSS after GC stays up with nothing live), so RSS after the second must be within
 * 32 MB of RSS after the first. Then nothing else leaked either.
 */
export async function crowdOfUploads(t: Test, options: CrowdOptions): Promise<void> {
  const watch = new UpstreamWatch(json(200, OK), { tailOnly: true })
  const { upstream, gateway } = await startStack(t, {
    behaviour: watch.behaviour,
    gateway: options.maxInFlight === undefined ? {} : { extra: { server: { maxInFlight: options.maxInFlight } } }
  })
  const form = streamedForm({ before: [['model', 'gpt-image-1'], ['prompt', 'p']], fileBytes: options.fileBytes })
  const url = `${gateway.url}/v1/images/edits`
  let arrived = 0
  gateway.app.server.on('request', () => (arrived += 1))
  // One upload first, so that the baseline holds what the first request allocates once.
  t.equal((await uploadMany(url, gateway.key, form, 1))[0]?.status, 200, 'a first upload goes through')
  const bodies: string[] = []
  let upstreamWhole = 1

  const crowd = async (label: string): Promise<{ peakMb: number }> => {
    // The bodies go only once every request has reached the gateway (see uploadMany).
    const before = arrived
    const allArrived = eventually(() => arrived - before >= options.count, 30_000).then(() => undefined)
    const exact = resetPeakRss()
    const sampler = rssSampler()
    const started = Date.now()
    const outcomes = await uploadMany(url, gateway.key, form, options.count, allArrived)
    const elapsed = Date.now() - started
    const peakMb = Math.max(sampler.stop(), exact ? peakRssMb() : 0)
    t.equal(arrived - before, options.count, `${label}: all ${options.count} requests were at the gateway before the bodies went`)
    const accepted = outcomes.filter((o) => o.status === 200)
    const busy = outcomes.filter((o) => o.status === 503)
    const others = outcomes.filter((o) => o.status !== 200 && o.status !== 503)
    t.same(others.map((o) => `${o.status} ${o.error ?? o.body.slice(0, 100)}`), [], `${label}: every answer is 200 or 503 (${accepted.length} x 200, ${busy.length} x 503)`)
    if (options.maxInFlight === undefined || options.maxInFlight >= options.count) t.equal(busy.length, 0, `${label}: none refused, the cap is above the crowd`)
    else t.ok(busy.length > 0 && accepted.length >= options.maxInFlight, `${label}: past the cap of ${options.maxInFlight}, the rest were refused`)
    const busyProblems = busy.flatMap((o) => [
      ...envelopeProblems(o.body),
      ...((JSON.parse(o.body) as { error?: { code?: unknown } }).error?.code === 'server_busy' ? [] : [`code: ${o.body.slice(0, 120)}`]),
      ...(o.headers['retry-after'] === '1' ? [] : [`retry-after: ${String(o.headers['retry-after'])}`])
    ])
    t.same(busyProblems, [], `${label}: 503s are server_busy, in the envelope, with retry-after: 1`)
    t.ok(elapsed <= options.withinMs, `${label}: done in ${elapsed} ms (bound ${options.withinMs} ms)`)
    upstreamWhole += accepted.length
    const whole = upstream.received.filter((r) => r.complete && r.bytes === form.length && sawClosingDelimiter(r, form.boundary))
    t.equal(whole.length, upstreamWhole, `${label}: the upstream got every accepted form whole`)
    bodies.push(...outcomes.map((o) => o.body))
    return { peakMb }
  }

  const rssBaselineMb = rssAfterGcMb()
  const { peakMb } = await crowd('first crowd')
  t.ok(peakMb <= rssBaselineMb + options.peakSlackMb, `peak RSS ${peakMb.toFixed(0)} MB within ${options.peakSlackMb} MB of the ${rssBaselineMb.toFixed(0)} MB baseline`)
  const afterFirstMb = rssAfterGcMb()
  await crowd('second crowd')
  const afterSecondMb = await settledRssMb(afterFirstMb + 32)
  t.ok(afterSecondMb <= afterFirstMb + 32, `RSS after GC ${afterSecondMb.toFixed(0)} MB after the second crowd, within 32 MB of the ${afterFirstMb.toFixed(0)} MB after the first`)
  await assertNothingLeaked(t, {
    gateway,
    ports: [portOf(gateway.url), portOf(upstream.url)],
    received: upstream.received,
    secrets: [gateway.key, PROVIDER_KEY],
    bodies
  })
}
