import OpenAI from 'openai'
import t, { type Test } from 'tap'
import { digestOf } from '../../src/keys/key-material.js'
import { hang, json, type FakeUpstream } from '../helpers/fake-upstream.js'
import { type Gateway, type GatewayOptions } from '../helpers/gateway.js'
import { sendRaw } from '../helpers/http-client.js'
import { startStack } from '../helpers/stack.js'

const USAGE = {
  total_tokens: 1100,
  input_tokens: 100,
  output_tokens: 1000,
  input_tokens_details: { text_tokens: 100, image_tokens: 0 }
}
const OK = { created: 1, data: [{ b64_json: 'QUJD' }], usage: USAGE }

async function setup(t: Test, options: Partial<GatewayOptions> = {}): Promise<{ upstream: FakeUpstream; gateway: Gateway }> {
  const { upstream, gateway } = await startStack(t, { behaviour: json(200, OK), gateway: options })
  return { upstream, gateway }
}

function sdk(gateway: Gateway, key: string): OpenAI {
  return new OpenAI({ apiKey: key, baseURL: gateway.baseURL, maxRetries: 0 })
}

t.test('401 invalid_api_key for a missing, malformed, unknown, revoked, disabled or expired key', async (t) => {
  const { upstream, gateway } = await setup(t)
  const generate = (authorization?: string) =>
    sendRaw(`${gateway.url}/v1/images/generations`, {
      headers: { 'content-type': 'application/json', ...(authorization === undefined ? {} : { authorization }) },
      body: [Buffer.from('{"model":"gpt-image-1","prompt":"x"}')]
    })
  const unknown = `igw_${'A'.repeat(43)}`
  for (const authorization of [undefined, 'Bearer', 'Basic abc', `Bearer ${unknown}`, 'Bearer sk-proj-notours']) {
    const answer = await generate(authorization)
    t.equal(answer.status, 401, String(authorization))
    t.match(answer.json(), { error: { code: 'invalid_api_key', type: 'invalid_request_error', param: null } })
  }
  const store = gateway.store
  const revoked = await store.create({ name: 'revoked' })
  const disabled = await store.create({ name: 'disabled' })
  const expired = await store.create({ name: 'expired', expiresAt: new Date(Date.now() - 1000).toISOString() })
  for (const made of [revoked, disabled]) t.equal((await generate(`Bearer ${made.key}`)).status, 200, 'usable before')
  await store.revoke(revoked.record.id)
  await store.update(disabled.record.id, { disabled: true })
  t.match((await generate(`Bearer ${revoked.key}`)).json(), { error: { code: 'invalid_api_key', message: /revoked/ } })
  t.match((await generate(`Bearer ${disabled.key}`)).json(), { error: { code: 'invalid_api_key', message: /disabled/ } })
  t.match((await generate(`Bearer ${expired.key}`)).json(), { error: { code: 'invalid_api_key', message: /expired/ } })
  t.equal(upstream.received.length, 2, 'only the two usable requests reached the upstream')
})

t.test('an unauthenticated upload is refused before its body is read', async (t) => {
  const { upstream, gateway } = await setup(t)
  const answer = await sendRaw(`${gateway.url}/v1/images/edits`, {
    headers: { 'content-type': 'multipart/form-data; boundary=x' },
    body: [Buffer.alloc(2 * 1024 * 1024, 0x41)]
  })
  t.equal(answer.status, 401)
  t.equal(upstream.received.length, 0)
})

t.test('models: 403 for a model the key may not use, and /v1/models lists only its models', async (t) => {
  const { upstream, gateway } = await setup(t)
  const { key } = await gateway.store.create({ name: 'limited', models: ['gpt-image-*'] })
  const client = sdk(gateway, key)
  await client.images.generate({ model: 'gpt-image-1', prompt: 'x' })
  await t.rejects(client.images.generate({ model: 'dall-e-3', prompt: 'x' }), {
    status: 403,
    code: 'model_not_allowed',
    param: 'model'
  })
  const ids: string[] = []
  for await (const model of client.models.list()) ids.push(model.id)
  t.strictSame(ids.sort(), ['gpt-image-1', 'gpt-image-1-mini', 'gpt-image-1.5', 'gpt-image-2'])
  await t.rejects(client.models.retrieve('dall-e-2'), { status: 404, code: 'model_not_found' })
  t.equal(upstream.received.length, 1)
})

t.test('requests per minute: 429 with OpenAI\'s headers, and the upstream is not called', async (t) => {
  const { upstream, gateway } = await setup(t)
  const { key } = await gateway.store.create({ name: 'rpm', rpm: 2 })
  const client = sdk(gateway, key)
  await client.images.generate({ model: 'gpt-image-1', prompt: 'a' })
  await client.images.generate({ model: 'gpt-image-1', prompt: 'b' })
  const err = await client.images.generate({ model: 'gpt-image-1', prompt: 'c' }).catch((e: unknown) => e)
  t.type(err, OpenAI.RateLimitError)
  const limited = err as InstanceType<typeof OpenAI.RateLimitError>
  t.equal(limited.code, 'rate_limit_exceeded')
  t.equal(limited.type, 'requests')
  t.equal(limited.headers?.get('x-ratelimit-limit-requests'), '2')
  t.equal(limited.headers?.get('x-ratelimit-remaining-requests'), '0')
  t.match(limited.headers?.get('x-ratelimit-reset-requests'), /^\d+(ms|s|m\d+s)$/)
  const retryAfter = Number(limited.headers?.get('retry-after'))
  t.ok(retryAfter >= 1 && retryAfter <= 60, `retry-after ${retryAfter}`)
  t.equal(upstream.received.length, 2)
  // another key is not affected
  await sdk(gateway, gateway.key).images.generate({ model: 'gpt-image-1', prompt: 'd' })
})

t.test('images per minute are weighted by n', async (t) => {
  const { gateway } = await setup(t)
  const { key } = await gateway.store.create({ name: 'ipm', imagesPerMinute: 5 })
  const client = sdk(gateway, key)
  await client.images.generate({ model: 'gpt-image-1', prompt: 'a', n: 3 })
  await t.rejects(client.images.generate({ model: 'gpt-image-1', prompt: 'b', n: 3 }), {
    status: 429,
    code: 'rate_limit_exceeded'
  })
  await client.images.generate({ model: 'gpt-image-1', prompt: 'c', n: 2 })
})

t.test('concurrent requests: the slot is released when the answer ends or the client leaves', async (t) => {
  const { upstream, gateway } = await setup(t)
  const { key } = await gateway.store.create({ name: 'one at a time', concurrency: 1 })
  const client = sdk(gateway, key)
  upstream.behave(hang)
  const controller = new AbortController()
  const first = client.images.generate({ model: 'gpt-image-1', prompt: 'slow' }, { signal: controller.signal })
  await upstream.nthRequest(1)
  await t.rejects(client.images.generate({ model: 'gpt-image-1', prompt: 'second' }), { status: 429, code: 'rate_limit_exceeded' })
  controller.abort()
  await t.rejects(first)
  upstream.behave(json(200, OK))
  // The slot is freed when the gateway sees the client leave, which it learns asynchronously.
  let admitted = false
  for (let i = 0; i < 50 && !admitted; i++) {
    admitted = await client.images.generate({ model: 'gpt-image-1', prompt: 'third' }).then(
      () => true,
      () => false
    )
    if (!admitted) await new Promise((r) => setTimeout(r, 20))
  }
  t.ok(admitted, 'the slot came back after the client left')
  // One at a time, and each answer's end frees the slot for the next.
  for (const prompt of ['fourth', 'fifth']) {
    t.strictSame((await client.images.generate({ model: 'gpt-image-1', prompt })).data, OK.data, `${prompt}: admitted after the previous answer ended`)
  }
})

t.test('budgets: worst case reserved, real cost settled from usage, 429 insufficient_quota when it cannot cover', async (t) => {
  const { upstream, gateway } = await setup(t)
  const { key, record } = await gateway.store.create({ name: 'budget', budgetMicroUsd: 1_000_000 })
  const client = sdk(gateway, key)
  await client.images.generate({ model: 'gpt-image-1', prompt: 'cheap', size: '1024x1024', quality: 'low' })
  const spent = await gateway.store.spentMicroUsd(record.id)
  t.ok(spent > 0 && spent < 1_000_000, `settled to the usage's cost (${spent} µUSD), not the reservation`)
  const [today] = await gateway.store.usage(record.id, 1, Date.now())
  t.match(today, { requests: 1, images: 1, inputTokens: 100, outputTokens: 1000, costMicroUsd: spent })

  const { key: poorKey } = await gateway.store.create({ name: 'poor', budgetMicroUsd: 1_000 })
  const err = await sdk(gateway, poorKey)
    .images.generate({ model: 'gpt-image-1', prompt: 'x', quality: 'high', n: 4 })
    .catch((e: unknown) => e)
  t.type(err, OpenAI.RateLimitError)
  const quota = err as InstanceType<typeof OpenAI.RateLimitError>
  t.equal(quota.code, 'insufficient_quota')
  t.equal(quota.type, 'insufficient_quota')
  t.equal(quota.headers?.get('x-should-retry'), 'false')
  t.equal(upstream.received.length, 1)

  // A failed upstream call costs nothing.
  upstream.behave(json(500, { error: { message: 'boom', type: 'server_error', param: null, code: null } }))
  const before = await gateway.store.spentMicroUsd(record.id)
  t.match(await client.images.generate({ model: 'gpt-image-1', prompt: 'fails' }).catch((e: unknown) => e), { status: 500 })
  t.equal(await gateway.store.spentMicroUsd(record.id), before, 'nothing spent')
  upstream.behave(json(200, OK))
  await client.images.generate({ model: 'gpt-image-1', prompt: 'after', size: '1024x1024', quality: 'low' })
  t.ok((await gateway.store.spentMicroUsd(record.id)) > before, 'and its reservation no longer holds the budget')
})

t.test('concurrent requests cannot overspend a budget', async (t) => {
  const { upstream, gateway } = await setup(t)
  // Answers without usage settle at the reservation, so the budget fits a known number of them.
  upstream.behave(json(200, { created: 1, data: [{ b64_json: 'QUJD' }] }))
  const { key, record } = await gateway.store.create({ name: 'race', budgetMicroUsd: 400_000 })
  const client = sdk(gateway, key)
  const results = await Promise.allSettled(
    Array.from({ length: 20 }, () => client.images.generate({ model: 'dall-e-3', prompt: 'x', quality: 'hd', size: '1024x1024' }))
  )
  const ok = results.filter((r) => r.status === 'fulfilled').length
  const spent = await gateway.store.spentMicroUsd(record.id)
  // dall-e-3 hd 1024x1024 is $0.08: the budget fits exactly five.
  t.equal(ok, 5, `${ok} admitted`)
  t.equal(spent, 400_000, 'spent all of it and no more')
  t.equal(upstream.received.length, ok, 'refused requests never reached the upstream')
})

t.test('billing endpoints report the caller\'s own budget and usage', async (t) => {
  const { gateway } = await setup(t)
  const { key } = await gateway.store.create({ name: 'billing', budgetMicroUsd: 25_000_000 })
  await sdk(gateway, key).images.generate({ model: 'gpt-image-1', prompt: 'x' })
  const auth = { authorization: `Bearer ${key}` }
  const subscription = await sendRaw(`${gateway.url}/v1/dashboard/billing/subscription`, { method: 'GET', headers: auth })
  t.match(subscription.json(), { object: 'billing_subscription', hard_limit_usd: 25, soft_limit_usd: 25 })
  const usage = await sendRaw(`${gateway.url}/v1/dashboard/billing/usage`, { method: 'GET', headers: auth })
  const body = usage.json<{ object: string; total_usage: number }>()
  t.equal(body.object, 'list')
  t.ok(body.total_usage > 0, 'in cents')
})

t.test('no key appears in any log line or error body', async (t) => {
  const { gateway } = await setup(t)
  const { key } = await gateway.store.create({ name: 'leak check', models: ['dall-e-2'] })
  const bodies: string[] = []
  for (const authorization of [`Bearer ${key}`, `Bearer ${key}x`, `Bearer ${key.slice(0, -1)}`]) {
    const answer = await sendRaw(`${gateway.url}/v1/images/generations`, {
      headers: { 'content-type': 'application/json', authorization },
      body: [Buffer.from('{"model":"gpt-image-1","prompt":"x"}')]
    })
    bodies.push(answer.body.toString())
  }
  const text = `${bodies.join('\n')}\n${gateway.logText()}`
  t.notMatch(text, key.slice(4, 20), 'not even part of the key')
  t.notMatch(text, digestOf(key))
})

t.test('a multipart n sent after the model is counted before the form reaches the upstream whole', async (t) => {
  const { buildMultipart } = await import('../helpers/multipart.js')
  const { makePng } = await import('../helpers/images.js')
  const { upstream, gateway } = await setup(t)
  const image = makePng({ width: 32, height: 32, seed: 1, padToBytes: 256 * 1024 })
  const form = (n: string) =>
    buildMultipart([
      { name: 'model', value: 'gpt-image-1' },
      { name: 'prompt', value: 'p' },
      { name: 'image', filename: 'a.png', data: image },
      { name: 'n', value: n }
    ])
  const send = async (key: string, n: string) => {
    const { body, contentType } = form(n)
    // The model part alone first, so the request is routed (and admitted) before `n` is seen.
    const split = body.indexOf(Buffer.from('--test-boundary-7f3a9c'), 10) + 24
    const requests = upstream.received.length
    return sendRaw(`${gateway.url}/v1/images/edits`, {
      headers: { 'content-type': contentType, authorization: `Bearer ${key}` },
      body: [body.subarray(0, split), async () => void (await upstream.nthRequest(requests + 1)), body.subarray(split)],
      chunked: true
    })
  }
  const { key } = await gateway.store.create({ name: 'ipm', imagesPerMinute: 4 })
  t.equal((await send(key, '3')).status, 200, 'three images fit')
  const over = await send(key, '2')
  t.equal(over.status, 429, 'the late n=2 does not fit in the one image left')
  t.match(over.json(), { error: { code: 'rate_limit_exceeded' } })
  const cut = upstream.received.at(-1)
  await cut?.done
  t.notOk(cut?.complete, 'that upload was cut before the upstream had it all')
  t.notOk(cut?.body().includes(Buffer.from('test-boundary-7f3a9c--')))

  const { key: budgetKey, record } = await gateway.store.create({ name: 'budget', budgetMicroUsd: 400_000 })
  const poor = await send(budgetKey, '10')
  t.equal(poor.status, 429)
  t.match(poor.json(), { error: { code: 'insufficient_quota' } })
  t.equal(await gateway.store.spentMicroUsd(record.id), 0, 'nothing charged, every reservation released')
  t.equal((await send(budgetKey, '1')).status, 200, 'and the budget is whole again')
})
