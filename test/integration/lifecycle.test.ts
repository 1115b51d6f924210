import { request as httpRequest } from 'node:http'
import OpenAI from 'openai'
import t from 'tap'
import { shutdown } from '../../src/lifecycle.js'
import { hang, json, startFakeUpstream } from '../helpers/fake-upstream.js'
import { startGateway } from '../helpers/gateway.js'
import { sendRaw } from '../helpers/http-client.js'
import { makePng } from '../helpers/images.js'
import { buildMultipart } from '../helpers/multipart.js'
import { startRedisStack } from '../helpers/stack.js'

const OK = { created: 1, data: [{ b64_json: 'QUJD' }] }

t.test('/healthz and /readyz, no key needed; readiness follows Redis', async (t) => {
  const { redis, gateway } = await startRedisStack(t, { behaviour: json(200, OK) })
  t.match((await sendRaw(`${gateway.url}/healthz`, { method: 'GET' })).json(), { status: 'ok' })
  const ready = await sendRaw(`${gateway.url}/readyz`, { method: 'GET' })
  t.equal(ready.status, 200)
  if (redis.external) return
  await redis.freeze()
  const frozen = await sendRaw(`${gateway.url}/readyz`, { method: 'GET' })
  t.equal(frozen.status, 503)
  t.match(frozen.json(), { status: 'unavailable', reasons: ['redis unreachable'] })
  t.equal((await sendRaw(`${gateway.url}/healthz`, { method: 'GET' })).status, 200, 'still alive')
  await redis.thaw()
})

t.test('shutdown: a slow upload and a stream in flight both complete; new connections are refused', async (t) => {
  let releaseStream: () => void = () => undefined
  const streamReleased = new Promise<void>((resolve) => (releaseStream = resolve))
  const upstream = await startFakeUpstream(async (request, response, received) => {
    await received.done
    if (request.url?.endsWith('/edits')) {
      response.writeHead(200, { 'content-type': 'application/json' })
      response.end(JSON.stringify(OK))
      return
    }
    response.writeHead(200, { 'content-type': 'text/event-stream' })
    const event = (type: string) => `event: ${type}\ndata: ${JSON.stringify({ type, b64_json: 'AA==' })}\n\n`
    response.write(event('image_generation.partial_image'))
    await streamReleased
    response.end(event('image_generation.completed'))
  })
  const gateway = await startGateway({ providers: { up: upstream.baseUrl } })
  t.teardown(() => upstream.close())
  const client = new OpenAI({ apiKey: gateway.key, baseURL: gateway.baseURL, maxRetries: 0 })

  // The stream: one event has arrived when shutdown begins.
  const stream = await client.images.generate({ model: 'gpt-image-1', prompt: 'p', stream: true })
  const iterator = stream[Symbol.asyncIterator]()
  t.equal((await iterator.next()).value?.type, 'image_generation.partial_image')

  // The upload: half of it sent when shutdown begins.
  const form = buildMultipart([
    { name: 'model', value: 'gpt-image-1' },
    { name: 'prompt', value: 'p' },
    { name: 'image', filename: 'a.png', data: makePng({ width: 16, height: 16, padToBytes: 2 * 1024 * 1024 }) }
  ])
  let finishUpload: () => void = () => undefined
  const uploadResumed = new Promise<void>((resolve) => (finishUpload = resolve))
  const upload = sendRaw(`${gateway.url}/v1/images/edits`, {
    headers: { 'content-type': form.contentType, authorization: `Bearer ${gateway.key}` },
    body: [form.body.subarray(0, 1024 * 1024), () => uploadResumed, form.body.subarray(1024 * 1024)]
  })
  await upstream.nthRequest(2)

  const closing = shutdown(gateway.app, 10_000)
  t.equal(gateway.app.lifecycle.draining, true, 'readiness fails at once')
  const refused = await new Promise<string>((resolve) => {
    const req = httpRequest(`${gateway.url}/healthz`, { agent: false }, () => resolve('answered'))
    req.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'))
    req.end()
  })
  t.equal(refused, 'ECONNREFUSED', 'a new connection is refused')

  finishUpload()
  t.equal((await upload).status, 200, 'the upload completed')
  releaseStream()
  t.equal((await iterator.next()).value?.type, 'image_generation.completed', 'the stream completed')
  t.equal(await closing, 'drained')
})

t.test('shutdown: what is still running when the grace period ends is cut', async (t) => {
  const upstream = await startFakeUpstream(hang)
  const gateway = await startGateway({ providers: { up: upstream.baseUrl } })
  t.teardown(() => upstream.close())
  const client = new OpenAI({ apiKey: gateway.key, baseURL: gateway.baseURL, maxRetries: 0 })
  const pending = client.images.generate({ model: 'gpt-image-1', prompt: 'never answered' }).catch((err: unknown) => err)
  const seen = await upstream.nthRequest(1)
  t.equal(await shutdown(gateway.app, 300), 'forced')
  t.type(await pending, Error, 'the client saw its connection cut')
  await seen.done
  t.ok(await new Promise<boolean>((resolve) => setTimeout(() => resolve(seen.aborted), 200)), 'the upstream call was aborted too')
})
