import { setTimeout as sleep } from 'node:timers/promises'
import OpenAI, { toFile } from 'openai'
import sharp from 'sharp'
import t, { type Test } from 'tap'
import { ImageStore } from '../../src/sandbox/image-store.js'
import { buildSandboxApp, startSandbox, type SandboxOptions, type SandboxServer } from '../../src/sandbox/server.js'
import { makePng } from '../helpers/images.js'

/*
 * The sandbox at the HTTP level: what the SDKs do not send (JSON edits), the wire format the
 * gateway relays (headers, event framing, error envelopes) and the lifetime of url images.
 */

async function sandbox(t: Test, options: SandboxOptions = {}): Promise<SandboxServer> {
  const server = await startSandbox(options)
  t.teardown(() => server.close())
  return server
}

async function postJson(origin: string, path: string, body: unknown): Promise<Response> {
  return fetch(`${origin}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
}

function dataUrl(bytes: Buffer, type = 'image/png'): string {
  return `data:${type};base64,${bytes.toString('base64')}`
}

/** OpenAI's envelope: exactly the four keys, message and type strings, param and code string or null. */
function isEnvelope(body: unknown): boolean {
  if (typeof body !== 'object' || body === null || !('error' in body)) return false
  const error = body.error
  if (typeof error !== 'object' || error === null) return false
  const { message, type, param, code, ...rest } = error as Record<string, unknown>
  const stringOrNull = (v: unknown): boolean => v === null || typeof v === 'string'
  return typeof message === 'string' && typeof type === 'string' && stringOrNull(param) && stringOrNull(code) && Object.keys(rest).length === 0
}

t.test('answers carry the headers OpenAI sends: x-request-id, openai-version, openai-processing-ms', async (t) => {
  const { origin } = await sandbox(t)
  const response = await postJson(origin, '/v1/images/generations', { model: 'gpt-image-1', prompt: 'x', quality: 'low' })
  t.equal(response.status, 200)
  t.match(response.headers.get('content-type'), /^application\/json/)
  t.match(response.headers.get('x-request-id'), /^req_[0-9a-f]{32}$/)
  t.equal(response.headers.get('openai-version'), '2020-10-01')
  t.match(response.headers.get('openai-processing-ms'), /^[0-9]+$/)
})

t.test('a stream is text/event-stream, each event as "event: NAME\\ndata: JSON\\n\\n"', async (t) => {
  const { origin } = await sandbox(t)
  const response = await postJson(origin, '/v1/images/generations', { model: 'gpt-image-1', prompt: 'x', stream: true, partial_images: 1, size: '1024x1024', quality: 'low' })
  t.equal(response.status, 200)
  t.match(response.headers.get('content-type'), /^text\/event-stream/)
  const text = await response.text()
  const blocks = text.split('\n\n')
  t.equal(blocks.pop(), '', 'the stream ends after a complete event')
  t.same(
    blocks.map((block) => block.split('\n')[0]),
    ['event: image_generation.partial_image', 'event: image_generation.completed']
  )
  for (const block of blocks) {
    const [eventLine, dataLine, ...rest] = block.split('\n')
    t.same(rest, [], 'one data line per event')
    const data = JSON.parse((dataLine ?? '').replace(/^data: /, '')) as { type: string }
    t.equal(`event: ${data.type}`, eventLine, 'data.type repeats the event name')
  }
})

t.test('JSON edits: data: URLs for the images and the mask', async (t) => {
  const { origin } = await sandbox(t)
  const image = await sharp({ create: { width: 256, height: 256, channels: 3, background: { r: 10, g: 200, b: 30 } } }).jpeg().toBuffer()
  const mask = await sharp({ create: { width: 256, height: 256, channels: 4, background: { r: 0, g: 0, b: 0, alpha: 0 } } }).png().toBuffer()
  const response = await postJson(origin, '/v1/images/edits', {
    model: 'gpt-image-1',
    prompt: 'paint it',
    images: [{ image_url: dataUrl(image, 'image/jpeg') }],
    mask: { image_url: dataUrl(mask) },
    output_format: 'jpeg'
  })
  t.equal(response.status, 200)
  const answer = (await response.json()) as { data: { b64_json: string }[]; size: string; output_format: string }
  t.match(answer, { size: '256x256', output_format: 'jpeg' })
  const meta = await sharp(Buffer.from(answer.data[0]?.b64_json ?? '', 'base64')).metadata()
  t.match(meta, { format: 'jpeg', width: 256, height: 256 })
})

t.test('JSON edits: the sandbox never fetches a URL, and has no Files API', async (t) => {
  const { origin } = await sandbox(t)
  const cases = [
    { images: [{ image_url: 'https://example.com/a.png' }], param: 'images[0].image_url', code: 'invalid_value' },
    { images: [{ file_id: 'file-abc' }], param: 'images[0].file_id', code: 'invalid_value' },
    { images: [{ image_url: 'data:image/png,%89PNG' }], param: 'images[0].image_url', code: 'invalid_value' },
    { images: [{ image_url: dataUrl(Buffer.from('GIF89a....')) }], param: 'images[0].image_url', code: 'invalid_image_format' },
    { images: [], param: 'images', code: 'invalid_value' },
    {
      images: [{ image_url: dataUrl(makePng({ width: 8, height: 8 })) }],
      mask: { image_url: 'http://example.com/m.png' },
      param: 'mask.image_url',
      code: 'invalid_value'
    }
  ]
  for (const { param, code, ...refs } of cases) {
    const response = await postJson(origin, '/v1/images/edits', { model: 'gpt-image-1', prompt: 'x', ...refs })
    t.equal(response.status, 400, param)
    t.match(await response.json(), { error: { type: 'invalid_request_error', param, code } }, param)
  }
})

t.test('url images: served with their type and length, 404 when unknown or expired', async (t) => {
  const { origin } = await sandbox(t, { imageTtlMs: 300 })
  const response = await postJson(origin, '/v1/images/generations', { model: 'dall-e-2', prompt: 'x', size: '256x256' })
  const url = ((await response.json()) as { data: { url: string }[] }).data[0]?.url ?? ''
  const image = await fetch(url)
  t.equal(image.status, 200)
  t.equal(image.headers.get('content-type'), 'image/png')
  const bytes = Buffer.from(await image.arrayBuffer())
  t.equal(Number(image.headers.get('content-length')), bytes.length)
  t.match(await sharp(bytes).metadata(), { format: 'png', width: 256, height: 256 })

  const unknown = await fetch(`${origin}/v1/images/files/00000000000000000000000000000000.png`)
  t.equal(unknown.status, 404)
  t.match(await unknown.json(), { error: { type: 'invalid_request_error', code: 'image_not_found', param: null } })

  await sleep(350)
  const expired = await fetch(url)
  t.equal(expired.status, 404, 'gone after imageTtlMs')
  t.ok(isEnvelope(await expired.json()))
})

t.test('url images: past maxStoredImageBytes the oldest are dropped', async (t) => {
  const { origin } = await sandbox(t, { maxStoredImageBytes: 1 })
  const urls: string[] = []
  for (const prompt of ['first', 'second']) {
    const response = await postJson(origin, '/v1/images/generations', { model: 'dall-e-2', prompt, size: '256x256' })
    urls.push(((await response.json()) as { data: { url: string }[] }).data[0]?.url ?? '')
  }
  t.equal((await fetch(urls[0] ?? '')).status, 404, 'the first was evicted')
  t.equal((await fetch(urls[1] ?? '')).status, 200, 'the newest is kept, even over the cap')
})

t.test('bodies the sandbox cannot read get 400s in the envelope, never a 500', async (t) => {
  const { origin } = await sandbox(t)
  const raw = async (path: string, contentType: string, body: string): Promise<Response> =>
    fetch(`${origin}${path}`, { method: 'POST', headers: { 'content-type': contentType }, body })
  const cases: [string, Promise<Response>, string][] = [
    ['invalid JSON', raw('/v1/images/generations', 'application/json', '{"prompt":'), 'invalid_json'],
    ['a JSON array', raw('/v1/images/generations', 'application/json', '[1]'), 'invalid_json'],
    ['text/plain', raw('/v1/images/generations', 'application/xml', '<x/>'), 'unsupported_content_type'],
    [
      'a form to generations',
      raw('/v1/images/generations', 'multipart/form-data; boundary=XX', '--XX\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nhi\r\n--XX--\r\n'),
      'unsupported_content_type'
    ],
    ['JSON to variations', raw('/v1/images/variations', 'application/json', '{}'), 'unsupported_content_type'],
    [
      'a form cut short',
      raw(
        '/v1/images/edits',
        'multipart/form-data; boundary=XX',
        '--XX\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nhi\r\n--XX\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\nabc'
      ),
      'invalid_multipart'
    ]
  ]
  for (const [name, pending, code] of cases) {
    const response = await pending
    t.equal(response.status, 400, name)
    const body = await response.json()
    t.ok(isEnvelope(body), name)
    t.match(body, { error: { code, type: 'invalid_request_error' } }, name)
  }
  const notFound = await fetch(`${origin}/v1/images/nowhere`)
  t.equal(notFound.status, 404)
  t.same(await notFound.json(), { error: { message: 'Invalid URL (GET /v1/images/nowhere)', type: 'invalid_request_error', param: null, code: null } })
})

t.test('any other failure is a 500 in the envelope', async (t) => {
  class FailingStore extends ImageStore {
    override put(): string {
      throw new Error('disk on fire')
    }
  }
  const app = await buildSandboxApp({ origin: () => 'http://sandbox', store: new FailingStore({ ttlMs: 1000, maxBytes: 1000 }) })
  t.teardown(() => app.close())
  const response = await app.inject({ method: 'POST', url: '/v1/images/generations', payload: { model: 'dall-e-2', prompt: 'x', size: '256x256' } })
  t.equal(response.statusCode, 500)
  t.same(response.json(), {
    error: { message: 'The server had an error while processing your request. Sorry about that!', type: 'server_error', param: null, code: null }
  })
  t.notMatch(response.body, /disk on fire/, 'internal details stay inside')
})

t.test('a failure once a stream has begun is an error event, which the SDK raises', async (t) => {
  const { origin } = await sandbox(t)
  const client = new OpenAI({ baseURL: `${origin}/v1`, apiKey: 'x', maxRetries: 0 })
  // The header is intact (so the upload passes the checks), the pixel data is cut short.
  const png = makePng({ width: 64, height: 64, seed: 2 })
  const stream = await client.images.edit({
    model: 'gpt-image-1',
    prompt: 'x',
    image: await toFile(png.subarray(0, png.length - 2000), 'cut.png', { type: 'image/png' }),
    stream: true
  })
  const seen: string[] = []
  const err = await (async () => {
    for await (const event of stream) seen.push(event.type)
  })().then(
    () => null,
    (e: unknown) => e
  )
  t.same(seen, [])
  t.ok(err instanceof OpenAI.APIError)
  t.match(err, { code: 'invalid_image', param: 'image', type: 'invalid_request_error' })
})

t.test('concurrent requests all succeed', async (t) => {
  const { origin } = await sandbox(t)
  const responses = await Promise.all(
    Array.from({ length: 12 }, (_, i) => postJson(origin, '/v1/images/generations', { model: 'gpt-image-1', prompt: `image ${i}`, quality: 'low' }))
  )
  t.same(responses.map((r) => r.status), Array(12).fill(200))
  await Promise.all(responses.map((r) => r.arrayBuffer()))
})

t.test('close() stops the server: its port refuses connections', async (t) => {
  const server = await startSandbox()
  t.match(server.origin, /^http:\/\/127\.0\.0\.1:[0-9]+$/)
  await server.close()
  await t.rejects(fetch(`${server.origin}/v1/images/files/x.png`))
})
