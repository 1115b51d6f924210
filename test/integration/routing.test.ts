import { createHash } from 'node:crypto'
import { createServer } from 'node:net'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import OpenAI from 'openai'
import { hang, json, readAll, resetBeforeAnswer, startFakeUpstream, type Behaviour, type FakeUpstream } from '../helpers/fake-upstream.js'
import { eventually, startGateway, type Gateway, type GatewayOptions, type ModelSpec } from '../helpers/gateway.js'
import { sendRaw, type RawAnswer } from '../helpers/http-client.js'
import { makePng } from '../helpers/images.js'
import { buildMultipart } from '../helpers/multipart.js'
import { startRedis } from '../helpers/redis.js'

const OK: Behaviour = json(200, { created: 1, data: [{ b64_json: 'aGk=' }] })
const ADMIN_TOKEN = 'admin-token-0123456789abcdef'

interface Fleet {
  upstreams: Record<string, FakeUpstream>
  gateway: Gateway
}

/** Fake upstreams by provider id, and a gateway whose model `gpt-image-1` has the given deployments. */
async function startFleet(
  t: Test,
  behaviours: Record<string, Behaviour>,
  deployments: ModelSpec['deployments'],
  options: Partial<GatewayOptions> & { routing?: Record<string, unknown> } = {}
): Promise<Fleet> {
  const upstreams: Record<string, FakeUpstream> = {}
  for (const [id, behaviour] of Object.entries(behaviours)) upstreams[id] = await startFakeUpstream(behaviour)
  const { routing, ...rest } = options
  const gateway = await startGateway({
    providers: Object.fromEntries(Object.entries(upstreams).map(([id, u]) => [id, u.baseUrl])),
    models: [{ name: 'gpt-image-1', deployments }],
    adminToken: ADMIN_TOKEN,
    ...rest,
    extra: { routing: { cooldown: { baseMs: 60_000 }, ...routing }, ...rest.extra }
  })
  t.teardown(async () => {
    await gateway.close()
    for (const upstream of Object.values(upstreams)) await upstream.close()
  })
  return { upstreams, gateway }
}

function generate(gateway: Gateway, body: Record<string, unknown> = {}): Promise<RawAnswer> {
  return sendRaw(`${gateway.url}/v1/images/generations`, {
    headers: { 'content-type': 'application/json', authorization: `Bearer ${gateway.key}` },
    body: [Buffer.from(JSON.stringify({ model: 'gpt-image-1', prompt: 'a lighthouse', ...body }))]
  })
}

async function closedPortUrl(): Promise<string> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return `http://127.0.0.1:${port}/v1`
}

/** Reads the request whole, then drops the connection without an answer. */
const resetAfterBody: Behaviour = resetBeforeAnswer

/** Reads `bytes` of the body, then drops the connection. */
function resetAfter(bytes: number): Behaviour {
  return async (request, _response, received) => {
    await eventually(() => received.bytes >= bytes || received.complete, 10_000)
    request.socket.destroy()
  }
}

async function deployments(gateway: Gateway): Promise<{ id: string; state: string; reason: string | null; attempts: number }[]> {
  const answer = await sendRaw(`${gateway.url}/admin/deployments`, { method: 'GET', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
  return answer.json<{ data: { id: string; state: string; reason: string | null; attempts: number }[] }>().data
}

t.test('traffic is spread by weight within the best priority tier', async (t) => {
  const { upstreams, gateway } = await startFleet(t, { a: OK, b: OK, c: OK }, [
    { provider: 'a', weight: 3 },
    { provider: 'b', weight: 1 },
    { provider: 'c', priority: 1 }
  ])
  const total = 400
  for (let i = 0; i < total; i += 20) {
    const answers = await Promise.all(Array.from({ length: 20 }, () => generate(gateway)))
    for (const answer of answers) t.equal(answer.status, 200)
  }
  const a = upstreams.a?.received.length ?? 0
  const b = upstreams.b?.received.length ?? 0
  t.equal(a + b, total, 'every request went to the first tier')
  t.equal(upstreams.c?.received.length, 0, 'the fallback tier got nothing while the first was healthy')
  // Binomial(400, 0.75): mean 300, sd 8.7; 5 sd either side.
  t.ok(a > 256 && a < 344, `a got ${a} of ${total} (expected about 300)`)
})

t.test('a refused connection fails over, and the answer names the deployment that served it', async (t) => {
  const up = await startFakeUpstream(OK)
  t.teardown(() => up.close())
  const gateway = await startGateway({
    providers: { dead: await closedPortUrl(), up: up.baseUrl },
    models: [{ name: 'gpt-image-1', deployments: [{ provider: 'dead' }, { provider: 'up', priority: 1 }] }]
  })
  t.teardown(() => gateway.close())
  const answer = await generate(gateway)
  t.equal(answer.status, 200)
  t.equal(answer.headers['x-gateway-deployment'], 'up/gpt-image-1')
  const line = gateway.logs().find((l) => l.msg === 'request')
  t.equal(line?.deployment, 'up/gpt-image-1')
  t.same(line?.failover, [{ deployment: 'dead/gpt-image-1', kind: 'connect' }])
  const metrics = await (await fetch(`${gateway.url}/metrics`)).text()
  t.match(metrics, 'image_gateway_upstream_errors_total{deployment="dead/gpt-image-1",kind="connect"} 1')
  t.match(metrics, 'image_gateway_requests_total{route="/v1/images/generations",model="gpt-image-1",deployment="up/gpt-image-1",status="200"} 1')
})

t.test('429, 500, 502, 503, 401 and 403 fail over; the next deployment gets the same request', async (t) => {
  for (const status of [429, 500, 502, 503, 401, 403]) {
    const error = { error: { message: `status ${status}`, type: 'server_error', param: null, code: null } }
    const { upstreams, gateway } = await startFleet(t, { a: json(status, error), b: OK }, [{ provider: 'a' }, { provider: 'b', priority: 1 }])
    const answer = await generate(gateway, { n: 2 })
    t.equal(answer.status, 200, `${status} failed over`)
    t.equal(answer.headers['x-gateway-deployment'], 'b/gpt-image-1')
    t.equal(upstreams.a?.received[0]?.sha256(), upstreams.b?.received[0]?.sha256(), 'byte-identical bodies')
  }
})

t.test('a 503 whose body breaks off fails over all the same', async (t) => {
  const cut: Behaviour = async (request, response, received) => {
    await readAll(request, received)
    response.writeHead(503, { 'content-type': 'application/json', 'content-length': '500' })
    response.write('{"error":{"message":"bu')
    setTimeout(() => response.socket?.destroy(), 20)
  }
  const { upstreams, gateway } = await startFleet(t, { a: cut, b: OK }, [{ provider: 'a' }, { provider: 'b', priority: 1 }])
  const answer = await generate(gateway)
  t.equal(answer.status, 200)
  t.equal(answer.headers['x-gateway-deployment'], 'b/gpt-image-1')
  t.equal(upstreams.b?.received.length, 1)
  t.equal(gateway.app.health.status('a/gpt-image-1').consecutiveFailures, 1, 'counted against the deployment')
})

t.test('400 and 504 from an upstream are the answer: not failed over', async (t) => {
  for (const status of [400, 504]) {
    const error = { error: { message: 'no', type: 'invalid_request_error', param: 'prompt', code: null } }
    const { upstreams, gateway } = await startFleet(t, { a: json(status, error), b: OK }, [{ provider: 'a' }, { provider: 'b', priority: 1 }])
    const answer = await generate(gateway)
    t.equal(answer.status, status)
    t.equal(answer.json<{ error: { message: string } }>().error.message, 'no')
    t.equal(upstreams.b?.received.length, 0)
  }
})

t.test('the last failure goes to the client when every deployment fails', async (t) => {
  const limited = json(429, { error: { message: 'slow down', type: 'requests', param: null, code: 'rate_limit_exceeded' } }, { 'retry-after': '30' })
  const { upstreams, gateway } = await startFleet(t, { a: json(500, { error: { message: 'boom', type: 'server_error', param: null, code: null } }), b: limited }, [
    { provider: 'a' },
    { provider: 'b', priority: 1 }
  ])
  const answer = await generate(gateway)
  t.equal(answer.status, 429)
  t.equal(answer.headers['retry-after'], '30', "the upstream's retry-after reaches the client")
  t.equal(answer.json<{ error: { message: string } }>().error.message, 'slow down')
  t.equal(upstreams.a?.received.length, 1)
  t.equal(upstreams.b?.received.length, 1)
})

t.test('attempts are capped', async (t) => {
  const failing = json(503, { error: { message: 'busy', type: 'server_error', param: null, code: null } })
  const { upstreams, gateway } = await startFleet(t, { a: failing, b: failing, c: failing }, [{ provider: 'a' }, { provider: 'b', priority: 1 }, { provider: 'c', priority: 2 }], {
    routing: { maxAttempts: 2 }
  })
  const answer = await generate(gateway)
  t.equal(answer.status, 503)
  t.equal((upstreams.a?.received.length ?? 0) + (upstreams.b?.received.length ?? 0), 2)
  t.equal(upstreams.c?.received.length, 0)
})

t.test('a reset after the upstream read the whole body is not retried: 502, x-should-retry false', async (t) => {
  const { upstreams, gateway } = await startFleet(t, { a: resetAfterBody, b: OK }, [{ provider: 'a' }, { provider: 'b', priority: 1 }])
  const answer = await generate(gateway)
  t.equal(answer.status, 502)
  t.equal(answer.headers['x-should-retry'], 'false')
  t.equal(answer.json<{ error: { code: string } }>().error.code, 'upstream_unreachable')
  t.equal(upstreams.b?.received.length, 0, 'the other deployment never saw it')
})

t.test('no answer in time after the whole body: 504, x-should-retry false, not retried', async (t) => {
  const { upstreams, gateway } = await startFleet(t, { a: hang, b: OK }, [{ provider: 'a' }, { provider: 'b', priority: 1 }], {
    timeouts: { headersMs: 300 }
  })
  const answer = await generate(gateway)
  t.equal(answer.status, 504)
  t.equal(answer.headers['x-should-retry'], 'false')
  t.equal(upstreams.b?.received.length, 0)
})

t.test('slow headers within the timeout are simply waited for', async (t) => {
  const slow: Behaviour = async (request, response, received) => {
    await new Promise((resolve) => setTimeout(resolve, 300))
    await OK(request, response, received)
  }
  const { upstreams, gateway } = await startFleet(t, { a: slow, b: OK }, [{ provider: 'a' }, { provider: 'b', priority: 1 }], {
    timeouts: { headersMs: 2000 }
  })
  const answer = await generate(gateway)
  t.equal(answer.status, 200)
  t.equal(answer.headers['x-gateway-deployment'], 'a/gpt-image-1')
  t.equal(upstreams.b?.received.length, 0)
})

t.test('a stream that stops after it started is not failed over: the client gets an error event', async (t) => {
  const broken: Behaviour = async (request, response, received) => {
    await readAll(request, received)
    response.writeHead(200, { 'content-type': 'text/event-stream' })
    response.write('event: image_generation.partial_image\ndata: {"type":"image_generation.partial_image","b64_json":"aGk=","partial_image_index":0}\n\n')
    setTimeout(() => response.socket?.destroy(), 50)
  }
  const { upstreams, gateway } = await startFleet(t, { a: broken, b: OK }, [{ provider: 'a' }, { provider: 'b', priority: 1 }])
  const answer = await generate(gateway, { stream: true, partial_images: 1 })
  t.equal(answer.status, 200)
  t.match(answer.body.toString(), /event: error/)
  t.equal(upstreams.b?.received.length, 0)
})

const bigImage = makePng({ width: 64, height: 64, seed: 5, padToBytes: 4 * 1024 * 1024 })

function editForm(model = 'gpt-image-1'): { body: Buffer; contentType: string } {
  return buildMultipart([
    { name: 'model', value: model },
    { name: 'prompt', value: 'add a boat' },
    { name: 'image', filename: 'sea.png', data: bigImage, contentType: 'image/png' }
  ])
}

function edit(gateway: Gateway, form: { body: Buffer; contentType: string }): Promise<RawAnswer> {
  return sendRaw(`${gateway.url}/v1/images/edits`, {
    headers: { 'content-type': form.contentType, authorization: `Bearer ${gateway.key}` },
    body: [form.body]
  })
}

t.test('a 4 MB upload reset mid-body fails over with byte-identical bodies at both upstreams', async (t) => {
  const { upstreams, gateway } = await startFleet(t, { a: resetAfter(1024 * 1024), b: OK }, [{ provider: 'a' }, { provider: 'b', priority: 1 }])
  const form = editForm()
  const answer = await edit(gateway, form)
  t.equal(answer.status, 200)
  t.equal(answer.headers['x-gateway-deployment'], 'b/gpt-image-1')
  const first = upstreams.a?.received[0]
  const second = upstreams.b?.received[0]
  await first?.done
  t.notOk(first?.complete, 'the first upstream never had the whole request')
  t.equal(second?.sha256(), createHash('sha256').update(form.body).digest('hex'), 'the second got exactly what the client sent')
})

t.test('an upload that answered 503 early fails over too, spooled through a temporary file', async (t) => {
  const early: Behaviour = (_request, response) => {
    response.writeHead(503, { 'content-type': 'application/json' })
    response.end(JSON.stringify({ error: { message: 'busy', type: 'server_error', param: null, code: null } }))
  }
  const { upstreams, gateway } = await startFleet(t, { a: early, b: OK }, [{ provider: 'a' }, { provider: 'b', priority: 1 }], {
    limits: { holdMemoryBytes: 64 * 1024 }
  })
  // The model last: the upload is held (in a file) until the form ends, then replayed twice.
  const form = buildMultipart([
    { name: 'image', filename: 'sea.png', data: bigImage, contentType: 'image/png' },
    { name: 'prompt', value: 'add a boat' },
    { name: 'model', value: 'gpt-image-1' }
  ])
  const answer = await edit(gateway, form)
  t.equal(answer.status, 200)
  t.equal(upstreams.b?.received[0]?.sha256(), createHash('sha256').update(form.body).digest('hex'))
})

t.test('an upload over routing.replayBodyBytes is not failed over', async (t) => {
  const { upstreams, gateway } = await startFleet(t, { a: resetAfter(2 * 1024 * 1024), b: OK }, [{ provider: 'a' }, { provider: 'b', priority: 1 }], {
    routing: { replayBodyBytes: 1024 * 1024 }
  })
  // Large enough that the socket buffers between us cannot hold what is left after the reset.
  const huge = makePng({ width: 64, height: 64, seed: 6, padToBytes: 24 * 1024 * 1024 })
  const answer = await edit(gateway, buildMultipart([
    { name: 'model', value: 'gpt-image-1' },
    { name: 'prompt', value: 'add a boat' },
    { name: 'image', filename: 'sea.png', data: huge, contentType: 'image/png' }
  ]))
  t.equal(answer.status, 502)
  t.not(answer.headers['x-should-retry'], 'false', 'the upstream never had it whole: the client may send it again')
  t.equal(upstreams.b?.received.length, 0)
})

t.test('an alias: each deployment gets its own model name, and only those bytes change', async (t) => {
  const { upstreams, gateway } = await startFleet(t, { a: json(500, { error: { message: 'x', type: 'server_error', param: null, code: null } }), b: OK }, [], {
    models: [
      {
        name: 'house-style',
        rulesOf: 'gpt-image-1',
        deployments: [
          { provider: 'a', model: 'gpt-image-1' },
          { provider: 'b', model: 'gpt-image-1.5', priority: 1 }
        ]
      }
    ]
  })
  const form = editForm('house-style')
  const answer = await edit(gateway, form)
  t.equal(answer.status, 200)
  const expected = (name: string): string => createHash('sha256').update(editForm(name).body).digest('hex')
  t.equal(upstreams.a?.received[0]?.sha256(), expected('gpt-image-1'))
  t.equal(upstreams.b?.received[0]?.sha256(), expected('gpt-image-1.5'))
})

t.test('retry-after: with no other deployment, a short wait is waited out on the same one', async (t) => {
  let calls = 0
  const onceLimited: Behaviour = async (request, response, received) => {
    calls++
    if (calls === 1) {
      await json(429, { error: { message: 'wait', type: 'requests', param: null, code: 'rate_limit_exceeded' } }, { 'retry-after-ms': '200' })(request, response, received)
    } else await OK(request, response, received)
  }
  const { upstreams, gateway } = await startFleet(t, { a: onceLimited }, [{ provider: 'a' }])
  const started = Date.now()
  const answer = await generate(gateway)
  t.equal(answer.status, 200)
  t.ok(Date.now() - started >= 190, 'the wait was honoured')
  t.equal(upstreams.a?.received.length, 2)
})

t.test('retry-after longer than routing.maxRetryWaitMs goes back to the client', async (t) => {
  const limited = json(429, { error: { message: 'wait', type: 'requests', param: null, code: 'rate_limit_exceeded' } }, { 'retry-after': '20' })
  const { upstreams, gateway } = await startFleet(t, { a: limited }, [{ provider: 'a' }])
  const answer = await generate(gateway)
  t.equal(answer.status, 429)
  t.equal(answer.headers['retry-after'], '20')
  t.equal(upstreams.a?.received.length, 1)
})

t.test('cooldown: a deployment that keeps failing is taken out, probed when its time is up, and put back', async (t) => {
  const failing = json(500, { error: { message: 'boom', type: 'server_error', param: null, code: null } })
  const { upstreams, gateway } = await startFleet(t, { a: failing, b: OK }, [{ provider: 'a' }, { provider: 'b', priority: 1 }], {
    routing: { cooldown: { failures: 3, baseMs: 400 } }
  })
  for (let i = 0; i < 3; i++) t.equal((await generate(gateway)).status, 200)
  t.equal(upstreams.a?.received.length, 3)
  const cooling = (await deployments(gateway)).find((d) => d.id === 'a/gpt-image-1')
  t.equal(cooling?.state, 'cooling')
  t.equal(cooling?.reason, 'server_error')
  for (let i = 0; i < 5; i++) t.equal((await generate(gateway)).status, 200)
  t.equal(upstreams.a?.received.length, 3, 'not tried while cooling down')

  // Still failing when probed: out again, for twice as long.
  await new Promise((resolve) => setTimeout(resolve, 450))
  t.equal((await generate(gateway)).status, 200)
  t.equal(upstreams.a?.received.length, 4, 'one probe')
  t.equal((await deployments(gateway)).find((d) => d.id === 'a/gpt-image-1')?.state, 'cooling')

  upstreams.a?.behave(OK)
  await new Promise((resolve) => setTimeout(resolve, 850))
  const answer = await generate(gateway)
  t.equal(answer.headers['x-gateway-deployment'], 'a/gpt-image-1', 'the probe succeeded')
  t.equal((await deployments(gateway)).find((d) => d.id === 'a/gpt-image-1')?.state, 'healthy')
  t.equal((await generate(gateway)).headers['x-gateway-deployment'], 'a/gpt-image-1', 'back in service')
})

t.test('credentials refused or quota gone: taken out at once', async (t) => {
  for (const [status, code] of [
    [401, 'invalid_api_key'],
    [429, 'insufficient_quota']
  ] as const) {
    const { upstreams, gateway } = await startFleet(t, { a: json(status, { error: { message: 'no', type: 'x', param: null, code } }), b: OK }, [
      { provider: 'a' },
      { provider: 'b', priority: 1 }
    ])
    t.equal((await generate(gateway)).status, 200)
    t.equal((await generate(gateway)).status, 200)
    t.equal(upstreams.a?.received.length, 1, `${code}: one failure was enough`)
    t.equal((await deployments(gateway)).find((d) => d.id === 'a/gpt-image-1')?.reason, status === 401 ? 'credentials' : 'quota')
  }
})

t.test('every deployment cooling down: they are tried anyway rather than refusing the request', async (t) => {
  const { upstreams, gateway } = await startFleet(t, { a: json(401, { error: { message: 'no', type: 'x', param: null, code: null } }) }, [{ provider: 'a' }])
  t.equal((await generate(gateway)).status, 502)
  t.equal((await generate(gateway)).status, 502)
  t.equal(upstreams.a?.received.length, 2)
})

t.test('two instances on one Redis agree on cooldowns', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.close())
  const a = await startFakeUpstream(json(401, { error: { message: 'no', type: 'x', param: null, code: null } }))
  const b = await startFakeUpstream(OK)
  t.teardown(async () => {
    await a.close()
    await b.close()
  })
  const options: GatewayOptions = {
    providers: { a: a.baseUrl, b: b.baseUrl },
    models: [{ name: 'gpt-image-1', deployments: [{ provider: 'a' }, { provider: 'b', priority: 1 }] }],
    redis: { url: redis.url, keyPrefix: redis.prefix },
    adminToken: ADMIN_TOKEN
  }
  const one = await startGateway(options)
  const two = await startGateway(options)
  t.teardown(async () => {
    await one.close()
    await two.close()
  })
  t.equal((await generate(one)).status, 200)
  t.equal(a.received.length, 1)
  t.ok(await eventually(() => two.app.health.availability('a/gpt-image-1') === 'cooling'), 'the other instance heard of it')
  const answer = await generate(two)
  t.equal(answer.headers['x-gateway-deployment'], 'b/gpt-image-1')
  t.equal(a.received.length, 1, 'the second instance did not try the deployment the first took out')

  // An instance that starts later reads the cooldowns in force.
  const three = await startGateway(options)
  t.teardown(() => three.close())
  t.ok(await eventually(() => three.app.health.availability('a/gpt-image-1') === 'cooling'))
})

t.test('the SDK sees the failed-over answer as a plain success', async (t) => {
  const { gateway } = await startFleet(t, { a: json(503, { error: { message: 'busy', type: 'server_error', param: null, code: null } }), b: OK }, [
    { provider: 'a' },
    { provider: 'b', priority: 1 }
  ])
  const client = new OpenAI({ baseURL: gateway.baseURL, apiKey: gateway.key, maxRetries: 0 })
  const { data, response } = await client.images.generate({ model: 'gpt-image-1', prompt: 'a lighthouse' }).withResponse()
  t.equal(data.data?.[0]?.b64_json, 'aGk=')
  t.equal(response.headers.get('x-gateway-deployment'), 'b/gpt-image-1')
})

t.test('/admin/deployments needs the admin token, and lists every deployment', async (t) => {
  const { gateway } = await startFleet(t, { a: OK, b: OK }, [{ provider: 'a' }, { provider: 'b', weight: 2 }])
  const refused = await sendRaw(`${gateway.url}/admin/deployments`, { method: 'GET' })
  t.equal(refused.status, 401)
  await generate(gateway)
  const list = await deployments(gateway)
  t.same(
    list.map((d) => d.id),
    ['a/gpt-image-1', 'b/gpt-image-1']
  )
  t.equal(
    list.reduce((sum, d) => sum + d.attempts, 0),
    1
  )
})
