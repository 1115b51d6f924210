import { createHash } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { gzipSync } from 'node:zlib'
import t, { type Test } from 'tap'
import { MAX_JSON_DEPTH } from '../../src/routes/images.js'
import { json, type FakeUpstream } from '../helpers/fake-upstream.js'
import { PROVIDER_KEY, eventually, type Gateway, type GatewayOptions } from '../helpers/gateway.js'
import { sendRaw, type RawAnswer } from '../helpers/http-client.js'
import { makePng } from '../helpers/images.js'
import { buildMultipart, type Part } from '../helpers/multipart.js'
import { startStack } from '../helpers/stack.js'
import { chunked, formOf, rawPost, reaches } from './harness/b2-abuse.js'
import { startRawListener } from './harness/faults.js'
import { assertError, assertNothingLeaked, portOf, rssAfterGcMb, spoolFiles } from './harness/invariants.js'
import { rawExchange, type RawExchange } from './harness/raw-socket.js'

/*
 * Reliability plan (research/reliability.md section 5), cases 13-17: request abuse. Prototype names
 * as fields, too many images, compressed uploads, oversized or deep JSON, a client steering the
 * upstream or making the gateway fetch a URL, and header injection. Each case asserts its outcome
 * and then the after-case invariants: every upstream request ended, no slot or reservation held,
 * no CLOSE_WAIT, no spool file, no secret in a log line or an answer, errors in OpenAI's envelope.
 *
 * The image routes do not use @fastify/multipart (docs/relay.md: the relay's own scanner), so the
 * plan's FST_* codes map to docs/errors.md: FST_FILES_LIMIT is too_many_images (400, as OpenAI
 * answers), FST_PROTO_VIOLATION has no counterpart (field names are kept in a Map and JSON keys
 * read with Object.hasOwn: a prototype name is plain data), FST_ERR_CTP_BODY_TOO_LARGE is
 * request_too_large (413).
 */

const OK = { created: 1, data: [{ b64_json: 'QUJD' }] }
const png = makePng({ width: 8, height: 8, seed: 3 })

interface Stack {
  upstream: FakeUpstream
  gateway: Gateway
  auth: string
  /** Spool files open when the case began. */
  spools: number
}

async function setup(t: Test, options: Partial<GatewayOptions> = {}): Promise<Stack> {
  const spools = spoolFiles()
  const { upstream, gateway } = await startStack(t, { behaviour: json(200, OK), gateway: options })
  return { upstream, gateway, auth: `Bearer ${gateway.key}`, spools }
}

function postJson(stack: Stack, path: string, body: string | Buffer, headers: Record<string, string> = {}): Promise<RawAnswer> {
  return sendRaw(`${stack.gateway.url}/v1/images/${path}`, {
    headers: { 'content-type': 'application/json', authorization: stack.auth, ...headers },
    body: [typeof body === 'string' ? Buffer.from(body) : body]
  })
}

function postForm(stack: Stack, path: string, form: { body: Buffer; contentType: string }, headers: Record<string, string> = {}): Promise<RawAnswer> {
  return sendRaw(`${stack.gateway.url}/v1/images/${path}`, {
    headers: { 'content-type': form.contentType, authorization: stack.auth, ...headers },
    body: [form.body]
  })
}

/** Resolves when the upstream has seen its n-th request, or after 5 s (the assertions that follow then fail). */
const upstreamLive = (stack: Stack, n: number) => (): Promise<void> =>
  Promise.race([stack.upstream.nthRequest(n).then(() => undefined), sleep(5000)])

const text = (answer: RawAnswer | RawExchange): string => ('text' in answer ? answer.text : answer.body.toString('utf8'))
const asError = (answer: RawAnswer): { status: number; body: string } => ({ status: answer.status, body: answer.body.toString('utf8') })

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex')
}

async function nothingLeaked(t: Test, stack: Stack, bodies: string[], secrets: string[] = []): Promise<void> {
  await assertNothingLeaked(t, {
    gateway: stack.gateway,
    ports: [portOf(stack.gateway.url), portOf(stack.upstream.url)],
    received: stack.upstream.received,
    secrets: [stack.gateway.key, PROVIDER_KEY, ...secrets],
    bodies,
    spoolBaseline: stack.spools
  })
}

const PROTOTYPE_NAMES = ['__proto__', 'constructor', 'prototype', 'hasOwnProperty', 'toString', 'valueOf', '__defineGetter__']

function prototypeIntact(t: Test): void {
  const probe = {} as Record<string, unknown>
  t.equal(probe.polluted, undefined, 'Object.prototype has no `polluted`')
  t.notOk(Object.hasOwn(Object.prototype, 'polluted'), 'nothing was defined on Object.prototype')
  t.equal(typeof Object.prototype.hasOwnProperty, 'function', 'hasOwnProperty intact')
  t.equal(Object.prototype.toString.call([]), '[object Array]', 'toString intact')
}

t.test('#13 __proto__, constructor and other prototype names as form fields, JSON keys and model names: plain data, no pollution, never a 500', async (t) => {
  const stack = await setup(t)
  const bodies: string[] = []

  // Multipart: prototype names as text fields, qs-style nested names, and a file part. The model
  // comes first and is the upstream's own name, so the relay must pass the client's bytes unchanged.
  const form = buildMultipart([
    { name: 'model', value: 'gpt-image-1' },
    ...PROTOTYPE_NAMES.map((name) => ({ name, value: `${name}-value` })),
    { name: '__proto__[polluted]', value: 'yes' },
    { name: 'constructor[prototype][polluted]', value: 'yes' },
    { name: 'prompt', value: 'a lighthouse' },
    { name: 'image', filename: 'a.png', data: png },
    { name: '__proto__', filename: '__proto__.png', data: png }
  ])
  const multipart = await postForm(stack, 'edits', form)
  bodies.push(text(multipart))
  t.equal(multipart.status, 200, 'multipart with prototype names: relayed')
  const relayed = stack.upstream.received[0]
  if (relayed === undefined) throw new Error('the upstream got no request')
  await relayed.done
  t.equal(relayed.sha256(), sha256(form.body), 'the upstream got the client\'s bytes unchanged')
  const seen = await formOf(relayed)
  t.same(
    seen.fields.map(([name]) => name).filter((name) => name.includes('proto') || PROTOTYPE_NAMES.includes(name)),
    [...PROTOTYPE_NAMES, '__proto__[polluted]', 'constructor[prototype][polluted]'],
    'every prototype-named field reached the upstream as a field'
  )
  t.same(seen.files.map((f) => f.name), ['image', '__proto__'], 'and the file parts too')

  // JSON with the model named: the client's bytes go upstream as sent, own `__proto__` key and all.
  const named = '{"__proto__":{"model":"dall-e-3","n":100,"polluted":1},"constructor":{"prototype":{"polluted":1}},"model":"gpt-image-1","prompt":"p"}'
  const namedAnswer = await postJson(stack, 'generations', named)
  bodies.push(text(namedAnswer))
  t.equal(namedAnswer.status, 200, 'JSON with a __proto__ key: relayed (n=100 under it was not read as n)')
  t.equal(stack.upstream.received[1]?.body().toString(), named, 'relayed byte for byte')

  // JSON with no model: the body is re-serialised with the default model; `__proto__` stays an own
  // key (not the prototype), so neither its `model` nor its `n` is read.
  const unnamed = '{"__proto__":{"model":"dall-e-3","n":100,"polluted":1},"prompt":"p"}'
  const unnamedAnswer = await postJson(stack, 'generations', unnamed)
  bodies.push(text(unnamedAnswer))
  t.equal(unnamedAnswer.status, 200, 'JSON with a __proto__ key and no model: relayed')
  const reserialised = JSON.parse(stack.upstream.received[2]?.body().toString() ?? '{}') as Record<string, unknown>
  t.equal(reserialised.model, 'dall-e-2', "the default model, not the one under __proto__")
  t.ok(Object.hasOwn(reserialised, '__proto__'), '__proto__ went upstream as an own key')
  t.notOk(Object.hasOwn(reserialised, 'n'), 'no n was made up')

  // Prototype names as the model: not configured, so 404, whichever form of body.
  for (const name of PROTOTYPE_NAMES) {
    const viaJson = await postJson(stack, 'generations', JSON.stringify({ model: name, prompt: 'p' }))
    bodies.push(text(viaJson))
    assertError(t, asError(viaJson), 404, 'model_not_found')
    const viaForm = await postForm(stack, 'edits', buildMultipart([{ name: 'model', value: name }, { name: 'prompt', value: 'p' }, { name: 'image', filename: 'a.png', data: png }]))
    bodies.push(text(viaForm))
    assertError(t, asError(viaForm), 404, 'model_not_found')
  }
  t.equal(stack.upstream.received.length, 3, 'no prototype-named model reached the upstream')
  prototypeIntact(t)
  await nothingLeaked(t, stack, bodies)
})

t.test('#13 17 image parts where gpt-image-1 takes 16: 400 too_many_images, the live upstream request is aborted before the closing boundary; 16 go through', async (t) => {
  const stack = await setup(t)
  const boundary = 'b2-boundary-17'
  const images = (count: number): Part[] => Array.from({ length: count }, (_, i) => ({ name: 'image[]', filename: `${i}.png`, data: png }))
  const head: Part[] = [{ name: 'model', value: 'gpt-image-1' }, { name: 'prompt', value: 'p' }]

  // The model first, then a pause until the upstream request is live, then the 17 images.
  const over = buildMultipart([...head, ...images(17)], boundary)
  const split = over.body.indexOf(`--${boundary}\r\nContent-Disposition: form-data; name="image[]"`)
  const answer = await sendRaw(`${stack.gateway.url}/v1/images/edits`, {
    headers: { 'content-type': over.contentType, authorization: stack.auth },
    body: [over.body.subarray(0, split), upstreamLive(stack, 1), over.body.subarray(split)]
  })
  assertError(t, asError(answer), 400, 'too_many_images')
  t.equal((answer.json() as { error: { param: string } }).error.param, 'image')
  const cut = stack.upstream.received[0]
  if (cut === undefined) throw new Error('the upstream request never started')
  await cut.done
  t.notOk(cut.complete, 'the upstream never got a complete form')
  t.ok(cut.aborted, 'the upstream request was aborted')
  t.notOk(cut.body().includes(`--${boundary}--`), 'the closing boundary never reached the upstream')

  // Control: 16 images, the same way.
  const most = buildMultipart([...head, ...images(16)], boundary)
  const ok = await sendRaw(`${stack.gateway.url}/v1/images/edits`, {
    headers: { 'content-type': most.contentType, authorization: stack.auth },
    body: [most.body.subarray(0, split), upstreamLive(stack, 2), most.body.subarray(split)]
  })
  t.equal(ok.status, 200, '16 images: relayed')
  const whole = stack.upstream.received[1]
  if (whole === undefined) throw new Error('no second upstream request')
  await whole.done
  t.equal((await formOf(whole)).files.length, 16, 'the upstream got all 16')
  await nothingLeaked(t, stack, [text(answer), text(ok)])
})

t.test('#14 Content-Encoding on an upload (a gzip bomb): 415 before the body is read, nothing decompressed or relayed', async (t) => {
  const stack = await setup(t)
  const rssBefore = rssAfterGcMb()
  const bodies: string[] = []
  // 64 MiB of zeros in about 64 KB: decoding it would show in memory, relaying it would show upstream.
  const bomb = gzipSync(Buffer.alloc(64 * 1024 * 1024), { level: 9 })
  const form = buildMultipart([{ name: 'model', value: 'gpt-image-1' }, { name: 'prompt', value: 'p' }, { name: 'image', filename: 'a.png', data: png }])
  const port = portOf(stack.gateway.url)

  // Only the headers are sent: the answer cannot depend on the body.
  const unread = await rawExchange(port, {
    writes: [`POST /v1/images/edits HTTP/1.1\r\nHost: x\r\nAuthorization: ${stack.auth}\r\nContent-Type: ${form.contentType}\r\nContent-Encoding: gzip\r\nContent-Length: ${bomb.length}\r\n\r\n`],
    waitMs: 3000
  })
  bodies.push(unread.text)
  assertError(t, { status: unread.status, body: unread.body }, 415, 'unsupported_content_encoding')
  t.equal(unread.headers['accept-encoding'], 'identity', 'says which coding it takes (RFC 9110 §15.5.16)')
  t.equal(unread.headers.connection, 'close', 'and closes: the unread body is not drained')

  // Whole bodies, every image route, several codings.
  const sends: [string, () => Promise<RawAnswer>][] = [
    ['multipart edits, gzip bomb', () => postForm(stack, 'edits', { body: bomb, contentType: form.contentType }, { 'content-encoding': 'gzip' })],
    ['variations, deflate', () => postForm(stack, 'variations', form, { 'content-encoding': 'deflate' })],
    ['JSON generations, gzip', () => postJson(stack, 'generations', gzipSync('{"prompt":"p"}'), { 'content-encoding': 'gzip' })],
    ['JSON generations, br', () => postJson(stack, 'generations', '{"prompt":"p"}', { 'content-encoding': 'br' })],
    ['JSON generations, "GZIP, identity"', () => postJson(stack, 'generations', '{"prompt":"p"}', { 'content-encoding': 'GZIP, identity' })],
    ['JSON edits, x-gzip', () => postJson(stack, 'edits', gzipSync('{"prompt":"p","images":[]}'), { 'content-encoding': 'x-gzip' })]
  ]
  for (const [label, send] of sends) {
    const answer = await send()
    bodies.push(text(answer))
    assertError(t, asError(answer), 415, 'unsupported_content_encoding')
    t.equal(answer.headers['accept-encoding'], 'identity', label)
  }
  t.equal(stack.upstream.received.length, 0, 'nothing compressed reached the upstream')

  // Authentication still comes first, and an identity coding is no coding.
  const anonymous = await sendRaw(`${stack.gateway.url}/v1/images/generations`, {
    headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' },
    body: [gzipSync('{"prompt":"p"}')]
  })
  bodies.push(text(anonymous))
  assertError(t, asError(anonymous), 401, 'invalid_api_key')
  const identity = await postJson(stack, 'generations', '{"prompt":"p"}', { 'content-encoding': 'identity' })
  t.equal(identity.status, 200, 'Content-Encoding: identity is relayed')
  t.equal(stack.upstream.received[0]?.headers['content-encoding'], undefined, 'and the header is not forwarded')

  await nothingLeaked(t, stack, bodies)
  const rss = rssAfterGcMb()
  t.ok(rss < rssBefore + 32, `RSS after GC ${rss.toFixed(0)} MB within 32 MB of ${rssBefore.toFixed(0)} MB: nothing inflated`)
})

t.test('#15 JSON generations: a 5 MB prompt is 413 unread; a long prompt, 10,000-deep nesting, n=100 and an unknown size are 400; none reaches the upstream', async (t) => {
  const stack = await setup(t, {
    models: [
      { name: 'gpt-image-1', deployments: [{ provider: 'up' }] },
      { name: 'dall-e-2', deployments: [{ provider: 'up' }] },
      { name: 'house-model', deployments: [{ provider: 'up' }] }
    ]
  })
  const port = portOf(stack.gateway.url)
  const bodies: string[] = []

  // 5 MB with its Content-Length: refused from the headers, over limits.jsonBodyBytes (1 MiB).
  const prompt = Buffer.from(`{"model":"gpt-image-1","prompt":"${'a'.repeat(5 * 1024 * 1024)}"}`)
  const unread = await rawExchange(port, {
    writes: [`POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nAuthorization: ${stack.auth}\r\nContent-Type: application/json\r\nContent-Length: ${prompt.length}\r\n\r\n`, prompt.subarray(0, 64 * 1024)],
    waitMs: 3000
  })
  bodies.push(unread.text)
  assertError(t, { status: unread.status, body: unread.body }, 413, 'request_too_large')
  t.equal(unread.headers.connection, 'close', 'the rest is not read')

  // The same body chunked (no length to refuse it by): refused once the count passes the cap; the
  // client stops sending at 1.5 MB so that the answer is not lost to a reset.
  const streamed = await rawExchange(port, {
    writes: [`POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nAuthorization: ${stack.auth}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n`, ...chunked(prompt, 256 * 1024).slice(0, 6)],
    waitMs: 3000
  })
  bodies.push(streamed.text)
  assertError(t, { status: streamed.status, body: streamed.body }, 413, 'request_too_large')

  const refusals: [string, string, number, string, string | null][] = [
    ['a 40,000-character prompt', JSON.stringify({ model: 'gpt-image-1', prompt: 'a'.repeat(40_000) }), 400, 'string_above_max_length', 'prompt'],
    ['10,000-deep nesting in an unknown field, model named', `{"model":"gpt-image-1","prompt":"p","x":${'['.repeat(10_000)}${']'.repeat(10_000)}}`, 400, 'invalid_json', null],
    ['10,000-deep nesting in an unknown field, no model', `{"prompt":"p","x":${'{"a":'.repeat(10_000)}1${'}'.repeat(10_000)}}`, 400, 'invalid_json', null],
    ['100,000-deep nesting as the prompt', `{"prompt":${'['.repeat(100_000)}${']'.repeat(100_000)}}`, 400, 'invalid_json', null],
    ['a 10,000-deep array as the body', `${'['.repeat(10_000)}${']'.repeat(10_000)}`, 400, 'invalid_json', null],
    [`${MAX_JSON_DEPTH + 1} levels`, `{"prompt":"p","x":${'['.repeat(MAX_JSON_DEPTH)}${']'.repeat(MAX_JSON_DEPTH)}}`, 400, 'invalid_json', null],
    ['n=100, gpt-image-1', JSON.stringify({ model: 'gpt-image-1', prompt: 'p', n: 100 }), 400, 'integer_above_max_value', 'n'],
    ['n=100, dall-e-2', JSON.stringify({ model: 'dall-e-2', prompt: 'p', n: 100 }), 400, 'integer_above_max_value', 'n'],
    ['n=0', JSON.stringify({ model: 'gpt-image-1', prompt: 'p', n: 0 }), 400, 'integer_below_min_value', 'n'],
    ['n as a string', JSON.stringify({ model: 'gpt-image-1', prompt: 'p', n: '100' }), 400, 'invalid_type', 'n'],
    ['n=1e300', '{"model":"gpt-image-1","prompt":"p","n":1e300}', 400, 'integer_above_max_value', 'n'],
    ['n=2.5', JSON.stringify({ model: 'gpt-image-1', prompt: 'p', n: 2.5 }), 400, 'invalid_type', 'n'],
    ['an unknown size', JSON.stringify({ model: 'gpt-image-1', prompt: 'p', size: '4096x4096' }), 400, 'invalid_value', 'size'],
    ['a nonsense size', JSON.stringify({ model: 'dall-e-2', prompt: 'p', size: 'banana' }), 400, 'invalid_value', 'size'],
    ['a size with a space', JSON.stringify({ model: 'gpt-image-1', prompt: 'p', size: '1024x1024 ' }), 400, 'invalid_value', 'size']
  ]
  for (const [label, body, status, code, param] of refusals) {
    const answer = await postJson(stack, 'generations', body)
    bodies.push(text(answer))
    t.not(answer.status, 500, `${label}: never a 500`)
    assertError(t, asError(answer), status, code)
    t.equal((answer.json() as { error: { param: unknown } }).error.param, param, `${label}: param ${String(param)}`)
  }
  t.equal(stack.upstream.received.length, 0, 'none of them reached the upstream')

  // Exactly MAX_JSON_DEPTH levels is fine (and re-serialised for the default model).
  const deepest = await postJson(stack, 'generations', `{"prompt":"p","x":${'['.repeat(MAX_JSON_DEPTH - 1)}${']'.repeat(MAX_JSON_DEPTH - 1)}}`)
  t.equal(deepest.status, 200, `${MAX_JSON_DEPTH} levels: relayed`)
  // A configured model the gateway has no rules for: only n >= 1 is checked, the upstream decides.
  const house = await postJson(stack, 'generations', JSON.stringify({ model: 'house-model', prompt: 'p', n: 100 }))
  t.equal(house.status, 200, 'n=100 for a model without rules: relayed')
  t.equal(stack.upstream.received.length, 2)
  await nothingLeaked(t, stack, [...bodies, text(deepest), text(house)])
})

t.test('#16 client steering the upstream (api_base, base_url, custom-host and forwarding headers, Host, absolute-form target, query): every call goes to the configured upstream, none to the decoy', async (t) => {
  const stack = await setup(t)
  const decoy = await startRawListener('close')
  t.teardown(() => decoy.close())
  const elsewhere = `http://127.0.0.1:${decoy.port}`
  const upstreamHost = new URL(stack.upstream.url).host
  const bodies: string[] = []

  const steering = {
    'x-portkey-custom-host': `${elsewhere}/v1`,
    'x-custom-host': elsewhere,
    'x-api-base': elsewhere,
    'x-base-url': elsewhere,
    'x-openai-base-url': elsewhere,
    'x-upstream': elsewhere,
    'x-forwarded-host': `127.0.0.1:${decoy.port}`,
    'x-forwarded-proto': 'http',
    forwarded: `host=127.0.0.1:${decoy.port};proto=http`,
    'x-original-url': `${elsewhere}/v1/images/generations`,
    'x-rewrite-url': `${elsewhere}/v1/images/generations`,
    host: `127.0.0.1:${decoy.port}`
  }
  const fields = { api_base: elsewhere, base_url: elsewhere, api_key: 'sk-not-the-provider-key', custom_llm_provider: 'openai', url: elsewhere }
  const sends: [string, () => Promise<RawAnswer>][] = [
    ['JSON fields and headers', () => postJson(stack, 'generations', JSON.stringify({ prompt: 'p', ...fields }), steering)],
    ['the query string', () => sendRaw(`${stack.gateway.url}/v1/images/generations?api_base=${encodeURIComponent(elsewhere)}&base_url=${encodeURIComponent(elsewhere)}`, {
      headers: { 'content-type': 'application/json', authorization: stack.auth },
      body: [Buffer.from('{"prompt":"p"}')]
    })],
    ['multipart fields and headers', () => postForm(stack, 'edits', buildMultipart([
      { name: 'model', value: 'gpt-image-1' },
      ...Object.entries(fields).map(([name, value]) => ({ name, value })),
      { name: 'prompt', value: 'p' },
      { name: 'image', filename: 'a.png', data: png }
    ]), steering)]
  ]
  for (const [label, send] of sends) {
    const answer = await send()
    bodies.push(text(answer))
    t.equal(answer.status, 200, `${label}: relayed to the configured upstream`)
  }

  // An absolute-form request target naming the decoy (RFC 9112 §3.2.2).
  const absolute = await rawExchange(portOf(stack.gateway.url), {
    writes: [rawPost(`${elsewhere}/v1/images/generations`, [`Host: 127.0.0.1:${decoy.port}`, `Authorization: ${stack.auth}`, 'Content-Type: application/json'], '{"prompt":"p"}')],
    waitMs: 1500
  })
  bodies.push(absolute.text)
  t.ok(absolute.status === 200 || (absolute.status >= 400 && absolute.status < 500), `absolute-form target: ${absolute.status}, not a 5xx`)

  await sleep(100)
  t.equal(decoy.connections, 0, 'the decoy never got a connection')
  t.equal(stack.upstream.received.length, absolute.status === 200 ? 4 : 3, 'each relayed request went to the configured upstream')
  for (const [i, seen] of stack.upstream.received.entries()) {
    t.equal(seen.headers.host, upstreamHost, `request ${i}: to the configured host`)
    t.match(seen.url, /^\/v1\/images\/(generations|edits)$/, `request ${i}: the configured path, no query`)
    t.equal(seen.headers.authorization, `Bearer ${PROVIDER_KEY}`, `request ${i}: the provider's key`)
    t.same(Object.keys(seen.headers).filter((name) => name in steering && name !== 'host'), [], `request ${i}: no steering header forwarded`)
  }
  await nothingLeaked(t, stack, bodies)
})

t.test('#16 image_url at 169.254.169.254, [::ffff:127.0.0.1]:port, 0.0.0.0, localhost: relayed for the upstream as text, never fetched by the gateway', async (t) => {
  const stack = await setup(t)
  // Stands in for an internal service on loopback (Redis, say): counts every connection made to it.
  const internal = await startRawListener('close')
  t.teardown(() => internal.close())
  const port = internal.port

  // The listener does see each spelling of loopback, so a fetch of any of them would be counted.
  for (const host of ['127.0.0.1', '::ffff:127.0.0.1', '0.0.0.0']) t.ok(await reaches(host, port), `${host} reaches the listener`)
  t.ok(await eventually(() => internal.connections === 3, 2000), 'it counted all three')
  const before = internal.connections

  const urls = [
    'http://169.254.169.254/latest/meta-data/iam/security-credentials/',
    `http://[::ffff:127.0.0.1]:${port}/`,
    `http://0.0.0.0:${port}/x.png`,
    `http://127.0.0.1:${port}/x.png`,
    `http://localhost:${port}/x.png`,
    `http://2130706433:${port}/x.png`,
    `https://127.0.0.1:${port}/x.png`
  ]
  const bodies: string[] = []
  for (const url of urls) {
    const body = JSON.stringify({ model: 'gpt-image-1', prompt: 'p', images: [{ image_url: url }], mask: { image_url: url } })
    const answer = await postJson(stack, 'edits', body)
    bodies.push(text(answer))
    t.equal(answer.status, 200, `${url}: relayed`)
    const relayed = stack.upstream.received.at(-1)
    t.equal(relayed?.body().toString(), body, `${url}: the upstream got it as sent (its own network fetches it, not ours)`)
  }
  // Other JSON and form fields holding URLs are data too.
  const generation = await postJson(stack, 'generations', JSON.stringify({ prompt: 'p', image_url: `http://127.0.0.1:${port}/`, image: { url: `http://0.0.0.0:${port}/` } }))
  bodies.push(text(generation))
  t.equal(generation.status, 200, 'an image_url in generations: relayed as data')
  const form = await postForm(stack, 'edits', buildMultipart([
    { name: 'model', value: 'gpt-image-1' },
    { name: 'prompt', value: 'p' },
    { name: 'image_url', value: `http://[::ffff:127.0.0.1]:${port}/` },
    { name: 'image', filename: 'a.png', data: png }
  ]))
  bodies.push(text(form))
  t.equal(form.status, 200, 'an image_url form field: relayed as data')

  // Schemes other than http(s) and data: are refused before the upstream.
  const sent = stack.upstream.received.length
  for (const url of ['file:///etc/passwd', `gopher://127.0.0.1:${port}/_INFO`, `ftp://127.0.0.1:${port}/`, `dict://127.0.0.1:${port}/`]) {
    const refused = await postJson(stack, 'edits', JSON.stringify({ model: 'gpt-image-1', prompt: 'p', images: [{ image_url: url }] }))
    bodies.push(text(refused))
    assertError(t, asError(refused), 400, 'invalid_value')
  }
  t.equal(stack.upstream.received.length, sent, 'no refused scheme reached the upstream')

  await sleep(100)
  t.equal(internal.connections, before, 'the gateway made no connection to the internal listener')
  await nothingLeaked(t, stack, bodies)
})

t.test('#17 CR, LF, NUL or obs-fold inside Authorization or a passed-through header: 400 from the HTTP parser (never 500), the upstream never called, nothing echoed', async (t) => {
  const stack = await setup(t)
  const port = portOf(stack.gateway.url)
  const body = '{"prompt":"p"}'
  const base = ['Host: x', 'Content-Type: application/json']
  const variants: [string, string[]][] = [
    ['bare CR in x-request-id', [`Authorization: ${stack.auth}`, 'X-Request-Id: a\rX-Evil: 1']],
    ['bare LF in x-request-id', [`Authorization: ${stack.auth}`, 'X-Request-Id: a\nX-Evil: 1']],
    ['obs-fold after x-request-id', [`Authorization: ${stack.auth}`, 'X-Request-Id: a\r\n X-Evil: 1']],
    ['bare CR in Authorization', [`Authorization: ${stack.auth}\rX-Evil: 1`]],
    ['bare LF in Authorization', [`Authorization: ${stack.auth}\nX-Evil: 1`]],
    ['CR in Accept (forwarded)', [`Authorization: ${stack.auth}`, 'Accept: application/json\rX-Evil: 1']],
    ['LF in Idempotency-Key (forwarded)', [`Authorization: ${stack.auth}`, 'Idempotency-Key: k\nX-Evil: 1']],
    ['NUL in Accept', [`Authorization: ${stack.auth}`, 'Accept: a\u0000b']],
    ['a space before the colon', [`Authorization: ${stack.auth}`, 'X-Evil : 1']]
  ]
  const bodies: string[] = []
  for (const [label, lines] of variants) {
    const answer = await rawExchange(port, { writes: [rawPost('/v1/images/generations', [...base, ...lines], body)], waitMs: 2000 })
    bodies.push(answer.text)
    assertError(t, { status: answer.status, body: answer.body }, 400, null)
    t.ok(answer.closed, `${label}: connection closed`)
    t.notMatch(answer.text, /evil|X-Request-Id: a/i, `${label}: nothing of the request echoed`)
  }
  t.equal(stack.upstream.received.length, 0, 'the upstream was never called')

  // The same connection-level refusal left the gateway serving.
  const after = await postJson(stack, 'generations', body)
  t.equal(after.status, 200, 'the next request is served')
  t.equal(stack.upstream.received[0]?.headers['x-evil'], undefined)

  // obs-text (bytes 0x80-0xFF) passes Node's parser: in Accept it is relayed as sent (undici takes
  // the same bytes), in an Idempotency-Key it is refused by the key's own check; neither is a 5xx.
  const obsAccept = await rawExchange(port, { writes: [rawPost('/v1/images/generations', [...base, `Authorization: ${stack.auth}`, 'Accept: text/caf\xe9'], body)], waitMs: 2000 })
  t.equal(obsAccept.status, 200, 'obs-text in Accept: relayed')
  t.equal(stack.upstream.received[1]?.headers.accept, 'text/caf\xe9', 'byte for byte')
  const obsKey = await rawExchange(port, { writes: [rawPost('/v1/images/generations', [...base, `Authorization: ${stack.auth}`, 'Idempotency-Key: caf\xe9'], body)], waitMs: 2000 })
  bodies.push(obsKey.text)
  assertError(t, { status: obsKey.status, body: obsKey.body }, 400, 'invalid_idempotency_key')
  t.equal(stack.upstream.received.length, 2)
  await nothingLeaked(t, stack, [...bodies, text(after), obsAccept.text])
})

t.test('#17 8 KB header values: Authorization 401, x-request-id replaced, Idempotency-Key 400, Accept relayed; over 16 KB of headers 431; nothing echoed or logged', async (t) => {
  const stack = await setup(t)
  const port = portOf(stack.gateway.url)
  const big = (prefix: string): string => `${prefix}${'A'.repeat(8192 - prefix.length)}`
  const bigKey = big('sk-gw-')
  const bigId = big('req-')
  const bigIdem = big('idem-')
  const bigAccept = big('application/json;q=0.9,x-')
  const bodies: string[] = []
  const body = '{"prompt":"p"}'

  const longKey = await postJson(stack, 'generations', body, { authorization: `Bearer ${bigKey}` })
  bodies.push(text(longKey))
  assertError(t, asError(longKey), 401, 'invalid_api_key')
  const keyAndJunk = await postJson(stack, 'generations', body, { authorization: `Bearer ${stack.gateway.key} ${bigKey}` })
  bodies.push(text(keyAndJunk))
  assertError(t, asError(keyAndJunk), 401, 'invalid_api_key')

  const longId = await postJson(stack, 'generations', body, { 'x-request-id': bigId })
  t.equal(longId.status, 200, 'an 8 KB x-request-id: served')
  t.match(String(longId.headers['x-gateway-request-id']), /^req_[0-9a-f]{32}$/, 'with an id of the gateway\'s own')
  t.equal(stack.upstream.received[0]?.headers['x-request-id'], undefined, 'x-request-id is not forwarded')

  const longIdem = await postJson(stack, 'generations', body, { 'idempotency-key': bigIdem })
  bodies.push(text(longIdem))
  assertError(t, asError(longIdem), 400, 'invalid_idempotency_key')

  const longAccept = await postJson(stack, 'generations', body, { accept: bigAccept })
  t.equal(longAccept.status, 200, 'an 8 KB Accept: relayed (an allowlisted header, at most Node\'s 16 KB of headers)')
  t.equal(stack.upstream.received[1]?.headers.accept, bigAccept)
  t.equal(stack.upstream.received.length, 2, 'only those two reached the upstream')

  // Node's max-http-header-size (16 KB): refused by the parser, before fastify.
  const overflow = await rawExchange(port, {
    writes: [rawPost('/v1/images/generations', ['Host: x', `Authorization: Bearer ${bigKey}`, `X-Filler: ${big('f-')}`, 'Content-Type: application/json'], body)],
    waitMs: 2000
  })
  bodies.push(overflow.text)
  assertError(t, { status: overflow.status, body: overflow.body }, 431, null)
  t.ok(overflow.closed, 'connection closed')

  for (const [name, value] of [['key', bigKey], ['request id', bigId], ['idempotency key', bigIdem]] as const) {
    t.notOk(bodies.some((b) => b.includes(value.slice(0, 64))), `the 8 KB ${name} is not echoed`)
  }
  t.equal(stack.upstream.received.length, 2)
  await nothingLeaked(t, stack, [...bodies, text(longId), text(longAccept)], [bigKey, bigIdem])
})

t.test('#17 security review: upstream headers come from an allowlist; hop-by-hop, the client\'s Authorization, cookies, forwarding and organisation headers never reach the upstream', async (t) => {
  const stack = await setup(t)
  const upstreamHost = new URL(stack.upstream.url).host
  const hostile: Record<string, string> = {
    connection: 'keep-alive, x-hop, upgrade',
    'x-hop': 'named in Connection',
    'keep-alive': 'timeout=5, max=1000',
    te: 'trailers',
    upgrade: 'websocket',
    'proxy-authorization': 'Basic cHJveHk6c2VjcmV0',
    'proxy-connection': 'keep-alive',
    cookie: 'session=client-cookie',
    'openai-organization': 'org-client',
    'openai-project': 'proj-client',
    'openai-beta': 'assistants=v2',
    'x-forwarded-for': '10.0.0.1',
    'x-forwarded-host': 'evil.example',
    'x-forwarded-proto': 'https',
    forwarded: 'for=10.0.0.1;host=evil.example',
    via: '1.1 evil',
    'x-api-key': 'client-x-api-key-123456',
    'api-key': 'client-api-key-123456',
    'x-request-id': 'client-request-id',
    'x-evil': '1',
    'x-stainless-lang': 'js',
    accept: 'application/json',
    'idempotency-key': 'allowlisted-1'
  }
  const allowed = new Set(['host', 'connection', 'user-agent', 'accept-encoding', 'content-type', 'content-length', 'authorization', 'accept', 'idempotency-key'])
  const port = portOf(stack.gateway.url)

  // JSON over a raw socket: the client's own framing is chunked, its Host is not ours.
  const jsonBody = Buffer.from('{"prompt":"p"}')
  const headLines = [
    'POST /v1/images/generations HTTP/1.1',
    'Host: evil.example',
    `Authorization: ${stack.auth}`,
    'Content-Type: application/json',
    'Transfer-Encoding: chunked',
    ...Object.entries(hostile).map(([name, value]) => `${name}: ${value}`),
    '',
    ''
  ].join('\r\n')
  const viaRaw = await rawExchange(port, { writes: [headLines, ...chunked(jsonBody, 5)], waitMs: 3000 })
  t.equal(viaRaw.status, 200, 'JSON with hostile headers: relayed')

  // Multipart with a Content-Length through Node's client.
  const form = buildMultipart([{ name: 'model', value: 'gpt-image-1' }, { name: 'prompt', value: 'p' }, { name: 'image', filename: 'a.png', data: png }])
  // Node's client refuses to send an Upgrade it does not handle; the rest go as they are.
  const rest = Object.fromEntries(Object.entries(hostile).filter(([name]) => name !== 'connection' && name !== 'upgrade'))
  const viaClient = await postForm(stack, 'edits', form, { ...rest, 'idempotency-key': 'allowlisted-2' })
  t.equal(viaClient.status, 200, 'multipart with hostile headers: relayed')

  t.equal(stack.upstream.received.length, 2)
  for (const [i, seen] of stack.upstream.received.entries()) {
    await seen.done
    const names = Object.keys(seen.headers)
    t.same(names.filter((name) => !allowed.has(name)), [], `request ${i}: only allowlisted headers (${names.join(', ')})`)
    t.equal(seen.headers.host, upstreamHost, `request ${i}: the upstream's own Host`)
    t.equal(seen.headers.authorization, `Bearer ${PROVIDER_KEY}`, `request ${i}: the provider's key, not the client's`)
    t.equal(seen.headers.connection, 'keep-alive', `request ${i}: undici's own Connection`)
    t.equal(seen.headers['user-agent'], 'image-gateway')
    t.equal(seen.headers['accept-encoding'], 'identity')
    t.equal(seen.headers.accept, 'application/json', `request ${i}: Accept passes`)
    t.equal(seen.headers['idempotency-key'], `allowlisted-${i + 1}`, `request ${i}: Idempotency-Key passes`)
    t.ok(seen.headers['content-length'] !== undefined && seen.headers['transfer-encoding'] === undefined, `request ${i}: framed by the gateway (the client's chunking is not passed on)`)
    const everything = `${JSON.stringify(seen.headers)}\n${seen.body().toString('latin1')}`
    for (const secret of [stack.gateway.key, 'client-cookie', 'cHJveHk6c2VjcmV0', 'org-client', 'client-api-key', 'evil.example']) {
      t.notOk(everything.includes(secret), `request ${i}: no ${secret.slice(0, 12)} upstream`)
    }
  }
  await nothingLeaked(t, stack, [viaRaw.text, text(viaClient)])
})
