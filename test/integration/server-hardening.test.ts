import { connect, type Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { Writable } from 'node:stream'
import t, { type Test } from 'tap'
import { buildApp } from '../../src/app.js'
import { parseConfig } from '../../src/config/load.js'
import { SMALL_BODY_LIMIT_BYTES } from '../../src/config/defaults.js'
import { createLogger } from '../../src/logging.js'
import { events, json, type Behaviour } from '../helpers/fake-upstream.js'
import type { GatewayOptions } from '../helpers/gateway.js'
import { sendRaw } from '../helpers/http-client.js'
import { makePng } from '../helpers/images.js'
import { buildMultipart } from '../helpers/multipart.js'
import { startStack } from '../helpers/stack.js'

/*
 * Slow clients against a real gateway over real sockets. Every timeout is shrunk through config
 * (a few hundred ms) so that each case ends in a second or two; the defaults are in
 * src/config/defaults.ts and docs/deployment.md.
 */

const OK = { created: 1, data: [{ b64_json: 'QUJD' }] }
const HEADERS_MS = 300
const IDLE_MS = 300
const KEEP_ALIVE_MS = 300
/** Node checks its header/request deadlines in a sweep (a quarter of the deadline here), plus scheduling slack. */
const SLACK_MS = 700

interface RawConnection {
  socket: Socket
  /** Everything the gateway sent so far. */
  text(): string
  /** Resolves with the ms from connecting to the socket's close. */
  closed: Promise<number>
  /** Resolves (with the ms since connecting) once `text()` contains `marker` `times` times. */
  received(marker: string, times?: number): Promise<number>
}

/** A plain TCP connection to the gateway, written to by hand: what a slow or hostile client does. */
async function openRaw(t: Test, url: string): Promise<RawConnection> {
  const { port } = new URL(url)
  const socket = connect(Number(port), '127.0.0.1')
  const started = Date.now()
  let text = ''
  const waiters: { marker: string; times: number; resolve: (ms: number) => void }[] = []
  const seen = (marker: string, times: number): boolean => text.split(marker).length - 1 >= times
  socket.on('data', (chunk: Buffer) => {
    text += chunk.toString('latin1')
    for (const waiter of waiters.filter((w) => seen(w.marker, w.times))) waiter.resolve(Date.now() - started)
  })
  socket.on('error', () => undefined)
  const closed = new Promise<number>((resolve) => socket.once('close', () => resolve(Date.now() - started)))
  t.teardown(() => {
    socket.destroy()
  })
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve)
    socket.once('error', reject)
  })
  return {
    socket,
    text: () => text,
    closed,
    received: (marker, times = 1) =>
      seen(marker, times) ? Promise.resolve(Date.now() - started) : new Promise((resolve) => waiters.push({ marker, times, resolve }))
  }
}

/** Status and JSON body of the one HTTP answer in `text`. */
function parseAnswer(text: string): { status: number; headers: string; body: unknown } {
  const end = text.indexOf('\r\n\r\n')
  const head = text.slice(0, end)
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0)
  return { status, headers: head.toLowerCase(), body: JSON.parse(text.slice(end + 4)) }
}

/** A gateway whose client-side timeouts are a few hundred ms, relaying to a fake upstream. */
async function hardened(t: Test, behaviour: Behaviour, server: Record<string, unknown> = {}, gateway: Partial<GatewayOptions> = {}) {
  return startStack(t, {
    behaviour,
    gateway: {
      limits: { uploadIdleMs: IDLE_MS },
      extra: {
        server: { host: '127.0.0.1', port: 0, logLevel: 'info', headersTimeoutMs: HEADERS_MS, keepAliveTimeoutMs: KEEP_ALIVE_MS, ...server }
      },
      ...gateway
    }
  })
}

t.test('headers sent slowly (slowloris): 408 in OpenAI envelope, connection closed at the headers timeout', async (t) => {
  const { upstream, gateway } = await hardened(t, json(200, OK))
  const connection = await openRaw(t, gateway.url)
  const head = `POST /v1/images/generations HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer ${gateway.key}\r\nX-Padding: `
  void (async () => {
    // One byte every 50 ms: the connection is never idle, the headers never end.
    for (const byte of head + 'a'.repeat(200)) {
      if (connection.socket.destroyed) return
      connection.socket.write(byte)
      await sleep(50)
    }
  })()
  const closedAfter = await connection.closed
  t.ok(closedAfter >= HEADERS_MS - 50, `not before the headers timeout (${closedAfter} ms)`)
  t.ok(closedAfter < HEADERS_MS + SLACK_MS, `soon after it (${closedAfter} ms)`)
  const answer = parseAnswer(connection.text())
  t.equal(answer.status, 408)
  t.match(answer.headers, /connection: close/)
  t.strictSame(answer.body, {
    error: { message: 'The request was not received in time.', type: 'invalid_request_error', param: null, code: 'request_timeout' }
  })
  t.equal(upstream.received.length, 0, 'the upstream never got a request')
})

t.test('a connection that sends nothing is closed at the headers timeout', async (t) => {
  const { gateway } = await hardened(t, json(200, OK))
  const connection = await openRaw(t, gateway.url)
  const closedAfter = await connection.closed
  t.ok(closedAfter >= HEADERS_MS - 50 && closedAfter < HEADERS_MS + SLACK_MS, `closed after ${closedAfter} ms`)
})

t.test('a JSON body that stalls midway: 408 request_timeout in OpenAI envelope, connection closed, no upstream call', async (t) => {
  const { upstream, gateway } = await hardened(t, json(200, OK))
  const body = JSON.stringify({ model: 'gpt-image-1', prompt: 'a sea otter in a bowler hat' })
  const connection = await openRaw(t, gateway.url)
  connection.socket.write(
    `POST /v1/images/generations HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer ${gateway.key}\r\n` +
      `Content-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body.slice(0, 20)}`
  )
  // Then nothing: the rest of the body never comes.
  const closedAfter = await connection.closed
  t.ok(closedAfter >= IDLE_MS - 50 && closedAfter < IDLE_MS + SLACK_MS, `answered and closed after ${closedAfter} ms`)
  const answer = parseAnswer(connection.text())
  t.equal(answer.status, 408)
  t.match(answer.headers, /connection: close/)
  t.match(answer.body, { error: { type: 'invalid_request_error', param: null, code: 'request_timeout' } })
  t.equal(upstream.received.length, 0, 'the upstream never got a request')
  t.match(
    gateway.logs().find((line) => line.msg === 'request'),
    { status: 408, errorCode: 'request_timeout' },
    'logged as a 408 of ours'
  )
})

t.test('a large JSON body arriving slowly but steadily, for far longer than every timeout, goes through whole', async (t) => {
  const { upstream, gateway } = await hardened(t, json(200, OK))
  const body = Buffer.from(JSON.stringify({ model: 'gpt-image-1', prompt: 'p', x_padding: 'a'.repeat(300_000) }))
  const pieces: (Buffer | (() => Promise<void>))[] = []
  const chunkBytes = 16 * 1024
  for (let offset = 0; offset < body.length; offset += chunkBytes) {
    pieces.push(body.subarray(offset, offset + chunkBytes), () => sleep(100))
  }
  const started = Date.now()
  const answer = await sendRaw(`${gateway.url}/v1/images/generations`, {
    headers: { 'content-type': 'application/json', authorization: `Bearer ${gateway.key}` },
    body: pieces
  })
  const tookMs = Date.now() - started
  t.ok(tookMs > 3 * Math.max(HEADERS_MS, IDLE_MS, KEEP_ALIVE_MS), `the upload took ${tookMs} ms`)
  t.equal(answer.status, 200)
  t.ok(upstream.received[0]?.body().equals(body), 'the upstream got the body byte for byte')
})

t.test('a multipart upload arriving slowly but steadily goes through whole', async (t) => {
  const { upstream, gateway } = await hardened(t, json(200, OK))
  const form = buildMultipart([
    { name: 'model', value: 'gpt-image-1' },
    { name: 'prompt', value: 'p' },
    { name: 'image', filename: 'a.png', data: makePng({ width: 16, height: 16, padToBytes: 256 * 1024 }) }
  ])
  const pieces: (Buffer | (() => Promise<void>))[] = []
  for (let offset = 0; offset < form.body.length; offset += 16 * 1024) {
    pieces.push(form.body.subarray(offset, offset + 16 * 1024), () => sleep(100))
  }
  const answer = await sendRaw(`${gateway.url}/v1/images/edits`, {
    headers: { 'content-type': form.contentType, authorization: `Bearer ${gateway.key}` },
    body: pieces
  })
  t.equal(answer.status, 200)
  t.ok(upstream.received[0]?.body().equals(form.body), 'the upstream got the upload byte for byte')
})

t.test('a long answer is never cut: the upstream answers long after every client timeout', async (t) => {
  const answerAfterMs = 2 * (HEADERS_MS + IDLE_MS + KEEP_ALIVE_MS)
  const slow: Behaviour = async (_request, response, received) => {
    await received.done
    await sleep(answerAfterMs)
    const payload = JSON.stringify(OK)
    response.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) })
    response.end(payload)
  }
  const { gateway } = await hardened(t, slow)
  const started = Date.now()
  const answer = await sendRaw(`${gateway.url}/v1/images/generations`, {
    headers: { 'content-type': 'application/json', authorization: `Bearer ${gateway.key}` },
    body: [Buffer.from(JSON.stringify({ model: 'gpt-image-1', prompt: 'p' }))]
  })
  t.ok(Date.now() - started >= answerAfterMs, 'the answer came after the upstream delay')
  t.equal(answer.status, 200)
  t.strictSame(answer.json(), OK)
})

t.test('a streamed answer with long gaps between events is never cut', async (t) => {
  const list = [
    { event: 'image_generation.partial_image', data: { type: 'image_generation.partial_image', b64_json: 'AA==' } },
    { event: 'image_generation.partial_image', data: { type: 'image_generation.partial_image', b64_json: 'AQ==' } },
    { event: 'image_generation.completed', data: { type: 'image_generation.completed', b64_json: 'Ag==' } }
  ]
  const { gateway } = await hardened(t, events(list, 2 * (HEADERS_MS + IDLE_MS + KEEP_ALIVE_MS) / 3))
  const answer = await sendRaw(`${gateway.url}/v1/images/generations`, {
    headers: { 'content-type': 'application/json', authorization: `Bearer ${gateway.key}` },
    body: [Buffer.from(JSON.stringify({ model: 'gpt-image-1', prompt: 'p', stream: true }))]
  })
  t.equal(answer.status, 200)
  const text = answer.body.toString('utf8')
  t.equal(text.split('event: ').length - 1, 3, 'every event arrived')
  t.match(text, /image_generation\.completed/)
})

t.test('an idle keep-alive connection is closed after the keep-alive timeout, not before', async (t) => {
  const { gateway } = await hardened(t, json(200, OK))
  const connection = await openRaw(t, gateway.url)
  connection.socket.write('GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n')
  const answeredAt = await connection.received('{"status":"ok"}')
  t.match(connection.text(), /connection: keep-alive/i, 'the answer keeps the connection')
  // Still open within the timeout: a second request on it is answered.
  await sleep(KEEP_ALIVE_MS / 3)
  connection.socket.write('GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n')
  const secondAt = await connection.received('{"status":"ok"}', 2)
  t.ok(secondAt > answeredAt, 'the second request was answered on the same connection')
  const closedAfter = await connection.closed
  // Node 20 closes keepAliveTimeout + 1 s after the last answer (a margin against racing the client).
  const sinceLastAnswer = closedAfter - secondAt
  t.ok(sinceLastAnswer >= KEEP_ALIVE_MS - 50, `not before the timeout (${sinceLastAnswer} ms after the last answer)`)
  t.ok(sinceLastAnswer < KEEP_ALIVE_MS + 1000 + SLACK_MS, `soon after it (${sinceLastAnswer} ms)`)
})

t.test('server.requestTimeoutMs (off by default) is a whole-request deadline: it cuts a steady body, with a 408', async (t) => {
  const { upstream, gateway } = await hardened(t, json(200, OK), { requestTimeoutMs: 2 * HEADERS_MS })
  const body = JSON.stringify({ model: 'gpt-image-1', prompt: 'p', x_padding: 'a'.repeat(4000) })
  const connection = await openRaw(t, gateway.url)
  connection.socket.write(
    `POST /v1/images/generations HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer ${gateway.key}\r\n` +
      `Content-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`
  )
  void (async () => {
    // Never idle for long (every 50 ms, well under uploadIdleMs), but slower than the deadline allows.
    for (let offset = 0; offset < body.length && !connection.socket.destroyed; offset += 100) {
      connection.socket.write(body.slice(offset, offset + 100))
      await sleep(50)
    }
  })()
  const closedAfter = await connection.closed
  t.ok(closedAfter < 2 * HEADERS_MS + SLACK_MS, `cut at the deadline (${closedAfter} ms)`)
  const answer = parseAnswer(connection.text())
  t.equal(answer.status, 408)
  t.match(answer.body, { error: { code: 'request_timeout' } })
  t.equal(upstream.received.length, 0)
})

t.test('body caps: admin bodies are capped small; a body on GET is not read and the connection closes', async (t) => {
  const adminToken = 'admin-token-0123456789abcdef'
  const { gateway } = await hardened(t, json(200, OK), {}, { adminToken })
  const big = await sendRaw(`${gateway.url}/admin/keys`, {
    headers: { 'content-type': 'application/json', authorization: `Bearer ${adminToken}` },
    body: [Buffer.from(JSON.stringify({ name: 'k', metadata: { note: 'a'.repeat(SMALL_BODY_LIMIT_BYTES) } }))]
  })
  t.equal(big.status, 413)
  t.match(big.json(), { error: { code: 'request_too_large', type: 'invalid_request_error' } })
  const small = await sendRaw(`${gateway.url}/admin/keys`, {
    headers: { 'content-type': 'application/json', authorization: `Bearer ${adminToken}` },
    body: [Buffer.from(JSON.stringify({ name: 'k' }))]
  })
  t.equal(small.status, 201, 'an ordinary admin body is taken')

  const withBody = await sendRaw(`${gateway.url}/v1/models`, {
    method: 'GET',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${gateway.key}` },
    body: [Buffer.from('{"x": 1}')]
  })
  t.equal(withBody.status, 200, 'answered')
  t.equal(withBody.headers.connection, 'close', 'then the connection closes instead of draining the body')
})

t.test('trustProxy: X-Forwarded-For is believed only from the configured proxies', async (t) => {
  const sink = new Writable({ write: (_chunk, _encoding, callback) => callback() })
  const ipSeen = async (trustProxy: unknown): Promise<string> => {
    const config = parseConfig(
      JSON.stringify({
        server: { trustProxy },
        providers: [{ id: 'up', type: 'openai', baseUrl: 'http://127.0.0.1:9/v1' }],
        models: [{ name: 'gpt-image-1', deployments: [{ provider: 'up' }] }]
      }),
      {},
      'test config'
    )
    const app = await buildApp(config, { logger: createLogger('silent', sink) })
    app.get('/test/ip', async (request) => ({ ip: request.ip }))
    const answer = await app.inject({ method: 'GET', url: '/test/ip', remoteAddress: '10.1.2.3', headers: { 'x-forwarded-for': '203.0.113.7' } })
    await app.close()
    return (answer.json() as { ip: string }).ip
  }
  t.equal(await ipSeen(false), '10.1.2.3', 'off by default: the peer address')
  t.equal(await ipSeen(['10.0.0.0/8']), '203.0.113.7', 'from a listed proxy: the forwarded address')
  t.equal(await ipSeen(['192.168.0.0/16']), '10.1.2.3', 'from a peer that is not listed: the peer address')
})

t.test('no body is waited for without a valid key: 401 at once, Connection: close', async (t) => {
  const { upstream, gateway } = await hardened(t, json(200, OK))
  const connection = await openRaw(t, gateway.url)
  connection.socket.write(
    'POST /v1/images/generations HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer not-a-key-0123456789\r\n' +
      'Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"model": "gpt-'
  )
  const closedAfter = await connection.closed
  t.ok(closedAfter < IDLE_MS, `answered and closed without waiting for the body (${closedAfter} ms)`)
  const answer = parseAnswer(connection.text())
  t.equal(answer.status, 401)
  t.match(answer.headers, /connection: close/)
  t.match(answer.body, { error: { code: 'invalid_api_key' } })
  t.equal(upstream.received.length, 0)
})

t.test('an unknown path: a body over the small cap is refused, a stalled one is timed out', async (t) => {
  const { gateway } = await hardened(t, json(200, OK))
  const big = await sendRaw(`${gateway.url}/v1/nope`, {
    headers: { 'content-type': 'application/json' },
    body: [Buffer.alloc(SMALL_BODY_LIMIT_BYTES + 1, 0x20)]
  })
  t.equal(big.status, 413, 'its body is read (to answer 404) only up to the small cap')
  const connection = await openRaw(t, gateway.url)
  connection.socket.write('POST /v1/nope HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{')
  const closedAfter = await connection.closed
  t.ok(closedAfter < IDLE_MS + SLACK_MS, `closed after ${closedAfter} ms`)
  const answer = parseAnswer(connection.text())
  t.equal(answer.status, 408)
  t.match(answer.headers, /connection: close/)
})
