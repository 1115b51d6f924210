import type { Test } from 'tap'
import t from 'tap'
import { startFakeUpstream, type FakeUpstream } from '../helpers/fake-upstream.js'
import { PROVIDER_KEY, eventually } from '../helpers/gateway.js'
import { startRedis } from '../helpers/redis.js'
import {
  DEV_KEY,
  buildFromSource,
  generate,
  holdsNothing,
  isCut,
  pipelined,
  rawGeneration,
  sharedStore,
  splitResponses,
  startGatewayProcess,
  tryConnect,
  type GatewayProcess
} from './harness/h-process.js'
import { envelopeProblems } from './harness/invariants.js'

/*
 * Plan cases 47-49 (reliability.md section 5, H): the process's own lifecycle. Each case runs the
 * gateway as a real process (src/cli.ts), signals it, and watches its answers, its upstream calls,
 * its log and its exit. The in-process lifecycle (shutdown()) is covered by test/integration/lifecycle.test.ts.
 */

const OK = { created: 1, data: [{ b64_json: 'QUJD' }] }
const SECRETS = [PROVIDER_KEY, DEV_KEY]
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))
const build = await buildFromSource(t)

/**
 * New connections are refused once the listener has closed, a few event-loop turns after the
 * signal (fastify closes it in its first onClose step): polled, with a bound.
 */
async function refusedSoon(port: number): Promise<boolean> {
  const deadline = Date.now() + 1000
  while (Date.now() < deadline) {
    if ((await tryConnect(port)) === 'ECONNREFUSED') return true
    await sleep(20)
  }
  return false
}

/** An upstream that answers every request once `release` is called, and never before. */
async function heldUpstream(t: Test): Promise<{ upstream: FakeUpstream; release: () => void }> {
  let release: () => void = () => undefined
  const released = new Promise<void>((resolve) => (release = resolve))
  const upstream = await startFakeUpstream(async (_request, response, received) => {
    await received.done
    await released
    if (response.destroyed) return
    response.writeHead(200, { 'content-type': 'application/json' })
    response.end(JSON.stringify(OK))
  })
  t.teardown(() => {
    release()
    return upstream.close()
  })
  return { upstream, release }
}

function assertNoSecrets(t: Test, gateway: GatewayProcess, bodies: string[], more: string[] = []): void {
  const text = [gateway.output(), ...bodies].join('\n')
  t.same(
    [...SECRETS, ...more].filter((secret) => text.includes(secret)),
    [],
    'no key (client or upstream) in the log or in any answer'
  )
}

t.test('#47 SIGTERM with 20 in-flight requests; a second SIGTERM during the drain: the drain completes them and exits 0, a second signal exits 1 at once', async (t) => {
  t.test('one SIGTERM: readiness and new requests 503, new connections refused, the 20 complete, exit 0 before the deadline', async (t) => {
    const graceMs = 15_000
    const { upstream, release } = await heldUpstream(t)
    const gateway = await startGatewayProcess(t, { upstreamBaseUrl: upstream.baseUrl, shutdownGraceMs: graceMs, build })

    // Two of the 20 ride on raw keep-alive connections, so a request can follow them on the same
    // connection after SIGTERM (an idle connection is closed at once: only a busy one can carry one).
    const forReadiness = pipelined(gateway.port, rawGeneration('in flight 1'))
    const forNewRequest = pipelined(gateway.port, rawGeneration('in flight 2'))
    const others = Array.from({ length: 18 }, (_, i) => generate(gateway.port, { prompt: `in flight ${i + 3}` }))
    t.ok(await eventually(() => upstream.received.length === 20, 10_000), 'the 20 requests reached the upstream')

    const signalledAt = Date.now()
    gateway.child.kill('SIGTERM')
    t.match(await gateway.logLine(/^draining$/), { reason: 'SIGTERM', graceMs }, 'the drain began')
    t.ok(await refusedSoon(gateway.port), 'new connections are refused')
    forReadiness.send('GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
    forNewRequest.send(rawGeneration('arrived after SIGTERM'))
    // The 20 are answered 2 s into the drain: each will have been in flight for about 3 s.
    await sleep(2000)
    release()

    const answers = await Promise.all(others)
    const [readinessText, newRequestText] = await Promise.all([forReadiness.closed, forNewRequest.closed])
    const exit = await gateway.exited

    for (const outcome of answers) {
      if (isCut(outcome)) {
        t.fail(`an in-flight request was cut: ${outcome.error}`)
        continue
      }
      t.equal(outcome.status, 200, 'an in-flight request completed')
      t.same((JSON.parse(outcome.body) as typeof OK).data, OK.data, 'with its whole answer')
    }

    const [ranA, readiness] = splitResponses(readinessText)
    t.equal(ranA?.status, 200, 'the request ahead of /readyz on its connection completed')
    t.equal(readiness?.status, 503, '/readyz: 503 once the drain began')
    t.equal(readiness?.headers.connection, 'close', '/readyz: Connection: close')

    const [ranB, refused] = splitResponses(newRequestText)
    t.equal(ranB?.status, 200, 'the request ahead of the new one on its connection completed')
    t.equal(refused?.status, 503, 'a new request on an open connection: 503')
    t.equal(refused?.headers.connection, 'close', 'with Connection: close')
    t.same(envelopeProblems(refused?.body ?? ''), [], "in OpenAI's error envelope")
    t.match(refused?.body, /"code":"server_shutting_down"/, 'code server_shutting_down')
    t.equal(refused?.headers['x-should-retry'], 'true', 'x-should-retry: true (it was not run)')
    t.equal(upstream.received.length, 20, 'the request that came after SIGTERM never reached the upstream')
    t.ok(
      upstream.received.every((r) => r.complete && !r.aborted),
      'no upstream call was aborted'
    )

    t.equal(exit.code, 0, 'exit 0')
    t.ok(exit.at - signalledAt < graceMs, `exited ${exit.at - signalledAt} ms after SIGTERM, before the ${graceMs} ms deadline`)
    t.match(
      gateway.logs().find((line) => line.msg === 'closed'),
      { outcome: 'drained' },
      'logged: drained'
    )
    assertNoSecrets(t, gateway, [...answers.map((a) => (isCut(a) ? '' : a.body)), readinessText, newRequestText])
  })

  t.test('a second SIGTERM during the drain: exit 1 at once, its log line written, in-flight connections closed', async (t) => {
    const graceMs = 15_000
    const { upstream } = await heldUpstream(t)
    const gateway = await startGatewayProcess(t, { upstreamBaseUrl: upstream.baseUrl, shutdownGraceMs: graceMs, build })
    const inFlight = [generate(gateway.port, { prompt: 'one' }), generate(gateway.port, { prompt: 'two' })]
    t.ok(await eventually(() => upstream.received.length === 2, 10_000), 'two requests in flight')

    gateway.child.kill('SIGTERM')
    t.ok(await gateway.logLine(/^draining$/), 'the drain began')
    const secondAt = Date.now()
    gateway.child.kill('SIGTERM')
    const exit = await gateway.exited
    t.equal(exit.code, 1, 'exit 1: the drain did not finish')
    t.equal(exit.signal, null, 'an exit of its own, not a kill by the signal')
    t.ok(exit.at - secondAt < 2000, `exited ${exit.at - secondAt} ms after the second SIGTERM (the grace period was ${graceMs} ms)`)
    t.match(
      gateway.logs().at(-1),
      { msg: 'second signal during the drain: exiting at once', signal: 'SIGTERM' },
      'the last log line says why, written before the exit'
    )

    const outcomes = await Promise.all(inFlight)
    t.ok(outcomes.every(isCut), 'the in-flight requests saw their connection closed, not left hanging')
    t.ok(await eventually(() => upstream.received.every((r) => r.aborted), 3000), 'the upstream calls were aborted')
    assertNoSecrets(t, gateway, [])
  })
})

t.test('#48 SIGTERM with requests longer than the drain deadline: at the deadline the connections are cut, the upstream calls aborted, exit within deadline + 1 s', async (t) => {
  const graceMs = 2000
  let releaseNothing: () => void = () => undefined
  const never = new Promise<void>((resolve) => (releaseNothing = resolve))
  t.teardown(() => releaseNothing())
  const upstream = await startFakeUpstream(async (request, response, received) => {
    await received.done
    // A stream whose headers and first event went out, then nothing; a JSON call never answered.
    if (received.body().toString('utf8').includes('"stream":true')) {
      response.writeHead(200, { 'content-type': 'text/event-stream' })
      response.write(`event: image_generation.partial_image\ndata: ${JSON.stringify({ type: 'image_generation.partial_image', b64_json: 'AA==' })}\n\n`)
    }
    await never
    request.socket.destroy()
  })
  t.teardown(() => upstream.close())
  // Keys and counters in Redis, so that what the two requests hold (a concurrency slot and a budget
  // reservation each) outlives the process if it is not released before the exit.
  const redis = await startRedis()
  t.teardown(() => redis.close())
  const options = { upstreamBaseUrl: upstream.baseUrl, shutdownGraceMs: graceMs, build, redis: { url: redis.url, keyPrefix: redis.prefix } }
  const store = sharedStore(t, options)
  const { record, key } = await store.create({ name: 'h48', concurrency: 5, budgetMicroUsd: 100_000_000 })
  const gateway = await startGatewayProcess(t, options)
  const noHeaders = generate(gateway.port, { prompt: 'no answer yet' }, key)
  const streaming = generate(gateway.port, { prompt: 'half a stream', stream: true }, key)
  t.ok(await eventually(() => upstream.received.length === 2, 10_000), 'two requests in flight')
  t.notOk(await holdsNothing(store, record.id), 'while in flight, the key holds slots and reservations (so the probe after the exit can fail)')

  const signalledAt = Date.now()
  gateway.child.kill('SIGTERM')
  const [cutBeforeHeaders, cutMidStream] = await Promise.all([noHeaders, streaming])
  const exit = await gateway.exited

  t.ok(isCut(cutBeforeHeaders), 'the request with no answer yet: its connection is cut (no status)')
  t.equal((cutBeforeHeaders as { status?: number }).status, undefined, 'no status was sent')
  t.ok(isCut(cutMidStream), 'the stream: cut before its end')
  t.equal((cutMidStream as { status?: number }).status, 200, 'the stream had its 200 and first event')
  for (const outcome of [cutBeforeHeaders, cutMidStream]) {
    t.ok(outcome.at - signalledAt >= graceMs - 100, `cut at the deadline (${outcome.at - signalledAt} ms after SIGTERM), not before`)
  }
  t.ok(await eventually(() => upstream.received.every((r) => r.aborted), 3000), 'both upstream calls were aborted')
  t.equal(exit.code, 0, 'exit 0: the drain ran its configured course')
  t.ok(exit.at - signalledAt < graceMs + 1000, `exited ${exit.at - signalledAt} ms after SIGTERM (deadline ${graceMs} ms + 1 s)`)
  t.match(
    gateway.logs().find((line) => line.msg === 'closed'),
    { outcome: 'forced' },
    'logged: forced'
  )
  t.ok(await holdsNothing(store, record.id), 'after the exit: no concurrency slot or budget reservation left in Redis')
  assertNoSecrets(t, gateway, [], [key])
})

t.test('#49 an uncaught exception: logged, a best-effort drain (the short request completes, the long one is cut), then exit 1', async (t) => {
  const graceMs = 2000
  const upstream = await startFakeUpstream(async (_request, response, received) => {
    await received.done
    if (received.body().toString('utf8').includes('short')) {
      await sleep(1000)
      response.writeHead(200, { 'content-type': 'application/json' })
      response.end(JSON.stringify(OK))
    }
  })
  t.teardown(() => upstream.close())
  const gateway = await startGatewayProcess(t, { upstreamBaseUrl: upstream.baseUrl, shutdownGraceMs: graceMs, withFaultInjector: true, build })
  const short = generate(gateway.port, { prompt: 'short' })
  const long = generate(gateway.port, { prompt: 'long' })
  t.ok(await eventually(() => upstream.received.length === 2, 10_000), 'two requests in flight')

  const thrownAt = Date.now()
  gateway.child.kill('SIGUSR2')
  const fatal = await gateway.logLine(/^uncaught exception/)
  t.match(
    fatal,
    { level: 60, err: { message: /^injected fault/, stack: /h-throw-on-sigusr2/ }, origin: 'uncaughtException' },
    'logged at fatal, with the error'
  )
  t.match(await gateway.logLine(/^draining$/), { reason: 'uncaughtException', graceMs }, 'a drain began, with the shorter of the grace periods')
  t.ok(await refusedSoon(gateway.port), 'new connections are refused')

  const [shortAnswer, longOutcome] = await Promise.all([short, long])
  const exit = await gateway.exited
  if (isCut(shortAnswer)) t.fail(`the short request was cut: ${shortAnswer.error}`)
  else {
    t.equal(shortAnswer.status, 200, 'the request that could finish did')
    t.same((JSON.parse(shortAnswer.body) as typeof OK).data, OK.data, 'whole')
  }
  t.ok(isCut(longOutcome), 'the long request: its connection was closed, not left hanging')
  t.ok(longOutcome.at - thrownAt < graceMs + 1000, 'closed by the deadline')
  t.ok(await eventually(() => upstream.received.every((r) => r.complete) && (upstream.received[1]?.aborted ?? false), 3000), 'its upstream call was aborted')
  t.equal(exit.code, 1, 'exit 1')
  t.ok(exit.at - thrownAt < graceMs + 1000, `exited ${exit.at - thrownAt} ms after the exception (grace ${graceMs} ms + 1 s)`)
  assertNoSecrets(t, gateway, isCut(shortAnswer) ? [] : [shortAnswer.body])
})
