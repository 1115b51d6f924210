import { createHash } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { gzipSync } from 'node:zlib'
import t, { type Test } from 'tap'
import OpenAI from 'openai'
import { hang, json, startFakeUpstream, type Behaviour, type FakeUpstream } from '../helpers/fake-upstream.js'
import { PROVIDER_KEY, eventually, startGateway, type Gateway, type GatewayOptions, type ModelSpec } from '../helpers/gateway.js'
import { sendRaw, type RawAnswer } from '../helpers/http-client.js'
import { makePng } from '../helpers/images.js'
import { buildMultipart } from '../helpers/multipart.js'
import {
  closedPort,
  failWith,
  giantBody,
  hangMidBody,
  htmlBadGateway,
  invalidJson,
  rawAnswer,
  redirectTo,
  resetAfterBody,
  resetAfterBytes,
  startRawListener
} from './harness/faults.js'
import { assertError, assertNothingLeaked, portOf, rssAfterGcMb, rssSampler, spoolFiles, tcpSockets } from './harness/invariants.js'
import { rawExchange } from './harness/raw-socket.js'
import { cpuMsOf, encodedAnswer, gzipBomb, readThrough, startHungListener } from './harness/e-upstreams.js'

/*
 * Group E of the reliability plan (reliability.md section 5, cases 28-37): upstreams that refuse,
 * hang, reset, rate-limit, fail, leak secrets, answer garbage, giant or compressed bodies, or
 * redirect. What the gateway does about each is documented in docs/routing.md (failover, cooldown)
 * and docs/relay.md (answers); each test says where the plan's expectation and the product differ.
 */

const OK: Behaviour = json(200, { created: 1, data: [{ b64_json: 'aGk=' }] })
const ADMIN_TOKEN = 'admin-token-e-0123456789abcdef'
const ORG_ID = 'org-UPSTREAMorg0123456789'
const PROJECT_ID = 'proj_UPSTREAMproject0123'

interface Fleet {
  upstreams: Record<string, FakeUpstream>
  gateway: Gateway
  /** The gateway's and every upstream's port (for the CLOSE_WAIT check). */
  ports: number[]
}

/**
 * Fake upstreams by provider id, extra providers by base URL (dead ports, raw listeners), and a
 * gateway whose model `gpt-image-1` has `deployments`; small timeouts so every case ends in seconds.
 */
async function startFleet(
  t: Test,
  behaviours: Record<string, Behaviour>,
  deployments: ModelSpec['deployments'],
  options: Partial<GatewayOptions> & { routing?: Record<string, unknown>; elsewhere?: Record<string, string> } = {}
): Promise<Fleet> {
  const upstreams: Record<string, FakeUpstream> = {}
  for (const [id, behaviour] of Object.entries(behaviours)) upstreams[id] = await startFakeUpstream(behaviour)
  const { routing, elsewhere, ...rest } = options
  const gateway = await startGateway({
    providers: { ...Object.fromEntries(Object.entries(upstreams).map(([id, u]) => [id, u.baseUrl])), ...elsewhere },
    models: [{ name: 'gpt-image-1', deployments }],
    adminToken: ADMIN_TOKEN,
    timeouts: { connectMs: 1000, headersMs: 2000, bodyIdleMs: 2000 },
    ...rest,
    extra: { routing: { cooldown: { baseMs: 60_000 }, ...routing }, ...rest.extra }
  })
  t.teardown(async () => {
    await gateway.close()
    for (const upstream of Object.values(upstreams)) await upstream.close()
  })
  return { upstreams, gateway, ports: [portOf(gateway.url), ...Object.values(upstreams).map((u) => portOf(u.url))] }
}

function generate(gateway: Gateway, body: Record<string, unknown> = {}): Promise<RawAnswer> {
  return sendRaw(`${gateway.url}/v1/images/generations`, {
    headers: { 'content-type': 'application/json', authorization: `Bearer ${gateway.key}` },
    body: [Buffer.from(JSON.stringify({ model: 'gpt-image-1', prompt: 'a lighthouse', ...body }))]
  })
}

function received(upstream: FakeUpstream | undefined): number {
  return upstream?.received.length ?? 0
}

interface DeploymentRow {
  id: string
  state: string
  reason: string | null
  coolingUntil: string | null
  consecutiveFailures: number
}

async function deploymentRows(gateway: Gateway): Promise<DeploymentRow[]> {
  const answer = await sendRaw(`${gateway.url}/admin/deployments`, { method: 'GET', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
  return answer.json<{ data: DeploymentRow[] }>().data
}

async function deploymentRow(gateway: Gateway, id: string): Promise<DeploymentRow | undefined> {
  return (await deploymentRows(gateway)).find((row) => row.id === id)
}

function requestLines(gateway: Gateway): Record<string, unknown>[] {
  return gateway.logs().filter((line) => line.msg === 'request')
}

const secretsOf = (gateway: Gateway): string[] => [PROVIDER_KEY, gateway.key]

t.test('#28 upstream port closed or not answering: connect failures fail over within connectMs per attempt; a silent listener is a 504, not retried', async (t) => {
  t.test('port closed: the next deployment answers at once; alone, 502 upstream_unreachable the client may retry', async (t) => {
    const dead = `http://127.0.0.1:${await closedPort()}/v1`
    const { upstreams, gateway, ports } = await startFleet(t, { up: OK }, [{ provider: 'dead' }, { provider: 'up', priority: 1 }], { elsewhere: { dead } })
    const started = Date.now()
    const answer = await generate(gateway)
    t.equal(answer.status, 200)
    t.ok(Date.now() - started < 2000, `failed over in ${Date.now() - started} ms`)
    t.equal(answer.headers['x-gateway-deployment'], 'up/gpt-image-1')
    t.same(requestLines(gateway)[0]?.failover, [{ deployment: 'dead/gpt-image-1', kind: 'connect' }])
    t.equal(received(upstreams.up), 1)

    const alone = await startGateway({ providers: { dead }, timeouts: { connectMs: 1000 } })
    t.teardown(() => alone.close())
    const refused = await generate(alone)
    assertError(t, { status: refused.status, body: refused.body.toString() }, 502, 'upstream_unreachable')
    t.not(refused.headers['x-should-retry'], 'false', 'nothing reached the upstream: a retry is safe')
    await assertNothingLeaked(t, { gateway, ports, received: upstreams.up?.received, secrets: secretsOf(gateway), bodies: [answer.body.toString()] })
    await assertNothingLeaked(t, { gateway: alone, ports: [portOf(alone.url)], secrets: secretsOf(alone), bodies: [refused.body.toString()] })
  })

  t.test('attempts stay within routing.maxAttempts', async (t) => {
    const elsewhere = { dead1: `http://127.0.0.1:${await closedPort()}/v1`, dead2: `http://127.0.0.1:${await closedPort()}/v1` }
    const { upstreams, gateway, ports } = await startFleet(t, { up: OK }, [{ provider: 'dead1' }, { provider: 'dead2', priority: 1 }, { provider: 'up', priority: 2 }], {
      elsewhere,
      routing: { maxAttempts: 2 }
    })
    const answer = await generate(gateway)
    assertError(t, { status: answer.status, body: answer.body.toString() }, 502, 'upstream_unreachable')
    t.equal(received(upstreams.up), 0, 'the third deployment is past the budget of 2 attempts')
    t.equal((requestLines(gateway)[0]?.failover as unknown[] | undefined)?.length, 2, 'two attempts logged')
    await assertNothingLeaked(t, { gateway, ports, secrets: secretsOf(gateway), bodies: [answer.body.toString()] })
  })

  t.test('a listener that never accepts: connect timeout, then the next deployment', async (t) => {
    const hung = await startHungListener()
    if (hung === null) {
      t.plan(0, 'skipped: python3 is needed for a listener that never accepts')
      return
    }
    t.teardown(() => hung.close())
    const connectMs = 400
    const { upstreams, gateway, ports } = await startFleet(t, { up: OK }, [{ provider: 'hung' }, { provider: 'up', priority: 1 }], {
      elsewhere: { hung: hung.baseUrl },
      timeouts: { connectMs, headersMs: 2000, bodyIdleMs: 2000 }
    })
    const started = Date.now()
    const answer = await generate(gateway)
    const elapsed = Date.now() - started
    t.equal(answer.status, 200)
    t.equal(answer.headers['x-gateway-deployment'], 'up/gpt-image-1')
    t.ok(elapsed >= connectMs - 50 && elapsed < connectMs + 3000, `answered after ${elapsed} ms (connectMs ${connectMs})`)
    t.same(requestLines(gateway)[0]?.failover, [{ deployment: 'hung/gpt-image-1', kind: 'connect' }])

    // Alone: one attempt, then 502 within about connectMs.
    const alone = await startGateway({ providers: { hung: hung.baseUrl }, timeouts: { connectMs } })
    t.teardown(() => alone.close())
    const startedAlone = Date.now()
    const refused = await generate(alone)
    const elapsedAlone = Date.now() - startedAlone
    assertError(t, { status: refused.status, body: refused.body.toString() }, 502, 'upstream_unreachable')
    t.ok(elapsedAlone < connectMs + 3000, `502 after ${elapsedAlone} ms`)
    t.not(refused.headers['x-should-retry'], 'false')
    await assertNothingLeaked(t, { gateway, ports, received: upstreams.up?.received, secrets: secretsOf(gateway), bodies: [answer.body.toString(), refused.body.toString()] })
  })

  t.test('a listener that accepts and never answers: 504 after headersMs, x-should-retry false, not failed over', async (t) => {
    const silent = await startRawListener('silent')
    t.teardown(() => silent.close())
    const headersMs = 500
    const { upstreams, gateway, ports } = await startFleet(t, { up: OK }, [{ provider: 'silent' }, { provider: 'up', priority: 1 }], {
      elsewhere: { silent: silent.baseUrl },
      timeouts: { connectMs: 1000, headersMs, bodyIdleMs: 2000 }
    })
    const started = Date.now()
    const answer = await generate(gateway)
    const elapsed = Date.now() - started
    assertError(t, { status: answer.status, body: answer.body.toString() }, 504, 'upstream_timeout')
    t.equal(answer.headers['x-should-retry'], 'false', 'the upstream had the whole request: it may be generating')
    t.ok(elapsed >= headersMs - 50 && elapsed < headersMs + 3000, `504 after ${elapsed} ms`)
    t.equal(received(upstreams.up), 0, 'not sent to the other deployment')
    t.equal(silent.connections, 1)
    t.ok(await eventually(() => tcpSockets('ESTABLISHED', [silent.port], 'remote') === 0), "the gateway's connection to it was closed")
    await assertNothingLeaked(t, { gateway, ports, secrets: secretsOf(gateway), bodies: [answer.body.toString()] })
  })
})

t.test('#29 RST after the upstream read the whole body: 502 with x-should-retry false, no retry by the gateway or the SDK', async (t) => {
  const { upstreams, gateway, ports } = await startFleet(t, { a: resetAfterBody, b: OK }, [{ provider: 'a' }, { provider: 'b', priority: 1 }])
  const client = new OpenAI({ baseURL: gateway.baseURL, apiKey: gateway.key, maxRetries: 2 })
  const error = await client.images.generate({ model: 'gpt-image-1', prompt: 'a lighthouse' }).then(
    () => null,
    (err: unknown) => err
  )
  t.ok(error instanceof OpenAI.APIError, 'the SDK raised an APIError')
  const apiError = error as InstanceType<typeof OpenAI.APIError>
  t.equal(apiError.status, 502)
  t.equal(apiError.headers?.get('x-should-retry'), 'false')
  t.equal((apiError.error as { code?: string } | undefined)?.code, 'upstream_unreachable')
  t.equal(received(upstreams.a), 1, 'exactly one attempt: the SDK obeyed x-should-retry')
  t.equal(upstreams.a?.received[0]?.complete, true, 'and it had the whole body')
  t.equal(received(upstreams.b), 0, 'not failed over: it may be generating, and billing')
  t.equal(gateway.app.health.status('a/gpt-image-1').consecutiveFailures, 1, 'counted against the deployment')
  const raw = await generate(gateway)
  assertError(t, { status: raw.status, body: raw.body.toString() }, 502, 'upstream_unreachable')
  await assertNothingLeaked(t, { gateway, ports, received: upstreams.a?.received, secrets: secretsOf(gateway), bodies: [raw.body.toString()] })
})

const bigImage = makePng({ width: 64, height: 64, seed: 30, padToBytes: 16 * 1024 * 1024 })
const bigForm = buildMultipart([
  { name: 'model', value: 'gpt-image-1' },
  { name: 'prompt', value: 'add a boat' },
  { name: 'image', filename: 'sea.png', data: bigImage, contentType: 'image/png' }
])

function edit(gateway: Gateway, form: { body: Buffer; contentType: string }): Promise<RawAnswer> {
  return sendRaw(`${gateway.url}/v1/images/edits`, {
    headers: { 'content-type': form.contentType, authorization: `Bearer ${gateway.key}` },
    body: [form.body]
  })
}

t.test('#30 RST after 30 % of an upload: alone (pass-through) 502 and no retry; with a second deployment (kept for replay) exactly one retry', async (t) => {
  const cut = Math.floor(bigForm.body.length * 0.3)
  t.test('one deployment: 502, not retried, and the client may send it again', async (t) => {
    const spoolBaseline = spoolFiles()
    const { upstreams, gateway, ports } = await startFleet(t, { a: resetAfterBytes(cut) }, [{ provider: 'a' }])
    const answer = await edit(gateway, bigForm)
    assertError(t, { status: answer.status, body: answer.body.toString() }, 502, 'upstream_unreachable')
    t.not(answer.headers['x-should-retry'], 'false', 'the upstream never had it whole')
    t.equal(received(upstreams.a), 1, 'one attempt')
    await upstreams.a?.received[0]?.done
    t.equal(upstreams.a?.received[0]?.complete, false)
    await assertNothingLeaked(t, { gateway, ports, received: upstreams.a?.received, secrets: secretsOf(gateway), bodies: [answer.body.toString()], spoolBaseline })
  })

  t.test('two deployments: the upload is replayed once, byte for byte, to the second', async (t) => {
    const spoolBaseline = spoolFiles()
    const { upstreams, gateway, ports } = await startFleet(t, { a: resetAfterBytes(cut), b: OK }, [{ provider: 'a' }, { provider: 'b', priority: 1 }])
    const answer = await edit(gateway, bigForm)
    t.equal(answer.status, 200)
    t.equal(answer.headers['x-gateway-deployment'], 'b/gpt-image-1')
    const attempts = [...(upstreams.a?.received ?? []), ...(upstreams.b?.received ?? [])]
    await Promise.all(attempts.map((r) => r.done))
    t.equal(attempts.length, 2, 'two attempts in all')
    t.equal(attempts.filter((r) => r.complete).length, 1, 'one completed body')
    t.equal(upstreams.b?.received[0]?.sha256(), createHash('sha256').update(bigForm.body).digest('hex'), 'the second got exactly what the client sent')
    t.same(requestLines(gateway)[0]?.failover, [{ deployment: 'a/gpt-image-1', kind: 'reset' }])
    await assertNothingLeaked(t, { gateway, ports, received: attempts, secrets: secretsOf(gateway), bodies: [answer.body.toString()], spoolBaseline })
  })
})

t.test('#31 hang before headers: 504 and the upstream request ended; a body that stalls after headers: the client connection is cut', async (t) => {
  t.test('before headers', async (t) => {
    const headersMs = 500
    const { upstreams, gateway, ports } = await startFleet(t, { a: hang, b: OK }, [{ provider: 'a' }, { provider: 'b', priority: 1 }], {
      timeouts: { connectMs: 1000, headersMs, bodyIdleMs: 2000 }
    })
    const started = Date.now()
    const answer = await generate(gateway)
    const elapsed = Date.now() - started
    assertError(t, { status: answer.status, body: answer.body.toString() }, 504, 'upstream_timeout')
    t.equal(answer.headers['x-should-retry'], 'false')
    t.ok(elapsed >= headersMs - 50 && elapsed < headersMs + 3000, `504 after ${elapsed} ms`)
    t.equal(received(upstreams.b), 0)
    t.ok(await eventually(() => upstreams.a?.received[0]?.aborted === true), 'the upstream request was torn down')
    await assertNothingLeaked(t, { gateway, ports, received: upstreams.a?.received, secrets: secretsOf(gateway), bodies: [answer.body.toString()] })
  })

  t.test('after headers', async (t) => {
    const bodyIdleMs = 500
    const { upstreams, gateway, ports } = await startFleet(t, { a: hangMidBody(), b: OK }, [{ provider: 'a' }, { provider: 'b', priority: 1 }], {
      timeouts: { connectMs: 1000, headersMs: 2000, bodyIdleMs }
    })
    const body = JSON.stringify({ model: 'gpt-image-1', prompt: 'a lighthouse' })
    const head = `POST /v1/images/generations HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer ${gateway.key}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n`
    const started = Date.now()
    const exchange = await rawExchange(portOf(gateway.url), { writes: [head + body], waitMs: bodyIdleMs + 4000 })
    const elapsed = Date.now() - started
    t.equal(exchange.status, 200, 'the headers had gone out')
    t.equal(exchange.text.match(/HTTP\/1\.1 \d{3}/g)?.length, 1, 'no second response written')
    t.ok(exchange.closed, 'the connection was cut')
    t.ok(elapsed >= bodyIdleMs - 50 && elapsed < bodyIdleMs + 3500, `cut after ${elapsed} ms`)
    t.ok(exchange.body.length < Number(exchange.headers['content-length']), 'short of its content-length: the client sees a failure')
    t.equal(received(upstreams.b), 0)
    t.ok(await eventually(() => upstreams.a?.received[0]?.aborted === true), 'the upstream request was torn down')
    t.ok(await eventually(() => requestLines(gateway).length === 1), 'the request was logged')
    const line = requestLines(gateway)[0]
    t.equal(line?.errorCode, 'upstream_timeout', "the log line names the upstream's stalled body")
    t.equal(line?.status, 200, 'with the status the client got, not 499: the client did not leave')
    await assertNothingLeaked(t, { gateway, ports, received: upstreams.a?.received, secrets: secretsOf(gateway), bodies: [exchange.text] })
  })
})

const rateLimited = (retryAfter: string): Behaviour =>
  failWith(429, { 'retry-after': retryAfter }, 'Rate limit reached for images per minute. Please try again later.')

t.test('#32 429 with Retry-After: a short one is waited out once, a long one goes back to the client; only that deployment cools', async (t) => {
  t.test('Retry-After 2, one deployment: one retry after 2 s', async (t) => {
    let calls = 0
    const onceLimited: Behaviour = (request, response, record) => (++calls === 1 ? rateLimited('2') : OK)(request, response, record)
    const { upstreams, gateway, ports } = await startFleet(t, { a: onceLimited }, [{ provider: 'a' }])
    const started = Date.now()
    const answer = await generate(gateway)
    const elapsed = Date.now() - started
    t.equal(answer.status, 200)
    t.ok(elapsed >= 1950 && elapsed < 6000, `retried after ${elapsed} ms`)
    t.equal(received(upstreams.a), 2, 'exactly one retry')
    await assertNothingLeaked(t, { gateway, ports, received: upstreams.a?.received, secrets: secretsOf(gateway), bodies: [answer.body.toString()] })
  })

  t.test('Retry-After 2, an upload on one deployment: not kept for replay, so the 429 goes back with its Retry-After', async (t) => {
    const { upstreams, gateway, ports } = await startFleet(t, { a: rateLimited('2') }, [{ provider: 'a' }])
    const form = buildMultipart([
      { name: 'model', value: 'gpt-image-1' },
      { name: 'prompt', value: 'add a boat' },
      { name: 'image', filename: 'sea.png', data: makePng({ width: 64, height: 64, seed: 32 }), contentType: 'image/png' }
    ])
    const started = Date.now()
    const answer = await edit(gateway, form)
    // Waiting would only delay the 429: an upload that was not kept cannot be sent again.
    assertError(t, { status: answer.status, body: answer.body.toString() }, 429)
    t.equal(answer.headers['retry-after'], '2')
    t.ok(Date.now() - started < 1500, 'not waited for')
    t.equal(received(upstreams.a), 1)
    await assertNothingLeaked(t, { gateway, ports, received: upstreams.a?.received, secrets: secretsOf(gateway), bodies: [answer.body.toString()] })
  })

  t.test('Retry-After 600: no waiting, 429 with Retry-After to the client; only that deployment cooled', async (t) => {
    const { upstreams, gateway, ports } = await startFleet(t, { a: rateLimited('600') }, [{ provider: 'a' }], {
      // A Retry-After is honoured up to cooldown.maxMs (5 min by default), so that a bogus one
      // cannot take a deployment out for days; here the cap is above it.
      routing: { cooldown: { baseMs: 60_000, maxMs: 900_000 } },
      models: [
        { name: 'gpt-image-1', deployments: [{ provider: 'a' }] },
        { name: 'dall-e-3', deployments: [{ provider: 'a' }] }
      ]
    })
    const started = Date.now()
    const answer = await generate(gateway)
    assertError(t, { status: answer.status, body: answer.body.toString() }, 429)
    t.equal(answer.headers['retry-after'], '600', "the upstream's Retry-After reaches the client")
    t.ok(Date.now() - started < 1500, `answered in ${Date.now() - started} ms`)
    t.equal(received(upstreams.a), 1, 'not retried')
    const limited = await deploymentRow(gateway, 'a/gpt-image-1')
    t.equal(limited?.state, 'cooling')
    t.equal(limited?.reason, 'rate_limited')
    const until = Date.parse(limited?.coolingUntil ?? '')
    t.ok(until - Date.now() > 590_000 && until - Date.now() <= 600_000, 'cooled for the Retry-After')
    t.equal((await deploymentRow(gateway, 'a/dall-e-3'))?.state, 'healthy', 'the same provider with another model is not cooled')
    upstreams.a?.behave(OK)
    const other = await generate(gateway, { model: 'dall-e-3' })
    t.equal(other.status, 200, 'and keeps serving')
    await assertNothingLeaked(t, { gateway, ports, received: upstreams.a?.received, secrets: secretsOf(gateway), bodies: [answer.body.toString()] })
  })

  t.test('Retry-After 2 with a second deployment: it answers at once, and the first stays out', async (t) => {
    const { upstreams, gateway, ports } = await startFleet(t, { a: rateLimited('2'), b: OK }, [{ provider: 'a' }, { provider: 'b', priority: 1 }])
    const started = Date.now()
    const answer = await generate(gateway)
    t.equal(answer.status, 200)
    t.ok(Date.now() - started < 1500, 'no wait: the other deployment took it')
    t.equal(answer.headers['x-gateway-deployment'], 'b/gpt-image-1')
    t.equal((await generate(gateway)).headers['x-gateway-deployment'], 'b/gpt-image-1')
    t.equal(received(upstreams.a), 1, 'not tried again while it asked us to wait')
    t.equal((await deploymentRow(gateway, 'b/gpt-image-1'))?.state, 'healthy')
    await assertNothingLeaked(t, { gateway, ports, received: [...(upstreams.a?.received ?? []), ...(upstreams.b?.received ?? [])], secrets: secretsOf(gateway) })
  })
})

const serverError = (status: number): Behaviour => failWith(status, {}, `status ${status}`)

t.test('#33 500/503 three times in a row, then recovery: cooldown after 3, skipped while cooling, probed and put back (no fail-fast)', async (t) => {
  t.test('two deployments', async (t) => {
    let calls = 0
    const flaky: Behaviour = (request, response, record) => serverError(++calls % 2 === 0 ? 503 : 500)(request, response, record)
    const baseMs = 800
    const { upstreams, gateway, ports } = await startFleet(t, { a: flaky, b: OK }, [{ provider: 'a' }, { provider: 'b', priority: 1 }], {
      routing: { cooldown: { failures: 3, baseMs } }
    })
    for (let i = 0; i < 3; i++) {
      const answer = await generate(gateway)
      t.equal(answer.status, 200, `request ${i + 1} failed over`)
    }
    t.equal(received(upstreams.a), 3, 'one attempt at a per request')
    t.equal(received(upstreams.b), 3)
    const cooling = await deploymentRow(gateway, 'a/gpt-image-1')
    t.equal(cooling?.state, 'cooling', 'out after 3 failures in a row')
    t.equal(cooling?.reason, 'server_error')
    for (let i = 0; i < 3; i++) {
      const started = Date.now()
      const answer = await generate(gateway)
      t.equal(answer.headers['x-gateway-deployment'], 'b/gpt-image-1')
      t.ok(Date.now() - started < 1000, 'served by the other at once')
    }
    t.equal(received(upstreams.a), 3, 'not tried while cooling')
    upstreams.a?.behave(OK)
    t.ok(await eventually(() => gateway.app.health.availability('a/gpt-image-1') === 'probe', baseMs + 2000), 'due for a probe')
    const probe = await generate(gateway)
    t.equal(probe.headers['x-gateway-deployment'], 'a/gpt-image-1', 'the probe went to it, and it answered')
    t.equal((await deploymentRow(gateway, 'a/gpt-image-1'))?.state, 'healthy', 'back in service')
    t.equal(gateway.app.health.status('a/gpt-image-1').consecutiveFailures, 0)
    await assertNothingLeaked(t, { gateway, ports, received: [...(upstreams.a?.received ?? []), ...(upstreams.b?.received ?? [])], secrets: secretsOf(gateway) })
  })

  t.test('one deployment: tried anyway while cooling (its own 503 comes back), and a recovery is seen at once', async (t) => {
    const { upstreams, gateway, ports } = await startFleet(t, { a: serverError(503) }, [{ provider: 'a' }], { routing: { cooldown: { failures: 3, baseMs: 60_000 } } })
    const bodies: string[] = []
    for (let i = 0; i < 3; i++) {
      const answer = await generate(gateway)
      bodies.push(answer.body.toString())
      assertError(t, { status: answer.status, body: answer.body.toString() }, 503)
    }
    t.equal((await deploymentRow(gateway, 'a/gpt-image-1'))?.state, 'cooling')
    const whileCooling = await generate(gateway)
    bodies.push(whileCooling.body.toString())
    assertError(t, { status: whileCooling.status, body: whileCooling.body.toString() }, 503)
    t.equal(JSON.parse(whileCooling.body.toString()).error.message, 'status 503', "the upstream's own answer, not a breaker's")
    t.equal(received(upstreams.a), 4, 'the only deployment is still tried: one attempt per request')
    upstreams.a?.behave(OK)
    const recovered = await generate(gateway)
    t.equal(recovered.status, 200, 'recovered without waiting out the 60 s cooldown')
    t.equal((await deploymentRow(gateway, 'a/gpt-image-1'))?.state, 'healthy')
    await assertNothingLeaked(t, { gateway, ports, received: upstreams.a?.received, secrets: secretsOf(gateway), bodies })
  })
})

/** What OpenAI answers for a revoked key or a wrong organisation, with our secrets echoed in it. */
function leakyRefusal(status: number): Behaviour {
  return failWith(status, {}, `Incorrect API key provided: ${PROVIDER_KEY} for organization ${ORG_ID} in project ${PROJECT_ID}.`)
}

t.test('#34 upstream 401/403 echoing our key and organisation: never a 401 to the client, the deployment taken out, no secret shown', async (t) => {
  const secrets = [PROVIDER_KEY, ORG_ID, PROJECT_ID]
  for (const status of [401, 403]) {
    t.test(`${status}, one deployment`, async (t) => {
      const { upstreams, gateway, ports } = await startFleet(t, { a: leakyRefusal(status) }, [{ provider: 'a' }], {
        providerExtra: { organization: ORG_ID, project: PROJECT_ID }
      })
      const answer = await generate(gateway)
      const body = answer.body.toString()
      t.not(answer.status, 401, 'never 401: that would tell the client its own key is wrong')
      if (status === 401) assertError(t, { status: answer.status, body }, 502, 'upstream_credentials_rejected')
      else {
        // A 403 is relayed (docs/errors.md: only a 401 is rewritten), its credentials blanked out.
        assertError(t, { status: answer.status, body }, 403)
        t.equal((JSON.parse(body) as { error: { message: string } }).error.message, 'Incorrect API key provided: *** for organization *** in project ***.')
      }
      t.equal(upstreams.a?.received[0]?.headers['openai-organization'], ORG_ID, 'the organisation was sent upstream')
      const row = await deploymentRow(gateway, 'a/gpt-image-1')
      t.equal(row?.state, 'cooling', 'taken out at once')
      t.equal(row?.reason, 'credentials')
      t.same(JSON.stringify(answer.headers).match(/sk-upstream|org-UPSTREAM|proj_UPSTREAM/g), null, 'nothing in the headers')
      await assertNothingLeaked(t, { gateway, ports, received: upstreams.a?.received, secrets: [...secrets, gateway.key], bodies: [body] })
    })

    t.test(`${status}, two deployments: the other answers`, async (t) => {
      const { upstreams, gateway, ports } = await startFleet(t, { a: leakyRefusal(status), b: OK }, [{ provider: 'a' }, { provider: 'b', priority: 1 }], {
        providerExtra: { organization: ORG_ID, project: PROJECT_ID }
      })
      const answer = await generate(gateway)
      t.equal(answer.status, 200)
      t.equal(answer.headers['x-gateway-deployment'], 'b/gpt-image-1')
      t.equal((await generate(gateway)).status, 200)
      t.equal(received(upstreams.a), 1, 'taken out after one refusal')
      await assertNothingLeaked(t, { gateway, ports, received: upstreams.b?.received, secrets: [...secrets, gateway.key], bodies: [answer.body.toString()] })
    })
  }
})

/** A gateway whose gpt-image-1 has hostImages: it reads answers whole when asked for URLs. */
async function startHosting(t: Test, behaviour: Behaviour, maxAnswerBytes: number): Promise<Fleet> {
  const directory = await mkdtemp(join(tmpdir(), 'e-hosted-'))
  t.teardown(() => rm(directory, { recursive: true, force: true }))
  return startFleet(t, { a: behaviour }, [], {
    models: [{ name: 'gpt-image-1', hostImages: true, deployments: [{ provider: 'a' }] }],
    extra: { images: { signingSecret: 'e-signing-secret-0123456789abcdef0123', directory, maxAnswerBytes } }
  })
}

t.test('#35 invalid JSON, an HTML 502 page, a 200 MB answer: errors in the envelope, successes streamed through with RSS bounded', async (t) => {
  t.test('a 200 with broken JSON is streamed through unchanged; read whole (hosted links), it is 502 upstream_bad_response', async (t) => {
    const { upstreams, gateway, ports } = await startFleet(t, { a: invalidJson }, [{ provider: 'a' }])
    const answer = await generate(gateway)
    t.equal(answer.status, 200, 'the gateway does not parse answers it relays unchanged')
    t.equal(answer.body.toString(), '{"created":1,"data":[{"url":', 'the bytes as the upstream sent them')
    t.ok(await eventually(() => requestLines(gateway).length === 1))
    t.equal(requestLines(gateway)[0]?.status, 200)
    await assertNothingLeaked(t, { gateway, ports, received: upstreams.a?.received, secrets: secretsOf(gateway), bodies: [answer.body.toString()] })

    const hosted = await startHosting(t, invalidJson, 8 * 1024 * 1024)
    const read = await generate(hosted.gateway, { response_format: 'url' })
    assertError(t, { status: read.status, body: read.body.toString() }, 502, 'upstream_bad_response')
    t.equal(read.headers['x-should-retry'], 'false', 'the upstream may have made (and billed) the images')
    t.notMatch(read.body.toString(), /SyntaxError|Unexpected end|JSON\.parse/, 'no parser message')
    await assertNothingLeaked(t, { gateway: hosted.gateway, ports: hosted.ports, secrets: secretsOf(hosted.gateway), bodies: [read.body.toString()] })
  })

  t.test('an error status with a broken or HTML body: upstream_error in the envelope, the status kept', async (t) => {
    const { upstreams, gateway, ports } = await startFleet(t, { a: htmlBadGateway }, [{ provider: 'a' }])
    const answer = await generate(gateway)
    const body = answer.body.toString()
    assertError(t, { status: answer.status, body }, 502, 'upstream_error')
    t.equal(answer.headers['content-type'], 'application/json')
    t.notMatch(body, /<html|nginx/, 'none of the HTML page')
    upstreams.a?.behave(rawAnswer(400, 'application/json', '{"error":{"message":"bad'))
    const broken = await generate(gateway)
    assertError(t, { status: broken.status, body: broken.body.toString() }, 400, 'upstream_error')
    await assertNothingLeaked(t, { gateway, ports, received: upstreams.a?.received, secrets: secretsOf(gateway), bodies: [body, broken.body.toString()] })
  })

  t.test('200 MB answer: streamed to a client that reads it, RSS bounded', async (t) => {
    const size = 200 * 1024 * 1024
    const { upstreams, gateway, ports } = await startFleet(t, { a: giantBody(size) }, [{ provider: 'a' }])
    const rssBaselineMb = rssAfterGcMb()
    const sampler = rssSampler()
    const started = Date.now()
    const answer = await readThrough(
      `${gateway.url}/v1/images/generations`,
      { 'content-type': 'application/json', authorization: `Bearer ${gateway.key}` },
      Buffer.from(JSON.stringify({ model: 'gpt-image-1', prompt: 'a lighthouse' }))
    )
    const peakMb = sampler.stop()
    t.equal(answer.status, 200)
    t.ok(answer.ended, 'read to its end')
    t.ok(answer.bytes >= size, `${(answer.bytes / 1024 / 1024).toFixed(0)} MB through in ${Date.now() - started} ms`)
    t.ok(peakMb < rssBaselineMb + 96, `peak RSS ${peakMb.toFixed(0)} MB, baseline ${rssBaselineMb.toFixed(0)} MB: never held whole`)
    await assertNothingLeaked(t, { gateway, ports, received: upstreams.a?.received, secrets: secretsOf(gateway), rssBaselineMb })
  })

  t.test('200 MB answer read whole (hosted links): 502 past images.maxAnswerBytes, RSS bounded', async (t) => {
    const size = 200 * 1024 * 1024
    const hosted = await startHosting(t, giantBody(size), 8 * 1024 * 1024)
    const rssBaselineMb = rssAfterGcMb()
    const sampler = rssSampler()
    const answer = await generate(hosted.gateway, { response_format: 'url' })
    const peakMb = sampler.stop()
    assertError(t, { status: answer.status, body: answer.body.toString() }, 502, 'image_hosting_failed')
    t.equal(answer.headers['x-should-retry'], 'false')
    t.ok(peakMb < rssBaselineMb + 96, `peak RSS ${peakMb.toFixed(0)} MB, baseline ${rssBaselineMb.toFixed(0)} MB`)
    const upstream = hosted.upstreams.a?.received[0]
    t.ok(await eventually(() => upstream?.aborted === true), 'the rest of the answer was not read: the upstream connection was closed')
    await assertNothingLeaked(t, { gateway: hosted.gateway, ports: hosted.ports, secrets: secretsOf(hosted.gateway), bodies: [answer.body.toString()], rssBaselineMb })
  })
})

t.test('#36 Content-Encoding gzip/br x1000 or a 10 MB gzip that inflates to 10 GiB: not decompressed, passed through byte for byte; CPU and RSS bounded', async (t) => {
  const jsonBody = { 'content-type': 'application/json' }
  const payload = Buffer.from(JSON.stringify({ model: 'gpt-image-1', prompt: 'a lighthouse' }))

  t.test('a thousand codings', async (t) => {
    const codings = Array.from({ length: 1000 }, (_, i) => (i % 2 === 0 ? 'gzip' : 'br')).join(', ')
    const bytes = gzipSync(JSON.stringify({ created: 1, data: [{ b64_json: 'aGk=' }] }))
    const { upstreams, gateway, ports } = await startFleet(t, { a: encodedAnswer(bytes, codings) }, [{ provider: 'a' }])
    const answer = await readThrough(`${gateway.url}/v1/images/generations`, { ...jsonBody, authorization: `Bearer ${gateway.key}` }, payload)
    t.equal(answer.status, 200)
    t.equal(answer.headers['content-encoding'], codings, 'the coding header as the upstream sent it')
    t.equal(answer.sha256, createHash('sha256').update(bytes).digest('hex'), 'the bytes as the upstream sent them')
    t.equal(upstreams.a?.received[0]?.headers['accept-encoding'], 'identity', 'the gateway asked for no coding')
    await assertNothingLeaked(t, { gateway, ports, received: upstreams.a?.received, secrets: secretsOf(gateway) })
  })

  t.test('a gzip bomb', async (t) => {
    const bomb = gzipBomb(160)
    const { upstreams, gateway, ports } = await startFleet(t, { a: encodedAnswer(bomb, 'gzip') }, [{ provider: 'a' }])
    const rssBaselineMb = rssAfterGcMb()
    const sampler = rssSampler()
    const { value: answer, cpuMs } = await cpuMsOf(() =>
      readThrough(`${gateway.url}/v1/images/generations`, { ...jsonBody, authorization: `Bearer ${gateway.key}` }, payload)
    )
    const peakMb = sampler.stop()
    t.equal(answer.status, 200)
    t.equal(answer.headers['content-encoding'], 'gzip')
    t.equal(answer.bytes, bomb.length, `${(bomb.length / 1024 / 1024).toFixed(1)} MB relayed as they came`)
    t.equal(answer.sha256, createHash('sha256').update(bomb).digest('hex'))
    // Inflating 10 GiB takes tens of seconds of CPU and, held, would not fit in memory at all.
    t.ok(cpuMs < 3000, `${cpuMs.toFixed(0)} ms of CPU for the whole exchange`)
    t.ok(peakMb < rssBaselineMb + 96, `peak RSS ${peakMb.toFixed(0)} MB, baseline ${rssBaselineMb.toFixed(0)} MB`)

    // An error answer is read to be reshaped: a compressed one is not inflated, so it is no OpenAI body.
    upstreams.a?.behave(rawAnswer(500, 'application/json', bomb, { 'content-encoding': 'gzip' }))
    const failed = await generate(gateway)
    const body = failed.body.toString()
    assertError(t, { status: failed.status, body }, 500, 'upstream_error')
    t.equal(failed.headers['content-encoding'], undefined, 'our own envelope, not encoded')
    await assertNothingLeaked(t, { gateway, ports, received: upstreams.a?.received, secrets: secretsOf(gateway), bodies: [body], rssBaselineMb })
  })
})

t.test('#37 upstream 302 to the metadata address: not followed, 502 upstream_error', async (t) => {
  const metadata = await startRawListener('close')
  t.teardown(() => metadata.close())
  const bodies: string[] = []
  for (const [status, location] of [
    [302, `http://127.0.0.1:${metadata.port}/latest/meta-data/`],
    [307, `http://127.0.0.1:${metadata.port}/latest/meta-data/iam/security-credentials/`],
    [302, 'http://169.254.169.254/latest/meta-data/']
  ] as const) {
    const { upstreams, gateway, ports } = await startFleet(t, { a: redirectTo(location, status), b: OK }, [{ provider: 'a' }, { provider: 'b', priority: 1 }])
    const answer = await generate(gateway)
    const body = answer.body.toString()
    bodies.push(body)
    assertError(t, { status: answer.status, body }, 502, 'upstream_error')
    t.equal(answer.headers.location, undefined, `${status}: the Location is not passed on`)
    t.notMatch(body, /169\.254|meta-data/, 'nor named in the body')
    t.equal(received(upstreams.b), 0, 'a redirect is an answer, not a reason to fail over')
    await assertNothingLeaked(t, { gateway, ports, received: upstreams.a?.received, secrets: secretsOf(gateway), bodies })
  }
  // Give a follower time to connect before counting.
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.equal(metadata.connections, 0, 'nothing connected to the Location')
})
