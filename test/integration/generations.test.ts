import { createServer } from 'node:net'
import OpenAI from 'openai'
import t, { type Test } from 'tap'
import { eventually, PROVIDER_KEY, startGateway, type Gateway } from '../helpers/gateway.js'
import { sendRaw } from '../helpers/http-client.js'
import { hang, json, resetBeforeAnswer, startFakeUpstream, type FakeUpstream } from '../helpers/fake-upstream.js'
import { startStack } from '../helpers/stack.js'

async function setup(t: Test, options: Partial<Parameters<typeof startGateway>[0]> = {}): Promise<{
  upstream: FakeUpstream
  gateway: Gateway
  client: OpenAI
}> {
  const { upstream, gateway } = await startStack(t, { gateway: options })
  const client = new OpenAI({ apiKey: gateway.key, baseURL: gateway.baseURL, maxRetries: 0 })
  return { upstream, gateway, client }
}

t.test('b64_json answer: the SDK gets the upstream answer; the upstream gets the provider key, never the client key', async (t) => {
  const { upstream, gateway, client } = await setup(t)
  const answer = {
    created: 1713833628,
    data: [{ b64_json: Buffer.from('png-bytes').toString('base64') }],
    usage: { total_tokens: 100, input_tokens: 50, output_tokens: 50, input_tokens_details: { text_tokens: 10, image_tokens: 40 } }
  }
  upstream.behave(json(200, answer, { 'x-request-id': 'req_upstream_1', 'openai-processing-ms': '1234', 'set-cookie': 'a=b' }))
  const { data, response } = await client.images
    .generate({ model: 'gpt-image-1', prompt: 'a sea otter', n: 1, size: '1024x1024', quality: 'low' })
    .withResponse()
  t.strictSame(data, answer)
  t.equal(response.headers.get('x-request-id'), 'req_upstream_1', 'the upstream request id reaches the SDK')
  t.equal(response.headers.get('openai-processing-ms'), '1234')
  t.equal(response.headers.get('set-cookie'), null, 'upstream cookies stay behind')
  t.match(response.headers.get('x-gateway-request-id'), /^req_[0-9a-f]{32}$/)
  const seen = upstream.received[0]
  t.ok(seen)
  t.equal(seen?.url, '/v1/images/generations')
  t.equal(seen?.headers.authorization, `Bearer ${PROVIDER_KEY}`)
  t.notMatch(JSON.stringify(seen?.headers), gateway.key, 'the client key is not forwarded in any header')
  t.strictSame(JSON.parse(seen?.body().toString() ?? ''), {
    model: 'gpt-image-1',
    prompt: 'a sea otter',
    n: 1,
    size: '1024x1024',
    quality: 'low'
  })
})

t.test('the JSON body reaches the upstream byte for byte, unknown fields included', async (t) => {
  const { upstream, gateway } = await setup(t)
  const body = Buffer.from('{ "model" : "gpt-image-2", "prompt": "x\\u00e9", "size": "2048x1152", "new_param_2027": {"a": [1, 2]} }')
  const answer = await sendRaw(`${gateway.url}/v1/images/generations`, {
    headers: { 'content-type': 'application/json', authorization: `Bearer ${gateway.key}`, 'openai-organization': 'org-client', cookie: 'c=d' },
    body: [body]
  })
  t.equal(answer.status, 200)
  const seen = upstream.received[0]
  t.ok(seen?.body().equals(body), 'same bytes')
  t.equal(seen?.headers['openai-organization'], undefined, "the client's organization is not forwarded")
  t.equal(seen?.headers.cookie, undefined)
})

t.test('url answers with revised_prompt (dall-e-3)', async (t) => {
  const { upstream, client } = await setup(t)
  const answer = { created: 1, data: [{ url: 'https://images.example/a.png', revised_prompt: 'A cute otter' }] }
  upstream.behave(json(200, answer))
  const data = await client.images.generate({ model: 'dall-e-3', prompt: 'otter', style: 'natural', quality: 'hd' })
  t.strictSame(data, answer)
})

t.test('a 1.5 MB b64_json answer arrives whole', async (t) => {
  const { upstream, client } = await setup(t)
  const b64 = Buffer.alloc(1_100_000, 7).toString('base64')
  t.ok(b64.length > 1_400_000)
  upstream.behave(json(200, { created: 2, data: [{ b64_json: b64 }] }))
  const data = await client.images.generate({ model: 'gpt-image-1.5', prompt: 'big' })
  t.equal(data.data?.[0]?.b64_json, b64)
})

t.test('stream: true: each event reaches the SDK before the upstream sends the next', async (t) => {
  const { upstream, client } = await setup(t)
  let release: () => void = () => undefined
  const partial = (i: number) => ({
    type: 'image_generation.partial_image',
    b64_json: Buffer.from(`partial-${i}`).toString('base64'),
    created_at: 1,
    size: '1024x1024',
    quality: 'high',
    background: 'opaque',
    output_format: 'png',
    partial_image_index: i
  })
  upstream.behave(async (_request, response, received) => {
    await received.done
    response.writeHead(200, { 'content-type': 'text/event-stream' })
    for (let i = 0; i < 2; i++) {
      response.write(`event: image_generation.partial_image\ndata: ${JSON.stringify(partial(i))}\n\n`)
      // The next event is written only once the client has seen this one: a buffering relay deadlocks here.
      await new Promise<void>((resolve) => (release = resolve))
    }
    const completed = { ...partial(9), type: 'image_generation.completed', usage: { total_tokens: 1 } }
    response.end(`event: image_generation.completed\ndata: ${JSON.stringify(completed)}\n\n`)
  })
  const stream = await client.images.generate({ model: 'gpt-image-1', prompt: 'otter', stream: true, partial_images: 2 })
  const types: string[] = []
  for await (const event of stream) {
    types.push(event.type)
    release()
  }
  t.strictSame(types, ['image_generation.partial_image', 'image_generation.partial_image', 'image_generation.completed'])
})

t.test('a stream that breaks after it started ends with an error event the SDK raises', async (t) => {
  const { upstream, client } = await setup(t)
  upstream.behave(async (request, response, received) => {
    await received.done
    response.writeHead(200, { 'content-type': 'text/event-stream' })
    response.write(`event: image_generation.partial_image\ndata: ${JSON.stringify({ type: 'image_generation.partial_image', b64_json: 'AA==' })}\n\n`)
    setTimeout(() => request.socket.destroy(), 50)
  })
  const stream = await client.images.generate({ model: 'gpt-image-1', prompt: 'otter', stream: true })
  const seen: string[] = []
  await t.rejects(
    (async () => {
      for await (const event of stream) seen.push(event.type)
    })(),
    { message: /stream broke off/ }
  )
  t.strictSame(seen, ['image_generation.partial_image'])
})

t.test('aliases and defaults: the upstream receives its own model name', async (t) => {
  const { upstream, client } = await setup(t, {
    models: [
      { name: 'fast', deployments: [{ provider: 'up', model: 'gpt-image-1-mini' }] },
      { name: 'dall-e-2', deployments: [{ provider: 'up' }] }
    ]
  })
  await client.images.generate({ model: 'fast', prompt: 'a' })
  t.equal(JSON.parse(upstream.received[0]?.body().toString() ?? '').model, 'gpt-image-1-mini')
  await client.images.generate({ prompt: 'b' })
  t.equal(JSON.parse(upstream.received[1]?.body().toString() ?? '').model, 'dall-e-2', 'the default is made explicit')
  // the alias is checked by its upstream model's rules: gpt-image-1-mini refuses response_format
  await t.rejects(client.images.generate({ model: 'fast', prompt: 'c', response_format: 'url' }), {
    status: 400,
    param: 'response_format',
    code: 'unknown_parameter'
  })
  t.equal(upstream.received.length, 2)
})

t.test('refused before any upstream call: unknown model, bad parameters, bad JSON', async (t) => {
  const { upstream, gateway, client } = await setup(t)
  await t.rejects(client.images.generate({ model: 'gpt-7', prompt: 'x' }), {
    status: 404,
    code: 'model_not_found',
    type: 'invalid_request_error',
    message: "The model 'gpt-7' does not exist or you do not have access to it."
  })
  await t.rejects(client.images.generate({ model: 'dall-e-3', prompt: 'x', n: 2 }), {
    status: 400,
    param: 'n',
    code: 'integer_above_max_value'
  })
  await t.rejects(client.images.generate({ model: 'dall-e-2', prompt: 'x'.repeat(1001) }), {
    status: 400,
    param: 'prompt',
    code: 'string_above_max_length'
  })
  await t.rejects(client.images.generate({ model: 'gpt-image-1', prompt: 'x', size: '512x512' }), {
    status: 400,
    param: 'size',
    code: 'invalid_value'
  })
  const bad = await sendRaw(`${gateway.url}/v1/images/generations`, {
    headers: { 'content-type': 'application/json', authorization: `Bearer ${gateway.key}` },
    body: [Buffer.from('{"prompt": ')]
  })
  t.equal(bad.status, 400)
  t.equal(bad.headers['content-type'], 'application/json')
  t.strictSame(Object.keys(bad.json<{ error: object }>().error), ['message', 'type', 'param', 'code'])
  t.equal(bad.json<{ error: { code: string } }>().error.code, 'invalid_json')
  const form = await sendRaw(`${gateway.url}/v1/images/generations`, {
    headers: { 'content-type': 'text/plain', authorization: `Bearer ${gateway.key}` },
    body: [Buffer.from('hello')]
  })
  t.equal(form.status, 400)
  t.equal(form.json<{ error: { code: string } }>().error.code, 'unsupported_content_type')
  t.equal(upstream.received.length, 0, 'the upstream was never called')
})

t.test('upstream 400, 429 and 500 pass through with their status, body and retry headers', async (t) => {
  const { upstream, client } = await setup(t)
  const policy = {
    error: { message: 'Your request was rejected as a result of our safety system.', type: 'invalid_request_error', param: null, code: 'content_policy_violation' }
  }
  upstream.behave(json(400, policy))
  await t.rejects(client.images.generate({ model: 'dall-e-3', prompt: 'x' }), { status: 400, code: 'content_policy_violation' })

  upstream.behave(
    json(
      429,
      { error: { message: 'Rate limit reached for images per minute.', type: 'requests', param: null, code: 'rate_limit_exceeded' } },
      { 'retry-after': '7', 'x-ratelimit-remaining-requests': '0', 'x-request-id': 'req_429' }
    )
  )
  const limited = await client.images.generate({ model: 'dall-e-3', prompt: 'x' }).catch((err: unknown) => err)
  t.type(limited, OpenAI.RateLimitError)
  const rate = limited as InstanceType<typeof OpenAI.RateLimitError>
  t.equal(rate.headers?.get('retry-after'), '7')
  t.equal(rate.headers?.get('x-ratelimit-remaining-requests'), '0')
  t.equal(rate.requestID, 'req_429')
  t.equal(rate.type, 'requests')

  // An error body with only code + message (Azure's and many relays' shape) gets all four keys.
  upstream.behave(json(500, { error: { code: '500', message: 'The server had an error' } }))
  await t.rejects(client.images.generate({ model: 'dall-e-3', prompt: 'x' }), {
    status: 500,
    code: '500',
    type: 'server_error',
    param: null
  })
})

t.test('upstream faults: down 502, silent 504, reset 502, HTML error keeps its status', async (t) => {
  const closed = createServer()
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve))
  const port = (closed.address() as { port: number }).port
  await new Promise<void>((resolve) => closed.close(() => resolve()))
  const upstream = await startFakeUpstream()
  const gateway = await startGateway({
    providers: { up: upstream.baseUrl, down: `http://127.0.0.1:${port}/v1` },
    timeouts: { headersMs: 300 },
    models: [
      { name: 'gpt-image-1', deployments: [{ provider: 'up' }] },
      { name: 'dall-e-2', deployments: [{ provider: 'down' }] }
    ]
  })
  t.teardown(async () => {
    await gateway.close()
    await upstream.close()
  })
  const client = new OpenAI({ apiKey: gateway.key, baseURL: gateway.baseURL, maxRetries: 0 })
  await t.rejects(client.images.generate({ model: 'dall-e-2', prompt: 'x' }), { status: 502, code: 'upstream_unreachable' })
  upstream.behave(hang)
  await t.rejects(client.images.generate({ model: 'gpt-image-1', prompt: 'x' }), { status: 504, code: 'upstream_timeout' })
  upstream.behave(resetBeforeAnswer)
  await t.rejects(client.images.generate({ model: 'gpt-image-1', prompt: 'x' }), { status: 502, code: 'upstream_unreachable' })
  upstream.behave(async (_request, response, received) => {
    await received.done
    response.writeHead(503, { 'content-type': 'text/html' })
    response.end('<html>busy</html>')
  })
  await t.rejects(client.images.generate({ model: 'gpt-image-1', prompt: 'x' }), { status: 503, code: 'upstream_error' })
  const logs = gateway.logs().filter((l) => l.msg === 'request')
  t.strictSame(
    logs.map((l) => l.status),
    [502, 504, 502, 503]
  )
})

t.test('an answer cut off mid-body reaches the client as a failure, not as a short success', async (t) => {
  const { upstream, client } = await setup(t)
  upstream.behave(async (request, response, received) => {
    await received.done
    const body = JSON.stringify({ created: 1, data: [{ b64_json: 'A'.repeat(200_000) }] })
    response.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length })
    response.write(body.slice(0, 50_000))
    setTimeout(() => request.socket.destroy(), 20)
  })
  await t.rejects(client.images.generate({ model: 'gpt-image-1', prompt: 'x' }))
})

t.test('the upstream credential never reaches the client, and an upstream 401 is not the client\'s 401', async (t) => {
  const { upstream, client } = await setup(t)
  upstream.behave(json(401, { error: { message: `Incorrect API key provided: ${PROVIDER_KEY}.`, type: 'invalid_request_error', param: null, code: 'invalid_api_key' } }))
  const err = await client.images.generate({ model: 'gpt-image-1', prompt: 'x' }).catch((e: unknown) => e)
  t.match(err, { status: 502, code: 'upstream_credentials_rejected' })
  t.notMatch(String((err as Error).message), PROVIDER_KEY)
  upstream.behave(json(403, { error: { message: `Key ${PROVIDER_KEY} lacks access to gpt-image-1`, type: 'invalid_request_error', param: null, code: null } }))
  const forbidden = await client.images.generate({ model: 'gpt-image-1', prompt: 'x' }).catch((e: unknown) => e)
  t.match(forbidden, { status: 403 })
  t.notMatch(String((forbidden as Error).message), PROVIDER_KEY)
  t.match(String((forbidden as Error).message), /Key \*\*\* lacks access/)
})

t.test('a client that gives up aborts the upstream request', async (t) => {
  const { upstream, client } = await setup(t)
  upstream.behave(hang)
  const controller = new AbortController()
  const pending = client.images.generate({ model: 'gpt-image-1', prompt: 'slow' }, { signal: controller.signal })
  const seen = await upstream.nthRequest(1)
  await seen.done
  controller.abort()
  await t.rejects(pending)
  t.ok(await eventually(() => seen.aborted), 'the upstream saw its connection close')
})

t.test('GET /v1/models lists the configured models in OpenAI\'s shape', async (t) => {
  const { client } = await setup(t, {
    models: [
      { name: 'gpt-image-1', deployments: [{ provider: 'up' }] },
      { name: 'house-style', deployments: [{ provider: 'up', model: 'gpt-image-1' }] }
    ]
  })
  const ids: string[] = []
  for await (const model of client.models.list()) ids.push(model.id)
  t.strictSame(ids, ['gpt-image-1', 'house-style'])
  const one = await client.models.retrieve('gpt-image-1')
  t.match(one, { id: 'gpt-image-1', object: 'model', owned_by: 'openai' })
  t.type(one.created, 'number')
  await t.rejects(client.models.retrieve('nope'), { status: 404, code: 'model_not_found' })
})

t.test('one log line per request, with no key and no prompt', async (t) => {
  const { upstream, gateway, client } = await setup(t)
  upstream.behave(json(200, { created: 1, data: [] }, { 'x-request-id': 'req_up' }))
  const prompt = 'a-very-secret-prompt-text'
  await client.images.generate({ model: 'gpt-image-1', prompt })
  const lines = gateway.logs().filter((l) => l.msg === 'request')
  t.equal(lines.length, 1)
  t.match(lines[0], {
    method: 'POST',
    route: '/v1/images/generations',
    status: 200,
    model: 'gpt-image-1',
    deployment: 'up/gpt-image-1',
    upstreamStatus: 200,
    upstreamRequestId: 'req_up'
  })
  t.ok((lines[0]?.bytesIn as number) > 0)
  t.ok((lines[0]?.bytesOut as number) > 0)
  const text = gateway.logText()
  t.notMatch(text, prompt)
  t.notMatch(text, gateway.key)
  t.notMatch(text, PROVIDER_KEY)
})
