import t from 'tap'
import { json, type Behaviour } from '../helpers/fake-upstream.js'
import type { Gateway } from '../helpers/gateway.js'
import { sendRaw, type RawAnswer } from '../helpers/http-client.js'
import { makePng } from '../helpers/images.js'
import { buildMultipart } from '../helpers/multipart.js'
import { startRedisStack, startStack } from '../helpers/stack.js'

// Edge cases a review found: an answer stored before its form was read whole, and a run that
// outlasts the idempotency ttl.

const OK_BODY = Buffer.from(JSON.stringify({ created: 1, data: [{ b64_json: 'aGk=' }] }))

function generate(gateway: Gateway, idempotencyKey: string): Promise<RawAnswer> {
  return sendRaw(`${gateway.url}/v1/images/generations`, {
    headers: { 'content-type': 'application/json', authorization: `Bearer ${gateway.key}`, 'idempotency-key': idempotencyKey },
    body: [Buffer.from(JSON.stringify({ model: 'gpt-image-1', prompt: 'a lighthouse' }))]
  })
}

t.test('an answer stored before its form was read whole is not replayed to another form', async (t) => {
  // The upstream answers at once, before reading the 4 MB upload.
  const early: Behaviour = (_request, response) => {
    response.writeHead(200, { 'content-type': 'application/json', 'content-length': OK_BODY.length })
    response.end(OK_BODY)
  }
  const { gateway } = await startStack(t, { behaviour: early })
  const send = (seed: number): Promise<RawAnswer> => {
    const form = buildMultipart([
      { name: 'model', value: 'gpt-image-1' },
      { name: 'prompt', value: 'x' },
      { name: 'image', filename: 'a.png', data: makePng({ width: 64, height: 64, seed, padToBytes: 4 * 1024 * 1024 }) }
    ])
    return sendRaw(`${gateway.url}/v1/images/edits`, {
      headers: { 'content-type': form.contentType, authorization: `Bearer ${gateway.key}`, 'idempotency-key': 'early' },
      body: [form.body]
    })
  }
  t.equal((await send(1)).status, 200)
  const other = await send(2)
  t.not(other.headers['idempotent-replayed'], 'true', 'a different form does not get the first answer')
  t.equal(other.status, 422)
})

for (const withRedis of [false, true]) {
  t.test(`a run longer than idempotency.ttlMs keeps its entry (${withRedis ? 'Redis' : 'in-process'})`, async (t) => {
    const slow: Behaviour = async (request, response, received) => {
      await new Promise((resolve) => setTimeout(resolve, 1200))
      await json(200, { created: 1, data: [{ b64_json: 'aGk=' }] })(request, response, received)
    }
    const options = { behaviour: slow, gateway: { extra: { idempotency: { ttlMs: 500 } } } }
    const { upstream, gateway } = withRedis ? await startRedisStack(t, options) : await startStack(t, options)
    const first = generate(gateway, 'long')
    await upstream.nthRequest(1)
    await new Promise((resolve) => setTimeout(resolve, 700))
    const second = await generate(gateway, 'long')
    t.equal((await first).status, 200)
    t.equal(second.status, 200)
    t.equal(second.headers['idempotent-replayed'], 'true')
    t.equal(upstream.received.length, 1, 'run once')
  })
}
