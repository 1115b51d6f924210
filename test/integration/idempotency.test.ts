import { randomBytes } from 'node:crypto'
import t, { type Test } from 'tap'
import OpenAI, { toFile } from 'openai'
import { events, hang, json, resetBeforeAnswer, type Behaviour } from '../helpers/fake-upstream.js'
import { eventually, startGateway, type Gateway, type LogLine } from '../helpers/gateway.js'
import { sendRaw, type RawAnswer } from '../helpers/http-client.js'
import { makePng } from '../helpers/images.js'
import { buildMultipart } from '../helpers/multipart.js'
import { startRedis } from '../helpers/redis.js'
import { startRedisStack, startStack } from '../helpers/stack.js'

/*
 * Issue 4: a request with an Idempotency-Key runs once per key and caller; a repeat gets the
 * stored answer with `idempotent-replayed: true`, waits for a first that is still running (or gets
 * 409), and is refused when the first ran but its answer was not kept.
 */

/** A GPT-image-sized answer: 3 MB of base64, so that it is stored in several parts. */
const IMAGE_B64 = randomBytes(2_250_000).toString('base64')
const BIG_OK: Behaviour = json(200, { created: 1, data: [{ b64_json: IMAGE_B64 }], usage: { input_tokens: 10, output_tokens: 4160 } }, {
  'x-request-id': 'req_upstream_1',
  'openai-processing-ms': '1234'
})
const SMALL_OK: Behaviour = json(200, { created: 1, data: [{ b64_json: 'aGk=' }] })

interface Options {
  behaviour?: Behaviour
  idempotency?: Record<string, unknown>
}

function gatewayOptions(options: Options): { behaviour: Behaviour; gateway: { extra: Record<string, unknown> } } {
  return { behaviour: options.behaviour ?? BIG_OK, gateway: { extra: { idempotency: options.idempotency ?? {} } } }
}

function generate(gateway: Gateway, idempotencyKey: string | null, body: Record<string, unknown> = {}, key = gateway.key): Promise<RawAnswer> {
  return sendRaw(`${gateway.url}/v1/images/generations`, {
    headers: {
      'content-type': 'application/json',
      authorization: `Bearer ${key}`,
      ...(idempotencyKey === null ? {} : { 'idempotency-key': idempotencyKey })
    },
    body: [Buffer.from(JSON.stringify({ model: 'gpt-image-1', prompt: 'a lighthouse', ...body }))]
  })
}

function errorOf(answer: RawAnswer): { code: string; message: string; type: string; param: string | null } {
  return answer.json<{ error: { code: string; message: string; type: string; param: string | null } }>().error
}

function requestLines(gateway: Gateway): LogLine[] {
  return gateway.logs().filter((line) => line.msg === 'request')
}

async function expectReplay(t: Test, first: RawAnswer, repeat: RawAnswer): Promise<void> {
  t.equal(first.status, 200)
  t.equal(first.headers['idempotent-replayed'], undefined, 'the first answer is not a replay')
  t.equal(repeat.status, 200)
  t.equal(repeat.headers['idempotent-replayed'], 'true')
  t.ok(repeat.body.equals(first.body), 'byte-identical body')
  t.equal(repeat.headers['content-length'], String(first.body.length))
  for (const name of ['content-type', 'x-gateway-deployment', 'openai-processing-ms']) t.equal(repeat.headers[name], first.headers[name], name)
  t.not(repeat.headers['x-gateway-request-id'], first.headers['x-gateway-request-id'], 'the replay has its own request id')
  t.equal(repeat.headers['x-request-id'], repeat.headers['x-gateway-request-id'], "the upstream's id belongs to the first answer only")
}

t.test('a repeat gets the stored answer, byte for byte, and the upstream is called once', async (t) => {
  const { upstream, gateway } = await startStack(t, gatewayOptions({}))
  const first = await generate(gateway, 'order-1')
  t.equal(first.headers['x-request-id'], 'req_upstream_1')
  const repeat = await generate(gateway, 'order-1')
  await expectReplay(t, first, repeat)
  t.equal(upstream.received.length, 1)
  t.equal(upstream.received[0]?.headers['idempotency-key'], 'order-1', 'the key is still forwarded upstream')
  t.same(
    requestLines(gateway).map((line) => line.idempotent),
    ['stored', 'replayed']
  )
  t.notMatch(gateway.logText(), 'order-1', 'the key itself is never logged')
  const other = await generate(gateway, 'order-2')
  t.equal(other.headers['idempotent-replayed'], undefined, 'another key runs')
  t.equal(upstream.received.length, 2)
  await generate(gateway, null)
  await generate(gateway, null)
  t.equal(upstream.received.length, 4, 'requests without a key are never deduplicated')
})

t.test('with the SDK: a key sent as a header; the replay is an ordinary success', async (t) => {
  const { upstream, gateway } = await startStack(t, gatewayOptions({ behaviour: SMALL_OK }))
  const client = new OpenAI({ baseURL: gateway.baseURL, apiKey: gateway.key, maxRetries: 0 })
  // openai-node v6 sends no Idempotency-Key of its own (its `idempotencyKey` request option needs
  // an idempotency header the OpenAI client does not set): clients send the header themselves.
  const request = { model: 'gpt-image-1', prompt: 'a sea otter' }
  const options = { headers: { 'Idempotency-Key': 'sdk-1' } }
  const first = await client.images.generate(request, options).withResponse()
  const repeat = await client.images.generate(request, options).withResponse()
  t.same(repeat.data, first.data)
  t.equal(repeat.response.headers.get('idempotent-replayed'), 'true')
  t.equal(upstream.received.length, 1)
})

t.test('a multipart edit: the repeat, with a new boundary, gets the replay; another image with the key is refused', async (t) => {
  const { upstream, gateway } = await startStack(t, gatewayOptions({}))
  const client = new OpenAI({ baseURL: gateway.baseURL, apiKey: gateway.key, maxRetries: 0 })
  const square = makePng({ width: 64, height: 64, alpha: true, seed: 1 })
  const edit = async (png: Buffer, key: string) =>
    client.images
      .edit({ model: 'gpt-image-1', image: await toFile(png, 'otter.png', { type: 'image/png' }), prompt: 'add a hat' }, { headers: { 'Idempotency-Key': key } })
      .withResponse()
  const first = await edit(square, 'edit-1')
  const repeat = await edit(square, 'edit-1')
  t.equal(repeat.response.headers.get('idempotent-replayed'), 'true')
  t.equal(repeat.data.data?.[0]?.b64_json, IMAGE_B64)
  t.same(repeat.data, first.data)
  t.equal(upstream.received.length, 1)

  const other = makePng({ width: 64, height: 64, alpha: true, seed: 2 })
  const refused = await edit(other, 'edit-1').catch((err: unknown) => err)
  t.ok(refused instanceof OpenAI.APIError)
  if (refused instanceof OpenAI.APIError) {
    t.equal(refused.status, 422)
    t.equal(refused.code, 'idempotency_key_reused')
  }
  t.equal(upstream.received.length, 1, 'the other image never went upstream')
})

t.test('a multipart repeat of the same form with the same bytes, sent raw, is replayed', async (t) => {
  const { upstream, gateway } = await startStack(t, gatewayOptions({ behaviour: SMALL_OK }))
  const image = makePng({ width: 64, height: 64, alpha: true, seed: 3, padToBytes: 2 * 1024 * 1024 })
  const send = (boundary: string) => {
    const form = buildMultipart(
      [
        { name: 'model', value: 'gpt-image-1' },
        { name: 'prompt', value: 'add a boat' },
        { name: 'image', filename: 'sea.png', data: image }
      ],
      boundary
    )
    return sendRaw(`${gateway.url}/v1/images/edits`, {
      headers: { 'content-type': form.contentType, authorization: `Bearer ${gateway.key}`, 'idempotency-key': 'form-1' },
      body: [form.body]
    })
  }
  const first = await send('boundary-one')
  const repeat = await send('another-boundary-two')
  await expectReplay(t, first, repeat)
  t.equal(upstream.received.length, 1)
})

t.test('two at once: the second waits for the first and gets its answer', async (t) => {
  const slow: Behaviour = async (request, response, received) => {
    await new Promise((resolve) => setTimeout(resolve, 300))
    await BIG_OK(request, response, received)
  }
  const { upstream, gateway } = await startStack(t, gatewayOptions({ behaviour: slow }))
  const first = generate(gateway, 'twice')
  await upstream.nthRequest(1)
  const second = await generate(gateway, 'twice')
  await expectReplay(t, await first, second)
  t.equal(upstream.received.length, 1)
})

t.test('two uploads at once: the second waits, then is read to its end and gets the replay', async (t) => {
  const slow: Behaviour = async (request, response, received) => {
    await new Promise((resolve) => setTimeout(resolve, 300))
    await BIG_OK(request, response, received)
  }
  const { upstream, gateway } = await startStack(t, gatewayOptions({ behaviour: slow }))
  const form = buildMultipart([
    { name: 'model', value: 'gpt-image-1' },
    { name: 'prompt', value: 'add a boat' },
    { name: 'image', filename: 'sea.png', data: makePng({ width: 64, height: 64, seed: 5, padToBytes: 3 * 1024 * 1024 }) }
  ])
  const send = () =>
    sendRaw(`${gateway.url}/v1/images/edits`, {
      headers: { 'content-type': form.contentType, authorization: `Bearer ${gateway.key}`, 'idempotency-key': 'upload-twice' },
      body: [form.body]
    })
  const first = send()
  await upstream.nthRequest(1)
  const second = await send()
  await expectReplay(t, await first, second)
  t.equal(upstream.received.length, 1)
})

t.test('two at once with a short idempotency.waitMs: the second gets 409 in progress, retry-after 1', async (t) => {
  const slow: Behaviour = async (request, response, received) => {
    await new Promise((resolve) => setTimeout(resolve, 500))
    await SMALL_OK(request, response, received)
  }
  const { upstream, gateway } = await startStack(t, gatewayOptions({ behaviour: slow, idempotency: { waitMs: 50 } }))
  const first = generate(gateway, 'busy')
  await upstream.nthRequest(1)
  const second = await generate(gateway, 'busy')
  t.equal(second.status, 409)
  t.equal(errorOf(second).code, 'idempotency_in_progress')
  t.equal(second.headers['retry-after'], '1')
  t.equal(second.headers['x-should-retry'], undefined, 'the SDKs retry it')
  t.equal((await first).status, 200)
  // The SDK's own retry of the 409 then gets the replay.
  const client = new OpenAI({ baseURL: gateway.baseURL, apiKey: gateway.key, maxRetries: 0 })
  const retried = await client.images.generate({ model: 'gpt-image-1', prompt: 'a lighthouse' }, { headers: { 'Idempotency-Key': 'busy' } }).withResponse()
  t.equal(retried.response.headers.get('idempotent-replayed'), 'true')
  t.equal(upstream.received.length, 1)
})

t.test('the same key with a different body: 422 idempotency_key_reused', async (t) => {
  const { upstream, gateway } = await startStack(t, gatewayOptions({ behaviour: SMALL_OK }))
  t.equal((await generate(gateway, 'k')).status, 200)
  const refused = await generate(gateway, 'k', { prompt: 'a different lighthouse' })
  t.equal(refused.status, 422)
  t.same(errorOf(refused), {
    message: 'This Idempotency-Key was already used for a different request to this endpoint. Use a new key for a new request.',
    type: 'invalid_request_error',
    param: null,
    code: 'idempotency_key_reused'
  })
  t.equal(upstream.received.length, 1)
})

t.test('keys are per caller and per endpoint', async (t) => {
  const { upstream, gateway } = await startStack(t, gatewayOptions({ behaviour: SMALL_OK }))
  const { key: other } = await gateway.store.create({ name: 'other caller' })
  t.equal((await generate(gateway, 'shared')).status, 200)
  const theirs = await generate(gateway, 'shared', {}, other)
  t.equal(theirs.status, 200)
  t.equal(theirs.headers['idempotent-replayed'], undefined)
  t.equal(upstream.received.length, 2, "another caller's request with the same key runs")
  const form = buildMultipart([
    { name: 'model', value: 'gpt-image-1' },
    { name: 'prompt', value: 'add a boat' },
    { name: 'image', filename: 'sea.png', data: makePng({ width: 64, height: 64, seed: 4 }) }
  ])
  const edit = await sendRaw(`${gateway.url}/v1/images/edits`, {
    headers: { 'content-type': form.contentType, authorization: `Bearer ${gateway.key}`, 'idempotency-key': 'shared' },
    body: [form.body]
  })
  t.equal(edit.status, 200)
  t.equal(upstream.received.length, 3, 'and so does the same key on another endpoint')
})

t.test('a first attempt that failed (500, 400) leaves nothing: the retry runs', async (t) => {
  for (const status of [500, 400]) {
    const { upstream, gateway } = await startStack(t, gatewayOptions({ behaviour: json(status, { error: { message: 'no', type: 'server_error', param: null, code: null } }) }))
    t.equal((await generate(gateway, 'retry-me')).status, status)
    upstream.behave(SMALL_OK)
    const retry = await generate(gateway, 'retry-me')
    t.equal(retry.status, 200, `after ${status}`)
    t.equal(retry.headers['idempotent-replayed'], undefined)
    t.equal(upstream.received.length, 2)
    t.equal(requestLines(gateway)[0]?.idempotent, 'released')
  }
})

t.test("a request the key's limits refused leaves nothing, and a replay takes none of the limits", async (t) => {
  const slowWhenAsked: Behaviour = async (request, response, received) => {
    await received.done
    if (received.body().includes('slow')) await new Promise((resolve) => setTimeout(resolve, 300))
    await SMALL_OK(request, response, received)
  }
  const { upstream, gateway } = await startStack(t, gatewayOptions({ behaviour: slowWhenAsked }))
  const { key } = await gateway.store.create({ name: 'one at a time', concurrency: 1 })
  t.equal((await generate(gateway, 'earlier', {}, key)).status, 200)
  const busy = generate(gateway, null, { prompt: 'slow' }, key)
  await upstream.nthRequest(2)
  const replay = await generate(gateway, 'earlier', {}, key)
  t.equal(replay.status, 200, 'the replay needs no concurrency slot')
  t.equal(replay.headers['idempotent-replayed'], 'true')
  const refused = await generate(gateway, 'later', {}, key)
  t.equal(refused.status, 429)
  t.equal((await busy).status, 200)
  const retried = await generate(gateway, 'later', {}, key)
  t.equal(retried.status, 200, 'the refusal released its key: the retry runs')
  t.equal(retried.headers['idempotent-replayed'], undefined)
  t.equal(upstream.received.length, 3)
})

t.test('an answer over idempotency.maxStoredBytes goes to the client whole, and a repeat gets 409 not stored', async (t) => {
  const { upstream, gateway } = await startStack(t, gatewayOptions({ idempotency: { maxStoredBytes: 1024 * 1024 } }))
  const first = await generate(gateway, 'huge')
  t.equal(first.status, 200)
  t.ok(first.body.length > 3_000_000, 'the client got all of it')
  const repeat = await generate(gateway, 'huge')
  t.equal(repeat.status, 409)
  t.equal(errorOf(repeat).code, 'idempotency_answer_not_stored')
  t.match(errorOf(repeat).message, /larger than the gateway keeps/)
  t.equal(repeat.headers['x-should-retry'], 'false', 'the SDKs do not retry it')
  t.equal(upstream.received.length, 1, 'never run twice')
  t.equal(requestLines(gateway)[0]?.idempotent, 'not_stored:too_large')
})

t.test('an event stream is not kept: a repeat gets 409 not stored', async (t) => {
  const stream = events([
    { event: 'image_generation.partial_image', data: { type: 'image_generation.partial_image', b64_json: 'aGk=', partial_image_index: 0 } },
    { event: 'image_generation.completed', data: { type: 'image_generation.completed', b64_json: 'aGk=' } }
  ])
  const { upstream, gateway } = await startStack(t, gatewayOptions({ behaviour: stream }))
  const first = await generate(gateway, 'stream', { stream: true, partial_images: 1 })
  t.match(first.body.toString(), /image_generation.completed/)
  const repeat = await generate(gateway, 'stream', { stream: true, partial_images: 1 })
  t.equal(repeat.status, 409)
  t.match(errorOf(repeat).message, /event stream/)
  t.equal(upstream.received.length, 1)
})

t.test('a 502 after the upstream had the request (it may have billed) is not run again either', async (t) => {
  const { upstream, gateway } = await startStack(t, gatewayOptions({ behaviour: resetBeforeAnswer }))
  const first = await generate(gateway, 'maybe')
  t.equal(first.status, 502)
  t.equal(first.headers['x-should-retry'], 'false')
  upstream.behave(SMALL_OK)
  const repeat = await generate(gateway, 'maybe')
  t.equal(repeat.status, 409)
  t.equal(errorOf(repeat).code, 'idempotency_answer_not_stored')
  t.match(errorOf(repeat).message, /upstream failed after it had the request/)
  t.equal(upstream.received.length, 1)
})

t.test('a client that left while the upstream worked: the repeat is refused, not billed twice', async (t) => {
  const { upstream, gateway } = await startStack(t, gatewayOptions({ behaviour: hang }))
  const controller = new AbortController()
  const first = fetch(`${gateway.url}/v1/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${gateway.key}`, 'idempotency-key': 'left' },
    body: JSON.stringify({ model: 'gpt-image-1', prompt: 'a lighthouse' }),
    signal: controller.signal
  }).catch(() => null)
  const seen = await upstream.nthRequest(1)
  controller.abort()
  await first
  t.ok(await eventually(() => seen.aborted), 'the upstream call was aborted')
  upstream.behave(SMALL_OK)
  const repeat = await generate(gateway, 'left')
  t.equal(repeat.status, 409)
  t.match(errorOf(repeat).message, /client disconnected/)
  t.equal(upstream.received.length, 1)
})

t.test('a malformed Idempotency-Key: 400 invalid_idempotency_key, nothing sent upstream', async (t) => {
  const { upstream, gateway } = await startStack(t, gatewayOptions({ behaviour: SMALL_OK }))
  for (const bad of ['k'.repeat(256), 'caf\u00e9']) {
    const answer = await generate(gateway, bad)
    t.equal(answer.status, 400)
    t.equal(errorOf(answer).code, 'invalid_idempotency_key')
  }
  t.equal((await generate(gateway, 'k'.repeat(255))).status, 200, '255 characters are fine')
  t.equal(upstream.received.length, 1)
})

t.test('idempotency.enabled false: the key is only forwarded', async (t) => {
  const { upstream, gateway } = await startStack(t, gatewayOptions({ behaviour: SMALL_OK, idempotency: { enabled: false } }))
  await generate(gateway, 'off')
  const second = await generate(gateway, 'off')
  t.equal(second.headers['idempotent-replayed'], undefined)
  t.equal(upstream.received.length, 2)
  t.equal(upstream.received[1]?.headers['idempotency-key'], 'off')
})

t.test('with Redis: the repeat on another instance gets the replay; entries expire after ttlMs', async (t) => {
  const { upstream, gateway, redis } = await startRedisStack(t, gatewayOptions({ idempotency: { ttlMs: 1500 } }))
  const other = await startGateway({
    providers: { up: upstream.baseUrl },
    redis: { url: redis.url, keyPrefix: redis.prefix },
    extra: { idempotency: { ttlMs: 1500 } }
  })
  t.teardown(() => other.close())
  // The same caller on both: a key made on one instance is in the shared store.
  const first = await generate(gateway, 'shared-redis')
  const repeat = await generate(other, 'shared-redis', {}, gateway.key)
  await expectReplay(t, first, repeat)
  t.equal(upstream.received.length, 1)
  await new Promise((resolve) => setTimeout(resolve, 1600))
  const late = await generate(other, 'shared-redis', {}, gateway.key)
  t.equal(late.status, 200)
  t.equal(late.headers['idempotent-replayed'], undefined, 'expired: it ran again')
  t.equal(upstream.received.length, 2)
})

t.test('with Redis: a repeat on another instance waits for the first', async (t) => {
  const slow: Behaviour = async (request, response, received) => {
    await new Promise((resolve) => setTimeout(resolve, 300))
    await SMALL_OK(request, response, received)
  }
  const { upstream, gateway, redis } = await startRedisStack(t, gatewayOptions({ behaviour: slow }))
  const other = await startGateway({ providers: { up: upstream.baseUrl }, redis: { url: redis.url, keyPrefix: redis.prefix } })
  t.teardown(() => other.close())
  const first = generate(gateway, 'concurrent-redis')
  await upstream.nthRequest(1)
  const repeat = await generate(other, 'concurrent-redis', {}, gateway.key)
  await expectReplay(t, await first, repeat)
  t.equal(upstream.received.length, 1)
})

t.test('with Redis down, a request with a key is refused (503), never run unchecked', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.close())
  if (redis.external) return
  const { upstream, gateway } = await startStack(t, {
    behaviour: SMALL_OK,
    gateway: { redis: { url: redis.url, keyPrefix: redis.prefix }, keys: { cacheTtlMs: 60_000 } }
  })
  t.equal((await generate(gateway, null)).status, 200, 'the key is now cached')
  await redis.kill()
  const refused = await generate(gateway, 'down')
  t.equal(refused.status, 503)
  t.equal(errorOf(refused).code, 'service_unavailable')
  t.equal((await generate(gateway, null)).status, 200, 'requests without a key still run')
  t.equal(upstream.received.length, 2)
  // Closing a gateway whose Redis is gone waits on its connections; a fresh one lets it close.
  await redis.restart()
})
