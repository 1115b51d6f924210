import { randomBytes } from 'node:crypto'
import OpenAI, { toFile } from 'openai'
import t from 'tap'
import { digestOf } from '../../src/keys/key-material.js'
import type { Behaviour } from '../helpers/fake-upstream.js'
import { PROVIDER_KEY, eventually } from '../helpers/gateway.js'
import { sendRaw } from '../helpers/http-client.js'
import { makePng } from '../helpers/images.js'
import { buildMultipart } from '../helpers/multipart.js'
import { startStack } from '../helpers/stack.js'
import { assertNothingLeaked, portOf, secretsIn } from './harness/invariants.js'

/*
 * Reliability plan (research/reliability.md section 5), case 50: the leak scan. One gateway runs a
 * representative mix (successes in JSON and multipart through the OpenAI SDK, client errors,
 * upstream errors that echo the upstream's credentials, a client that leaves, a wrong key that
 * looks like a real one), and everything it produced is searched: every log line, every answer
 * (bodies and headers), and every request the upstream received.
 */

const ORG = 'org-LeakScanAccount7Q3'
const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47]).toString('latin1')
const PNG_BASE64 = 'iVBORw0KGgo'
const ANSWER_PNG = makePng({ width: 24, height: 24, seed: 50 })
const UPLOAD_PNG = makePng({ width: 32, height: 32, seed: 51 })

/** Prompts are tagged so the upstream knows what to do; each one must stay out of the logs. */
const PROMPTS = {
  json: 'leakscan prompt json: a lighthouse at dusk',
  multipart: 'leakscan prompt multipart: repaint the cat blue',
  invalid: 'leakscan prompt invalid size',
  badImage: 'leakscan prompt not an image',
  broken: 'leakscan prompt in broken JSON',
  echo400: 'leakscan prompt CASE-ECHO-400',
  echo500: 'leakscan prompt multipart CASE-ECHO-500',
  echo401: 'leakscan prompt CASE-ECHO-401',
  hang: 'leakscan prompt CASE-HANG',
  wrongKey: 'leakscan prompt with a wrong key'
}

/**
 * Answers by the tag in the request: an error that echoes the upstream key, the organisation and
 * the Authorization it received (as careless upstreams and relays do); never; or an image.
 */
const upstreamBehaviour: Behaviour = async (request, response, received) => {
  await received.done
  const text = received.body().toString('latin1')
  if (text.includes('CASE-HANG')) return
  const echo = /CASE-ECHO-(\d{3})/.exec(text)
  if (echo !== null) {
    const payload = JSON.stringify({
      error: {
        message: `Incorrect API key provided: ${PROVIDER_KEY}. Organization ${ORG}. We saw Authorization: ${String(request.headers.authorization)}`,
        type: 'invalid_request_error',
        param: null,
        code: 'invalid_api_key',
        organization: ORG,
        authorization: request.headers.authorization
      }
    })
    response.writeHead(Number(echo[1]), { 'content-type': 'application/json', 'openai-organization': ORG, 'x-request-id': 'req_upstream_echo' })
    response.end(payload)
    return
  }
  const payload = JSON.stringify({ created: 1, data: [{ b64_json: ANSWER_PNG.toString('base64') }], usage: { total_tokens: 20, input_tokens: 10, output_tokens: 10 } })
  response.writeHead(200, { 'content-type': 'application/json', 'openai-organization': ORG, 'content-length': Buffer.byteLength(payload) })
  response.end(payload)
}

/** Every way the SDK can show an error, flattened to text. */
function errorText(err: unknown): string {
  if (!(err instanceof OpenAI.APIError)) return String(err)
  const headers = err.headers === undefined ? '' : JSON.stringify([...err.headers.entries()])
  return [err.message, JSON.stringify(err.error), headers].join('\n')
}

t.test('#50 leak scan: keys only as ids, the upstream key only upstream, no image bytes and no field values in the logs', async (t) => {
  const { upstream, gateway } = await startStack(t, {
    behaviour: upstreamBehaviour,
    gateway: { providerExtra: { organization: ORG }, limits: { uploadIdleMs: 2000 } }
  })
  const second = await gateway.store.create({ name: 'second tenant', models: ['gpt-image-1'] })
  const firstRecord = (await gateway.store.list()).find((r) => r.name === 'test')
  const clientKeys = [gateway.key, second.key]
  const answers: string[] = []
  const keep = (text: string): void => {
    answers.push(text)
  }
  const sdk = (key: string): OpenAI => new OpenAI({ apiKey: key, baseURL: gateway.baseURL, maxRetries: 0 })
  const client = sdk(gateway.key)

  // Successes: JSON generation and a multipart edit, through the SDK.
  const generated = await client.images.generate({ model: 'gpt-image-1', prompt: PROMPTS.json })
  keep(JSON.stringify(generated))
  const edited = await sdk(second.key).images.edit({
    model: 'gpt-image-1',
    prompt: PROMPTS.multipart,
    image: await toFile(UPLOAD_PNG, 'cat.png', { type: 'image/png' })
  })
  keep(JSON.stringify(edited))
  t.equal(generated.data?.[0]?.b64_json, ANSWER_PNG.toString('base64'), 'the JSON success came through')
  t.equal(edited.data?.[0]?.b64_json, ANSWER_PNG.toString('base64'), 'the multipart success came through')

  // Client errors, refused before the upstream.
  keep(errorText(await client.images.generate({ model: 'gpt-image-1', prompt: PROMPTS.invalid, size: '7x7' as '1024x1024' }).catch((e: unknown) => e)))
  const notImage = buildMultipart([
    { name: 'model', value: 'gpt-image-1' },
    { name: 'prompt', value: PROMPTS.badImage },
    { name: 'image', filename: 'a.png', data: Buffer.from('plain text pretending to be a PNG file') }
  ])
  const badImage = await sendRaw(`${gateway.url}/v1/images/edits`, {
    headers: { 'content-type': notImage.contentType, authorization: `Bearer ${gateway.key}` },
    body: [notImage.body]
  })
  keep(JSON.stringify(badImage.headers) + badImage.body.toString('latin1'))
  t.equal(badImage.status, 400, 'not an image: 400')
  const broken = await sendRaw(`${gateway.url}/v1/images/generations`, {
    headers: { 'content-type': 'application/json', authorization: `Bearer ${gateway.key}` },
    body: [Buffer.from(`{"model":"gpt-image-1","prompt":"${PROMPTS.broken}`)]
  })
  keep(JSON.stringify(broken.headers) + broken.body.toString('latin1'))
  t.equal(broken.status, 400, 'broken JSON: 400')

  // Upstream errors that echo the upstream key, the organisation and the Authorization received.
  const echo400 = await client.images.generate({ model: 'gpt-image-1', prompt: PROMPTS.echo400 }).catch((e: unknown) => e)
  t.match(echo400, { status: 400, message: /Incorrect API key provided: \*\*\*\. Organization \*\*\*\. We saw Authorization: Bearer \*\*\*/ }, 'an upstream 400 is passed on, its credentials blanked out')
  keep(errorText(echo400))
  const echo500 = await sdk(second.key)
    .images.edit({ model: 'gpt-image-1', prompt: PROMPTS.echo500, image: await toFile(UPLOAD_PNG, 'cat.png', { type: 'image/png' }) })
    .catch((e: unknown) => e)
  t.match(echo500, { status: 500 }, 'an upstream 500 is passed on')
  keep(errorText(echo500))

  // A client that leaves while the upstream works.
  const controller = new AbortController()
  const calls = upstream.received.length
  const abandoned = client.images.generate({ model: 'gpt-image-1', prompt: PROMPTS.hang }, { signal: controller.signal }).catch((e: unknown) => e)
  await upstream.nthRequest(calls + 1)
  controller.abort()
  t.type(await abandoned, OpenAI.APIUserAbortError)
  t.ok(await eventually(() => gateway.logs().some((l) => l.msg === 'request' && l.status === 499)), 'logged as 499')

  // A wrong key that looks like a real one.
  const wrongKey = `${gateway.key.slice(0, -6)}${randomBytes(6).toString('base64url').slice(0, 6)}`
  const refused = await sdk(wrongKey).images.generate({ model: 'gpt-image-1', prompt: PROMPTS.wrongKey }).catch((e: unknown) => e)
  t.match(refused, { status: 401, code: 'invalid_api_key' })
  keep(errorText(refused))

  // Last, as an upstream 401 takes the deployment out: it concerns the gateway's key, not the client's.
  const echo401 = await client.images.generate({ model: 'gpt-image-1', prompt: PROMPTS.echo401 }).catch((e: unknown) => e)
  t.match(echo401, { status: 502, code: 'upstream_credentials_rejected' }, 'an upstream 401 becomes a 502')
  keep(errorText(echo401))

  await eventually(() => gateway.logs().filter((l) => l.msg === 'request').length >= 10)
  const logs = gateway.logText()
  const requestLines = gateway.logs().filter((l) => l.msg === 'request')
  t.equal(requestLines.length, 10, 'one log line per request')
  const upstreamRecords = upstream.received.map((r) => ({ headers: JSON.stringify(r.headers), body: r.body().toString('latin1') }))
  const upstreamBodies = upstreamRecords.map((r) => r.body).join('\n')
  const upstreamHeaders = upstreamRecords.map((r) => r.headers).join('\n')
  const everything = [logs, ...answers, upstreamBodies, upstreamHeaders].join('\n')

  // Client keys: only as key ids (and display prefixes) in the logs; nowhere in full, no digest.
  const allKeys = [...clientKeys, wrongKey]
  t.same(secretsIn(everything, allKeys), [], 'no client key anywhere: logs, answers, upstream requests')
  t.same(secretsIn(logs, allKeys.map(digestOf)), [], 'no key digest in the logs')
  // Nor any part of a key past its 12-character display prefix.
  const fragments = allKeys.flatMap((key) => Array.from({ length: key.length - 12 - 8 + 1 }, (_, i) => key.slice(12 + i, 12 + i + 8)))
  t.same(secretsIn(logs, fragments), [], 'no 8 characters of any key past its display prefix in the logs')
  const keyIds = new Set(requestLines.map((l) => l.keyId))
  t.ok(keyIds.has(firstRecord?.id) && keyIds.has(second.record.id), 'the logs name the keys by id')
  t.ok(requestLines.some((l) => l.status === 401 && l.keyId === null), 'the wrong key is logged with no key id')

  // The upstream key: in the Authorization the upstream received, and nowhere else.
  t.equal(upstream.received.length, 6, 'six requests reached the upstream')
  t.ok(upstream.received.every((r) => r.headers.authorization === `Bearer ${PROVIDER_KEY}`), 'each carried the upstream key')
  t.same(secretsIn([logs, ...answers, upstreamBodies].join('\n'), [PROVIDER_KEY, ORG]), [], 'the upstream key and organisation in no log, answer or upstream body')
  t.notMatch(logs, /bearer\s/i, 'no Authorization value in the logs')
  t.ok(upstream.received.every((r) => r.headers['openai-organization'] === ORG), 'the organisation went upstream, as configured')
  t.ok(upstream.received.every((r) => !JSON.stringify(r.headers).includes('igw_')), 'no client key header upstream')

  // No image bytes and no field values in the logs (each control shows the thing was there to leak).
  t.ok(upstreamBodies.includes(PNG_MAGIC) && answers.some((a) => a.includes(PNG_BASE64)), 'control: PNG bytes went up and base64 PNGs came back')
  t.notOk(logs.includes(PNG_MAGIC), 'no PNG bytes in the logs')
  t.notOk(logs.includes(PNG_BASE64), 'no base64 PNG in the logs')
  t.notOk(logs.includes(ANSWER_PNG.toString('base64').slice(40, 80)), 'no part of the answer image in the logs')
  const prompts = Object.values(PROMPTS)
  t.ok(upstreamBodies.includes(PROMPTS.multipart) && upstreamBodies.includes(PROMPTS.json), 'control: the prompts went upstream')
  t.same(secretsIn(logs, prompts), [], 'no prompt in the logs')
  t.same(secretsIn(logs, ['cat.png', 'plain text pretending']), [], 'no file name or file content in the logs')
  for (const line of gateway.logs()) {
    const fields = Object.keys(line)
    if (fields.some((f) => f === 'req' || f === 'res' || f === 'headers' || f === 'body')) t.fail(`a log line with ${fields.join(', ')}`)
  }

  await assertNothingLeaked(t, {
    gateway,
    ports: [portOf(gateway.url), portOf(upstream.url)],
    received: upstream.received,
    secrets: [...allKeys, PROVIDER_KEY, ORG, ...prompts],
    bodies: answers
  })
})
