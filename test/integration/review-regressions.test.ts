/*
 * Regressions found by a review of the whole change (each test says what input broke what).
 */
import { request as httpRequest } from 'node:http'
import OpenAI from 'openai'
import t from 'tap'
import { ByteSpool } from '../../src/multipart/spool.js'
import { digestOf } from '../../src/keys/key-material.js'
import { hang, json } from '../helpers/fake-upstream.js'
import { eventually } from '../helpers/gateway.js'
import { sendRaw } from '../helpers/http-client.js'
import { makePng } from '../helpers/images.js'
import { buildMultipart } from '../helpers/multipart.js'
import { startRedisStack, startStack } from '../helpers/stack.js'

const OK = { created: 1, data: [{ b64_json: 'QUJD' }] }

t.test('a spool whose temp file cannot be opened fails its append, and disposing it does not reject', async (t) => {
  // Before: dispose() awaited the rejected open and threw an unhandled rejection (process exit).
  const spool = new ByteSpool(4, '/nonexistent-directory-for-image-gateway')
  spool.append(Buffer.from('abcd'))
  await t.rejects(spool.append(Buffer.from('efgh')) ?? Promise.resolve(), { code: 'ENOENT' })
  await t.resolves(spool.dispose())
})

t.test('a usage block with fractional tokens settles instead of wedging the settlement queue', async (t) => {
  // Before: 10.5 tokens reached the Redis store, which refused the count; the settlement was
  // re-queued forever and the concurrency slot stayed taken for the lease time.
  const { gateway } = await startRedisStack(t, { behaviour: 
    json(200, { ...OK, usage: { input_tokens: 10.5, output_tokens: 99.2, total_tokens: 109.7, input_tokens_details: { text_tokens: 10.5, image_tokens: 0 } } })
   })
  const { key, record } = await gateway.store.create({ name: 'odd usage', concurrency: 1 })
  const client = new OpenAI({ apiKey: key, baseURL: gateway.baseURL, maxRetries: 0 })
  await client.images.generate({ model: 'gpt-image-1', prompt: 'a' })
  t.ok(await eventually(() => gateway.app.keys.meter.pendingSettlements === 0), 'nothing left queued')
  await client.images.generate({ model: 'gpt-image-1', prompt: 'b' })
  const [today] = await gateway.store.usage(record.id, 1, Date.now())
  t.match(today, { requests: 2, inputTokens: 22, outputTokens: 198 }, 'rounded, and the slot was free for the second')
})

t.test('a client that leaves while its key is checked: no upstream call, and its slot is freed', async (t) => {
  // Before: the client lifetime was created after admission, so a 'close' during auth or
  // admission was missed; the upstream was called for nobody and the charge never settled.
  const { upstream, gateway } = await startRedisStack(t, { behaviour: json(200, OK) })
  const { key, record } = await gateway.store.create({ name: 'leaver', concurrency: 1, budgetMicroUsd: 10_000_000 })
  const client = new OpenAI({ apiKey: key, baseURL: gateway.baseURL, maxRetries: 0 })
  // One request first, so the key is in the auth cache: the pause below lands in admission.
  await client.images.generate({ model: 'gpt-image-1', prompt: 'warm' })
  const spentBefore = await gateway.store.spentMicroUsd(record.id)
  // Redis holds every command for 200 ms (under the gateway's 300 ms command timeout).
  await gateway.app.keys.backend.shared?.redis.call('CLIENT', 'PAUSE', '200', 'ALL')
  const req = httpRequest(`${gateway.url}/v1/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` }
  })
  req.on('error', () => undefined)
  req.end(JSON.stringify({ model: 'gpt-image-1', prompt: 'x' }))
  await new Promise((r) => setTimeout(r, 60))
  req.destroy()
  await new Promise((r) => setTimeout(r, 500))
  t.equal(upstream.received.length, 1, 'the upstream was not called for the client that left')
  t.equal(await gateway.store.spentMicroUsd(record.id), spentBefore, 'nothing charged: the upstream never had the request')
  t.strictSame((await client.images.generate({ model: 'gpt-image-1', prompt: 'y' })).data, OK.data, 'the slot is free')
})

t.test('an upload refused mid-way: the client reads the 400, not a reset', async (t) => {
  // Before: after 8 MiB of draining the socket was destroyed, and a 20 MB upload got EPIPE.
  const { gateway } = await startStack(t, { behaviour: json(200, OK) })
  const form = buildMultipart([
    { name: 'model', value: 'dall-e-2' },
    { name: 'prompt', value: 'p' },
    { name: 'image', filename: 'big.png', data: makePng({ width: 64, height: 64, padToBytes: 20 * 1024 * 1024 }) }
  ])
  const answer = await sendRaw(`${gateway.url}/v1/images/edits`, {
    headers: { 'content-type': form.contentType, authorization: `Bearer ${gateway.key}` },
    body: [form.body]
  })
  t.equal(answer.status, 400)
  t.match(answer.json(), { error: { code: 'image_too_large', param: 'image' } })
})

t.test('a stalled upload gets 408 and its upstream request is aborted', async (t) => {
  // Before: a client that stopped sending held its upstream request (and connection) forever.
  const { upstream, gateway } = await startStack(t, { behaviour: hang, gateway: { limits: { uploadIdleMs: 300 } } })
  const form = buildMultipart([
    { name: 'model', value: 'gpt-image-1' },
    { name: 'prompt', value: 'p' },
    { name: 'image', filename: 'a.png', data: makePng({ width: 8, height: 8, padToBytes: 200_000 }) }
  ])
  const status = await new Promise<number>((resolve, reject) => {
    const req = httpRequest(`${gateway.url}/v1/images/edits`, {
      method: 'POST',
      headers: { 'content-type': form.contentType, authorization: `Bearer ${gateway.key}` }
    }, (res) => {
      res.resume()
      resolve(res.statusCode ?? 0)
    })
    req.on('error', reject)
    req.write(form.body.subarray(0, 100_000))
    // ...and nothing more.
  })
  t.equal(status, 408)
  const seen = upstream.received[0]
  t.ok(seen, 'the upstream request had begun')
  await seen?.done
  t.notOk(seen?.complete)
  t.ok(await eventually(() => seen?.aborted === true), 'and it was aborted')
})

t.test('a Redis error on a key lookup puts no digest in the log', async (t) => {
  // Before: ioredis errors carry the command's arguments, which pino printed: the key's digest.
  const { redis, gateway } = await startRedisStack(t, { behaviour: json(200, OK) })
  const key = `igw_${'Q'.repeat(43)}`
  const digest = digestOf(key)
  // A digest index entry of the wrong type makes Redis answer WRONGTYPE to the lookup.
  const shared = gateway.app.keys.backend.shared
  await shared?.redis.hset(`${redis.prefix}digest:{${digest}}`, 'x', '1')
  await shared?.redis.hset(`${redis.prefix}digest:${digest}`, 'x', '1')
  const answer = await sendRaw(`${gateway.url}/v1/images/generations`, {
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: [Buffer.from('{"model":"gpt-image-1","prompt":"x"}')]
  })
  t.equal(answer.status, 503)
  t.notMatch(gateway.logText(), digest)
  t.notMatch(answer.body.toString(), digest)
})
