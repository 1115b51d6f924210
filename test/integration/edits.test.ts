import { createHash } from 'node:crypto'
import { Busboy } from '@fastify/busboy'
import OpenAI, { toFile } from 'openai'
import t, { type Test } from 'tap'
import { json, type FakeUpstream, type Received } from '../helpers/fake-upstream.js'
import { type Gateway, type GatewayOptions } from '../helpers/gateway.js'
import { sendRaw } from '../helpers/http-client.js'
import { makeJpeg, makePng } from '../helpers/images.js'
import { buildMultipart, type Part } from '../helpers/multipart.js'
import { startStack } from '../helpers/stack.js'

const OK = { created: 1, data: [{ b64_json: 'QUJD' }] }

async function setup(t: Test, options: Partial<GatewayOptions> = {}): Promise<{ upstream: FakeUpstream; gateway: Gateway; client: OpenAI }> {
  const { upstream, gateway } = await startStack(t, { behaviour: json(200, OK), gateway: options })
  return { upstream, gateway, client: new OpenAI({ apiKey: gateway.key, baseURL: gateway.baseURL, maxRetries: 0 }) }
}

interface ParsedForm {
  fields: [string, string][]
  files: { name: string; filename: string; mimeType: string; data: Buffer }[]
}

/** What the upstream received, read back by an independent parser. */
function parseForm(received: Received): Promise<ParsedForm> {
  return new Promise((resolve, reject) => {
    const form: ParsedForm = { fields: [], files: [] }
    const parser = Busboy({ headers: { 'content-type': String(received.headers['content-type']) } })
    parser.on('field', (name: string, value: string) => form.fields.push([name, value]))
    parser.on('file', (name: string, stream: NodeJS.ReadableStream, filename: string, _enc: string, mimeType: string) => {
      const chunks: Buffer[] = []
      stream.on('data', (c: Buffer) => chunks.push(c))
      stream.on('end', () => form.files.push({ name, filename, mimeType, data: Buffer.concat(chunks) }))
    })
    parser.on('finish', () => resolve(form))
    parser.on('error', reject)
    parser.end(received.body())
  })
}

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex')
}

function post(gateway: Gateway, path: string, form: { body: Buffer; contentType: string }, options: { chunked?: boolean; split?: number } = {}) {
  const pieces = options.split === undefined ? [form.body] : splitEvery(form.body, options.split)
  return sendRaw(`${gateway.url}/v1/images/${path}`, {
    headers: { 'content-type': form.contentType, authorization: `Bearer ${gateway.key}` },
    body: pieces,
    chunked: options.chunked ?? false
  })
}

function splitEvery(data: Buffer, size: number): Buffer[] {
  const out: Buffer[] = []
  for (let i = 0; i < data.length; i += size) out.push(data.subarray(i, i + size))
  return out
}

const square = makePng({ width: 64, height: 64, alpha: true, seed: 1 })
const mask = makePng({ width: 64, height: 64, alpha: true, seed: 2 })

t.test('SDK edit with one image: fields and file reach the upstream as sent', async (t) => {
  const { upstream, client } = await setup(t)
  const result = await client.images.edit({
    model: 'gpt-image-1',
    image: await toFile(square, 'otter.png', { type: 'image/png' }),
    prompt: 'add a hat',
    size: '1024x1024',
    quality: 'low'
  })
  t.strictSame(result, OK)
  const seen = upstream.received[0] as Received
  t.equal(seen.url, '/v1/images/edits')
  t.match(seen.headers['content-type'], /^multipart\/form-data; boundary=/)
  const form = await parseForm(seen)
  t.strictSame(new Map(form.fields), new Map([['model', 'gpt-image-1'], ['prompt', 'add a hat'], ['size', '1024x1024'], ['quality', 'low']]))
  t.equal(form.files.length, 1)
  t.match(form.files[0], { name: 'image', filename: 'otter.png', mimeType: 'image/png' })
  t.ok(form.files[0]?.data.equals(square))
})

t.test('SDK edit with several images as image[] and a mask; variations', async (t) => {
  const { upstream, client } = await setup(t)
  const second = makeJpeg({ width: 64, height: 48 })
  await client.images.edit({
    model: 'gpt-image-1.5',
    image: [await toFile(square, 'a.png', { type: 'image/png' }), await toFile(second, 'b.jpg', { type: 'image/jpeg' })],
    mask: await toFile(mask, 'mask.png', { type: 'image/png' }),
    prompt: 'merge'
  })
  const form = await parseForm(upstream.received[0] as Received)
  t.strictSame(
    form.files.map((f) => [f.name, f.filename, f.mimeType, f.data.length]),
    [
      ['image[]', 'a.png', 'image/png', square.length],
      ['image[]', 'b.jpg', 'image/jpeg', second.length],
      ['mask', 'mask.png', 'image/png', mask.length]
    ]
  )
  await client.images.createVariation({ model: 'dall-e-2', image: await toFile(square, 'v.png', { type: 'image/png' }), n: 2, size: '256x256' })
  const variation = upstream.received[1] as Received
  t.equal(variation.url, '/v1/images/variations')
  const vform = await parseForm(variation)
  t.strictSame(new Map(vform.fields), new Map([['model', 'dall-e-2'], ['n', '2'], ['size', '256x256']]))
  t.ok(vform.files[0]?.data.equals(square))
})

t.test('SDK streamed upload (fs.createReadStream): chunked, no Content-Length, arrives whole', async (t) => {
  const { createReadStream } = await import('node:fs')
  const { writeFile } = await import('node:fs/promises')
  const { join } = await import('node:path')
  const { upstream, client } = await setup(t)
  const dir = t.testdir({})
  const path = join(dir, 'otter.png')
  const image = makePng({ width: 64, height: 64, seed: 12, padToBytes: 5 * 1024 * 1024 })
  await writeFile(path, image)
  await client.images.edit({ model: 'gpt-image-1', image: createReadStream(path), prompt: 'streamed' })
  const seen = upstream.received[0] as Received
  t.equal(seen.headers['content-length'], undefined)
  t.equal(seen.headers['transfer-encoding'], 'chunked')
  const form = await parseForm(seen)
  t.ok(form.files[0]?.data.equals(image), 'the 5 MB file arrived byte for byte')
  t.equal(form.files[0]?.filename, 'otter.png')
})

t.test('the upstream receives the client\'s exact bytes (SHA-256), with Content-Length or chunked', async (t) => {
  const { upstream, gateway } = await setup(t)
  const form = buildMultipart([
    { name: 'model', value: 'gpt-image-1' },
    { name: 'prompt', value: 'übermäßig – 🦦' },
    { name: 'image[]', filename: 'a b "c".png', contentType: 'image/png', data: square },
    { name: 'image[]', filename: 'two.png', contentType: 'image/png', data: makePng({ width: 32, height: 16, seed: 3 }) },
    { name: 'future_param', value: '{"x":1}' }
  ])
  const plain = await post(gateway, 'edits', form)
  t.equal(plain.status, 200)
  t.equal((upstream.received[0] as Received).sha256(), sha256(form.body))
  t.equal(upstream.received[0]?.headers['content-length'], String(form.body.length))
  const chunked = await post(gateway, 'edits', form, { chunked: true, split: 7 })
  t.equal(chunked.status, 200)
  t.equal((upstream.received[1] as Received).sha256(), sha256(form.body))
  t.equal(upstream.received[1]?.headers['transfer-encoding'], 'chunked')
})

t.test('the model field after a large file (curl\'s order) is held, spilled to disk, and sent unchanged', async (t) => {
  const { upstream, gateway } = await setup(t, { limits: { holdMemoryBytes: 256 * 1024 } })
  const big = makePng({ width: 32, height: 32, seed: 4, padToBytes: 3 * 1024 * 1024 })
  const form = buildMultipart([
    { name: 'image', filename: 'big.png', data: big },
    { name: 'prompt', value: 'late model' },
    { name: 'model', value: 'gpt-image-1' }
  ])
  const answer = await post(gateway, 'edits', form, { split: 64 * 1024 })
  t.equal(answer.status, 200)
  t.equal((upstream.received[0] as Received).sha256(), sha256(form.body))
})

t.test('a 30 MB upload reaches the upstream while the client is still sending it', async (t) => {
  const { upstream, gateway } = await setup(t)
  const big = makePng({ width: 256, height: 256, seed: 5, padToBytes: 30 * 1024 * 1024 })
  const form = buildMultipart([
    { name: 'model', value: 'gpt-image-1' },
    { name: 'prompt', value: 'big' },
    { name: 'image', filename: 'big.png', data: big }
  ])
  const firstPiece = form.body.subarray(0, 2 * 1024 * 1024)
  const rest = form.body.subarray(firstPiece.length)
  let upstreamBytesBeforeRest = -1
  const answer = await sendRaw(`${gateway.url}/v1/images/edits`, {
    headers: { 'content-type': form.contentType, 'content-length': String(form.body.length), authorization: `Bearer ${gateway.key}` },
    body: [
      firstPiece,
      async () => {
        // Nothing more is sent until the upstream has bytes: a buffering gateway never gets here.
        const seen = await upstream.nthRequest(1)
        while (seen.bytes === 0) await new Promise((r) => setTimeout(r, 5))
        upstreamBytesBeforeRest = seen.bytes
      },
      rest
    ],
    chunked: true
  })
  t.equal(answer.status, 200)
  t.ok(upstreamBytesBeforeRest > 0 && upstreamBytesBeforeRest <= firstPiece.length, `upstream had ${upstreamBytesBeforeRest} bytes before the client sent the rest`)
  t.equal((upstream.received[0] as Received).sha256(), sha256(form.body))
})

t.test('an alias changes only the bytes of the model value; an absent model is added explicitly', async (t) => {
  const { upstream, gateway } = await setup(t, {
    models: [
      { name: 'house', deployments: [{ provider: 'up', model: 'gpt-image-1-mini' }] },
      { name: 'gpt-image-1.5', deployments: [{ provider: 'up' }] }
    ]
  })
  const parts: Part[] = [
    { name: 'image', filename: 'a.png', data: square },
    { name: 'model', value: 'house' },
    { name: 'prompt', value: 'p' }
  ]
  const form = buildMultipart(parts)
  t.equal((await post(gateway, 'edits', form)).status, 200)
  const expected = buildMultipart(parts.map((p) => (p.name === 'model' ? { name: 'model', value: 'gpt-image-1-mini' } : p)))
  const seen = upstream.received[0] as Received
  t.ok(seen.body().equals(expected.body), 'byte-identical but for the model value')
  t.equal(seen.headers['content-length'], String(expected.body.length))

  const noModel = buildMultipart([{ name: 'image', filename: 'a.png', data: square }, { name: 'prompt', value: 'p' }])
  t.equal((await post(gateway, 'edits', noModel, { chunked: true })).status, 200)
  const defaulted = await parseForm(upstream.received[1] as Received)
  t.strictSame(new Map(defaulted.fields), new Map([['prompt', 'p'], ['model', 'gpt-image-1.5']]))
  t.ok(defaulted.files[0]?.data.equals(square))
})

t.test('curl -F, file before model, reaches the upstream unchanged', async (t) => {
  const { spawn } = await import('node:child_process')
  const { mkdtemp, writeFile, rm } = await import('node:fs/promises')
  const { tmpdir } = await import('node:os')
  const { join } = await import('node:path')
  const { upstream, gateway } = await setup(t)
  const dir = await mkdtemp(join(tmpdir(), 'gw-curl-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'otter.png')
  await writeFile(file, makePng({ width: 64, height: 64, seed: 6, padToBytes: 2_000_000 }))
  const output = await new Promise<string>((resolve, reject) => {
    const curl = spawn('curl', ['-sS', `${gateway.url}/v1/images/edits`, '-H', `Authorization: Bearer ${gateway.key}`, '-F', `image=@${file}`, '-F', 'prompt=hat', '-F', 'model=dall-e-2', '-F', 'size=256x256'])
    let out = ''
    curl.stdout.on('data', (c: Buffer) => (out += c.toString()))
    curl.on('error', reject)
    curl.on('close', () => resolve(out))
  })
  t.strictSame(JSON.parse(output), OK)
  const form = await parseForm(upstream.received[0] as Received)
  t.strictSame(form.fields, [['prompt', 'hat'], ['model', 'dall-e-2'], ['size', '256x256']])
  t.equal(form.files[0]?.data.length, 2_000_000)
})

interface Refusal {
  name: string
  parts: Part[]
  status: number
  code: string
  param: string | null
  path?: string
  limits?: GatewayOptions['limits']
}

const wide = makePng({ width: 128, height: 64, seed: 7 })
const refusals: Refusal[] = [
  {
    name: 'dall-e-2 takes square images only',
    parts: [{ name: 'model', value: 'dall-e-2' }, { name: 'prompt', value: 'p' }, { name: 'image', filename: 'w.png', data: wide }],
    status: 400,
    code: 'invalid_image_dimensions',
    param: 'image'
  },
  {
    name: 'dall-e-2 takes PNG only',
    parts: [{ name: 'model', value: 'dall-e-2' }, { name: 'prompt', value: 'p' }, { name: 'image', filename: 'a.jpg', contentType: 'image/jpeg', data: makeJpeg({ width: 8, height: 8 }) }],
    status: 400,
    code: 'invalid_image_format',
    param: 'image'
  },
  {
    name: 'dall-e-2 images are under 4 MB',
    parts: [{ name: 'model', value: 'dall-e-2' }, { name: 'prompt', value: 'p' }, { name: 'image', filename: 'a.png', data: makePng({ width: 8, height: 8, padToBytes: 4 * 1024 * 1024 }) }],
    status: 400,
    code: 'image_too_large',
    param: 'image'
  },
  {
    name: 'a file that is not an image, by its bytes',
    parts: [{ name: 'model', value: 'gpt-image-1' }, { name: 'prompt', value: 'p' }, { name: 'image', filename: 'x.png', data: Buffer.from('GIF89a not really an image at all') }],
    status: 400,
    code: 'invalid_image_format',
    param: 'image'
  },
  {
    name: 'the mask must be the image\'s size',
    parts: [
      { name: 'model', value: 'gpt-image-1' },
      { name: 'prompt', value: 'p' },
      { name: 'image', filename: 'a.png', data: square },
      { name: 'mask', filename: 'm.png', data: makePng({ width: 32, height: 32, alpha: true }) }
    ],
    status: 400,
    code: 'invalid_image_dimensions',
    param: 'mask'
  },
  {
    name: 'more images than the model takes',
    parts: [
      { name: 'model', value: 'gpt-image-1' },
      { name: 'prompt', value: 'p' },
      ...Array.from({ length: 17 }, (_, i): Part => ({ name: 'image[]', filename: `${i}.png`, data: square }))
    ],
    status: 400,
    code: 'too_many_images',
    param: 'image'
  },
  {
    name: 'image sent as text',
    parts: [{ name: 'model', value: 'gpt-image-1' }, { name: 'prompt', value: 'p' }, { name: 'image', value: 'https://example.com/a.png' }],
    status: 400,
    code: 'invalid_type',
    param: 'image'
  },
  {
    name: 'image and image[] together',
    parts: [
      { name: 'model', value: 'gpt-image-1' },
      { name: 'prompt', value: 'p' },
      { name: 'image', filename: 'a.png', data: square },
      { name: 'image[]', filename: 'b.png', data: square }
    ],
    status: 400,
    code: 'invalid_value',
    param: 'image'
  },
  {
    name: 'no prompt (found only at the end of the form)',
    parts: [{ name: 'model', value: 'gpt-image-1' }, { name: 'image', filename: 'a.png', data: square }],
    status: 400,
    code: 'missing_required_parameter',
    param: 'prompt'
  },
  {
    name: 'no image',
    parts: [{ name: 'model', value: 'gpt-image-1' }, { name: 'prompt', value: 'p' }],
    status: 400,
    code: 'missing_required_parameter',
    param: 'image'
  },
  {
    name: 'a bad n, after the file',
    parts: [{ name: 'model', value: 'gpt-image-1' }, { name: 'image', filename: 'a.png', data: square }, { name: 'prompt', value: 'p' }, { name: 'n', value: '11' }],
    status: 400,
    code: 'integer_above_max_value',
    param: 'n'
  },
  {
    name: 'a duplicated field',
    parts: [{ name: 'model', value: 'gpt-image-1' }, { name: 'n', value: '1' }, { name: 'n', value: '5' }],
    status: 400,
    code: 'invalid_value',
    param: 'n'
  },
  {
    name: 'variations are dall-e-2 only',
    path: 'variations',
    parts: [{ name: 'model', value: 'gpt-image-1' }, { name: 'image', filename: 'a.png', data: square }],
    status: 400,
    code: 'invalid_value',
    param: 'model'
  },
  {
    name: 'a model that is not configured',
    parts: [{ name: 'model', value: 'gpt-9' }, { name: 'prompt', value: 'p' }, { name: 'image', filename: 'a.png', data: square }],
    status: 404,
    code: 'model_not_found',
    param: null
  },
  {
    name: 'a body over the gateway\'s cap',
    limits: { multipartBodyBytes: 1024 * 1024 },
    parts: [{ name: 'model', value: 'gpt-image-1' }, { name: 'prompt', value: 'p' }, { name: 'image', filename: 'a.png', data: makePng({ width: 8, height: 8, padToBytes: 2 * 1024 * 1024 }) }],
    status: 413,
    code: 'request_too_large',
    param: null
  }
]

const NOT_ROUTED = new Set(['variations are dall-e-2 only', 'a model that is not configured'])

for (const refusal of refusals) {
  t.test(`refused mid-upload, and the upstream never sees a whole form: ${refusal.name}`, async (t) => {
    const { upstream, gateway } = await setup(t, refusal.limits === undefined ? {} : { limits: refusal.limits })
    const form = buildMultipart(refusal.parts)
    // The model part goes first and alone; the rest only once the upstream request has begun, so
    // that every refusal after routing has to stop a live upstream request.
    const delimiter = Buffer.from('--test-boundary-7f3a9c')
    // (a part ends only when the next delimiter has arrived, so that line goes too)
    const afterModel = form.body.indexOf(delimiter, delimiter.length) + delimiter.length + 2
    const routed = !NOT_ROUTED.has(refusal.name)
    const answer = await sendRaw(`${gateway.url}/v1/images/${refusal.path ?? 'edits'}`, {
      headers: { 'content-type': form.contentType, authorization: `Bearer ${gateway.key}` },
      body: [
        form.body.subarray(0, afterModel),
        async () => {
          if (routed) await upstream.nthRequest(1)
        },
        ...splitEvery(form.body.subarray(afterModel), 64 * 1024)
      ],
      // chunked, so that the cap is found by counting, not from Content-Length
      chunked: true
    }).catch((err: unknown) => err)
    if (!('status' in (answer as object))) throw answer
    const { status, headers, json: body } = answer as Awaited<ReturnType<typeof sendRaw>>
    t.equal(status, refusal.status)
    t.equal(headers['content-type'], 'application/json')
    const error = body<{ error: { message: string } }>().error
    t.strictSame(body(), { error: { message: error.message, type: 'invalid_request_error', param: refusal.param, code: refusal.code } })
    t.equal(upstream.received.length, routed ? 1 : 0, routed ? 'the upstream request had begun' : 'no upstream request')
    for (const seen of upstream.received) {
      await seen.done
      t.notOk(seen.complete, 'the upstream request was cut off')
      t.notOk(seen.body().includes(Buffer.from('test-boundary-7f3a9c--')), 'it never saw the closing boundary')
    }
  })
}

t.test('a Content-Length over the cap is refused before any byte is read', async (t) => {
  const { upstream, gateway } = await setup(t, { limits: { multipartBodyBytes: 1000 } })
  const form = buildMultipart([{ name: 'model', value: 'gpt-image-1' }, { name: 'image', filename: 'a.png', data: square }])
  const answer = await post(gateway, 'edits', form)
  t.equal(answer.status, 413)
  t.equal(upstream.received.length, 0)
})

t.test('malformed multipart bodies get 400 invalid_multipart', async (t) => {
  const { upstream, gateway } = await setup(t)
  const form = buildMultipart([{ name: 'model', value: 'gpt-image-1' }, { name: 'prompt', value: 'p' }, { name: 'image', filename: 'a.png', data: square }])
  const truncated = { body: form.body.subarray(0, form.body.length - 30), contentType: form.contentType }
  const cut = await post(gateway, 'edits', truncated)
  t.equal(cut.status, 400)
  t.equal(cut.json<{ error: { code: string } }>().error.code, 'invalid_multipart')
  const noBoundary = await post(gateway, 'edits', { body: form.body, contentType: 'multipart/form-data' })
  t.equal(noBoundary.status, 400)
  t.equal(noBoundary.json<{ error: { code: string } }>().error.code, 'invalid_multipart')
  for (const seen of upstream.received) {
    await seen.done
    t.notOk(seen.complete)
  }
})

t.test('the JSON form of edits passes through byte for byte; dall-e-2 cannot use it', async (t) => {
  const { upstream, gateway } = await setup(t)
  const body = Buffer.from(JSON.stringify({ model: 'gpt-image-1.5', prompt: 'p', images: [{ image_url: `data:image/png;base64,${square.toString('base64')}` }, { file_id: 'file-abc' }] }))
  const auth = { authorization: `Bearer ${gateway.key}` }
  const answer = await sendRaw(`${gateway.url}/v1/images/edits`, { headers: { 'content-type': 'application/json', ...auth }, body: [body] })
  t.equal(answer.status, 200)
  t.ok(upstream.received[0]?.body().equals(body))
  const dalle = await sendRaw(`${gateway.url}/v1/images/edits`, {
    headers: { 'content-type': 'application/json', ...auth },
    body: [Buffer.from(JSON.stringify({ model: 'dall-e-2', prompt: 'p', images: [{ file_id: 'f' }] }))]
  })
  t.equal(dalle.status, 400)
  t.equal(dalle.json<{ error: { param: string } }>().error.param, 'model')
})
