import OpenAI, { toFile } from 'openai'
import sharp from 'sharp'
import t, { type Test } from 'tap'
import { ImageProbe, type ImageProbeResult } from '../../src/multipart/image-probe.js'
import { startSandbox, type SandboxOptions } from '../../src/sandbox/server.js'
import { makePng } from '../helpers/images.js'

/*
 * The sandbox called the way applications call OpenAI: through the openai SDK, over HTTP. Sizes
 * and formats are read back from the image bytes, never trusted from the answer's fields.
 */

async function sandboxClient(t: Test, options: SandboxOptions = {}): Promise<{ client: OpenAI; origin: string }> {
  const sandbox = await startSandbox(options)
  t.teardown(() => sandbox.close())
  return { client: new OpenAI({ baseURL: `${sandbox.origin}/v1`, apiKey: 'x', maxRetries: 0 }), origin: sandbox.origin }
}

function probe(bytes: Buffer): ImageProbeResult {
  const reader = new ImageProbe()
  reader.push(bytes)
  return reader.result()
}

function b64Image(item: { b64_json?: string | undefined } | undefined): Buffer {
  if (item?.b64_json === undefined) throw new Error('no b64_json in the answer')
  return Buffer.from(item.b64_json, 'base64')
}

/** A square PNG with a transparent square hole [from, to) in both axes. */
async function maskWithHole(size: number, from: number, to: number): Promise<Buffer> {
  const hole = `<svg xmlns="http://www.w3.org/2000/svg" width="${size}" height="${size}"><rect x="${from}" y="${from}" width="${to - from}" height="${to - from}" fill="#fff"/></svg>`
  return sharp({ create: { width: size, height: size, channels: 4, background: { r: 0, g: 0, b: 0, alpha: 1 } } })
    .composite([{ input: Buffer.from(hole), blend: 'dest-out' }])
    .png()
    .toBuffer()
}

async function opaqueImage(size: number): Promise<Buffer> {
  return sharp({ create: { width: size, height: size, channels: 3, background: { r: 20, g: 90, b: 200 } } }).png().toBuffer()
}

t.test('dall-e-2: a URL answer whose URL serves the PNG of the requested size', async (t) => {
  const { client, origin } = await sandboxClient(t)
  const answer = await client.images.generate({ model: 'dall-e-2', prompt: 'a sea otter', size: '512x512', n: 2 })
  t.equal(answer.data?.length, 2)
  t.notOk('usage' in answer, 'no usage for DALL·E')
  for (const item of answer.data ?? []) {
    t.match(item.url, new RegExp(`^${origin}/v1/images/files/[0-9a-f]{32}\\.png$`))
    t.notOk('b64_json' in item)
    const response = await fetch(item.url ?? '')
    t.equal(response.status, 200)
    t.equal(response.headers.get('content-type'), 'image/png')
    const bytes = Buffer.from(await response.arrayBuffer())
    t.equal(response.headers.get('content-length'), String(bytes.length))
    t.match(probe(bytes), { format: 'png', width: 512, height: 512 })
  }
  t.not(answer.data?.[0]?.url, answer.data?.[1]?.url)
})

t.test('dall-e-3: revised_prompt on every item, b64_json on request, its wide size', async (t) => {
  const { client } = await sandboxClient(t)
  const answer = await client.images.generate({
    model: 'dall-e-3',
    prompt: 'a lighthouse in a storm',
    size: '1792x1024',
    quality: 'hd',
    response_format: 'b64_json'
  })
  const item = answer.data?.[0]
  t.match(item?.revised_prompt, /lighthouse in a storm/)
  t.match(probe(b64Image(item)), { format: 'png', width: 1792, height: 1024 })
})

t.test('gpt-image-1: b64_json, resolved metadata and usage; n=3 images of the requested size', async (t) => {
  const { client } = await sandboxClient(t)
  const answer = await client.images.generate({ model: 'gpt-image-1', prompt: 'a red bicycle', n: 3, size: '1536x1024', quality: 'low' })
  t.match(answer, { background: 'opaque', output_format: 'png', size: '1536x1024', quality: 'low' })
  t.same(answer.usage, {
    total_tokens: 4 + 3 * 400,
    input_tokens: 4,
    output_tokens: 3 * 400,
    input_tokens_details: { text_tokens: 4, image_tokens: 0 },
    output_tokens_details: { image_tokens: 3 * 400, text_tokens: 0 }
  })
  const images = (answer.data ?? []).map(b64Image)
  t.equal(images.length, 3)
  for (const image of images) t.match(probe(image), { format: 'png', width: 1536, height: 1024 })
  t.notOk(images[0]?.equals(images[1] as Buffer), 'the images of one request differ')

  const again = await client.images.generate({ model: 'gpt-image-1', prompt: 'a red bicycle', size: '1536x1024', quality: 'low' })
  t.ok(b64Image(again.data?.[0]).equals(images[0] as Buffer), 'the same prompt gives the same first image')
})

t.test('gpt-image-1: auto and absent size and quality resolve to 1024x1024 and high', async (t) => {
  const { client } = await sandboxClient(t)
  const answer = await client.images.generate({ model: 'gpt-image-1', prompt: 'x', size: 'auto', quality: 'auto' })
  t.match(answer, { size: '1024x1024', quality: 'high', background: 'opaque' })
  t.match(probe(b64Image(answer.data?.[0])), { width: 1024, height: 1024 })
})

t.test('gpt-image-1: jpeg and webp output, transparent background with alpha', async (t) => {
  const { client } = await sandboxClient(t)
  const jpeg = await client.images.generate({ model: 'gpt-image-1', prompt: 'a fox', output_format: 'jpeg', output_compression: 50 })
  t.equal(jpeg.output_format, 'jpeg')
  t.match(probe(b64Image(jpeg.data?.[0])), { format: 'jpeg', width: 1024, height: 1024 })

  const webp = await client.images.generate({
    model: 'gpt-image-1',
    prompt: 'a fox',
    size: '1024x1536',
    output_format: 'webp',
    background: 'transparent'
  })
  t.match(webp, { output_format: 'webp', background: 'transparent', size: '1024x1536' })
  const webpBytes = b64Image(webp.data?.[0])
  t.match(await sharp(webpBytes).metadata(), { format: 'webp', width: 1024, height: 1536, hasAlpha: true })

  const png = await client.images.generate({ model: 'gpt-image-1.5', prompt: 'a fox', background: 'transparent' })
  const pngBytes = b64Image(png.data?.[0])
  t.match(probe(pngBytes), { format: 'png', hasAlpha: true })
  t.equal((await sharp(pngBytes).stats()).channels[3]?.min, 0, 'some pixels are fully transparent')
})

t.test('gpt-image-2: any WxH size as given', async (t) => {
  const { client } = await sandboxClient(t)
  const answer = await client.images.generate({ model: 'gpt-image-2', prompt: 'a panorama', size: '2048x1152', quality: 'medium' })
  t.equal(answer.size, '2048x1152')
  t.match(probe(b64Image(answer.data?.[0])), { width: 2048, height: 1152 })
  t.equal(answer.usage?.output_tokens, 2 * 1756 * 1.125, 'tokens scale with the area for sizes the table lacks')
})

t.test('streaming generations: partial images, then the completed image, through the SDK stream', async (t) => {
  const { client } = await sandboxClient(t)
  const stream = await client.images.generate({
    model: 'gpt-image-1',
    prompt: 'a hot air balloon',
    stream: true,
    partial_images: 2,
    size: '1024x1536',
    quality: 'medium'
  })
  const events = []
  for await (const event of stream) events.push(event)
  t.same(
    events.map((e) => e.type),
    ['image_generation.partial_image', 'image_generation.partial_image', 'image_generation.completed']
  )
  const [first, second, completed] = events
  t.match(first, { partial_image_index: 0, size: '1024x1536', quality: 'medium', background: 'opaque', output_format: 'png' })
  t.match(second, { partial_image_index: 1 })
  t.ok(Number.isInteger(completed?.created_at))
  t.match(completed, {
    usage: { input_tokens: 5, output_tokens: 1584 + 2 * 100, input_tokens_details: { text_tokens: 5, image_tokens: 0 } }
  })
  for (const event of events) t.match(probe(Buffer.from(event.b64_json, 'base64')), { format: 'png', width: 1024, height: 1536 })
  const pixels = await Promise.all(events.map((e) => sharp(Buffer.from(e.b64_json, 'base64')).raw().toBuffer()))
  const final = pixels[2] as Buffer
  const distance = (partial: Buffer): number => partial.reduce((sum, value, i) => sum + Math.abs(value - (final[i] as number)), 0) / partial.length
  const [roughest, finer] = [distance(pixels[0] as Buffer), distance(pixels[1] as Buffer)]
  t.ok(roughest > finer && finer > 0, `partials are rougher versions of the final image, roughest first (${roughest.toFixed(2)} > ${finer.toFixed(2)})`)
})

t.test('streaming with n=2 and no partials: one completed event per image', async (t) => {
  const { client } = await sandboxClient(t)
  const stream = await client.images.generate({ model: 'gpt-image-1-mini', prompt: 'two kites', stream: true, n: 2, output_format: 'webp' })
  const events = []
  for await (const event of stream) events.push(event)
  t.same(events.map((e) => e.type), ['image_generation.completed', 'image_generation.completed'])
  t.equal(events[0]?.output_format, 'webp')
  t.notSame(events[0]?.b64_json, events[1]?.b64_json)
})

t.test('edits with a mask (multipart, via toFile): changed inside the transparent area only', async (t) => {
  const { client } = await sandboxClient(t)
  const image = await opaqueImage(512)
  const mask = await maskWithHole(512, 128, 384)
  const answer = await client.images.edit({
    model: 'gpt-image-1',
    prompt: 'a yellow sun',
    image: await toFile(image, 'image.png', { type: 'image/png' }),
    mask: await toFile(mask, 'mask.png', { type: 'image/png' }),
    quality: 'low'
  })
  t.match(answer, { size: '512x512', quality: 'low', usage: { input_tokens_details: { image_tokens: 581 } } })
  const { data, info } = await sharp(b64Image(answer.data?.[0])).removeAlpha().raw().toBuffer({ resolveWithObject: true })
  t.match(info, { width: 512, height: 512 })
  const at = (x: number, y: number): number[] => [...data.subarray((y * 512 + x) * 3, (y * 512 + x) * 3 + 3)]
  for (const [x, y] of [[5, 5], [500, 20], [64, 450], [450, 450]] as const) t.same(at(x, y), [20, 90, 200], `(${x}, ${y}) outside the mask is kept`)
  const changed = [[200, 200], [256, 256], [300, 150]].filter(([x, y]) => at(x as number, y as number).join() !== '20,90,200')
  t.equal(changed.length, 3, 'inside the mask the image changed')
})

t.test('edits: several images (image[]), a requested size, streamed as image_edit events', async (t) => {
  const { client } = await sandboxClient(t)
  const stream = await client.images.edit({
    model: 'gpt-image-1.5',
    prompt: 'merge them',
    image: [
      await toFile(makePng({ width: 300, height: 200, alpha: true, seed: 1 }), 'a.png', { type: 'image/png' }),
      await toFile(await opaqueImage(64), 'b.png', { type: 'image/png' })
    ],
    size: '1536x1024',
    stream: true,
    partial_images: 1
  })
  const events = []
  for await (const event of stream) events.push(event)
  t.same(events.map((e) => e.type), ['image_edit.partial_image', 'image_edit.completed'])
  t.match(events[1], { size: '1536x1024', usage: { input_tokens_details: { image_tokens: 2 * 581 } } })
  t.match(probe(Buffer.from(events[1]?.b64_json ?? '', 'base64')), { width: 1536, height: 1024 })
})

t.test('dall-e-2 edits and variations: url by default, b64_json on request, of the requested size', async (t) => {
  const { client } = await sandboxClient(t)
  const source = makePng({ width: 256, height: 256, alpha: true, seed: 7 })
  const edit = await client.images.edit({
    model: 'dall-e-2',
    prompt: 'stars',
    image: await toFile(source, 'in.png', { type: 'image/png' }),
    size: '512x512'
  })
  const url = edit.data?.[0]?.url ?? ''
  t.match(probe(Buffer.from(await (await fetch(url)).arrayBuffer())), { format: 'png', width: 512, height: 512 })

  const variations = await client.images.createVariation({
    image: await toFile(source, 'in.png', { type: 'image/png' }),
    n: 2,
    size: '256x256',
    response_format: 'b64_json'
  })
  const images = (variations.data ?? []).map(b64Image)
  t.equal(images.length, 2)
  for (const image of images) t.match(probe(image), { format: 'png', width: 256, height: 256 })
  t.notOk(images[0]?.equals(images[1] as Buffer), 'variations differ from each other')
  const defaults = await client.images.createVariation({ image: await toFile(source, 'in.png', { type: 'image/png' }), model: 'dall-e-2' })
  t.match(probe(Buffer.from(await (await fetch(defaults.data?.[0]?.url ?? '')).arrayBuffer())), { width: 1024, height: 1024 })
})

t.test('errors reach the SDK as APIErrors with OpenAI\'s status, type, code and param', async (t) => {
  const { client } = await sandboxClient(t)
  const cases: { name: string; call: () => Promise<unknown>; status: number; code: string; param: string | null }[] = [
    {
      name: 'a size dall-e-3 does not have',
      call: () => client.images.generate({ model: 'dall-e-3', prompt: 'x', size: '512x512' }),
      status: 400,
      code: 'invalid_value',
      param: 'size'
    },
    {
      name: 'response_format with a GPT image model',
      call: () => client.images.generate({ model: 'gpt-image-1', prompt: 'x', response_format: 'url' }),
      status: 400,
      code: 'unknown_parameter',
      param: 'response_format'
    },
    {
      name: 'dall-e-3 with n=2',
      call: () => client.images.generate({ model: 'dall-e-3', prompt: 'x', n: 2 }),
      status: 400,
      code: 'integer_above_max_value',
      param: 'n'
    },
    {
      name: 'an edit without an image',
      call: () => client.images.edit({ model: 'gpt-image-1', prompt: 'x', image: [] }),
      status: 400,
      code: 'missing_required_parameter',
      param: 'image'
    },
    {
      name: 'an image that is not an image',
      call: async () => client.images.edit({ model: 'gpt-image-1', prompt: 'x', image: await toFile(Buffer.from('hello'), 'a.png', { type: 'image/png' }) }),
      status: 400,
      code: 'invalid_image_format',
      param: 'image'
    },
    {
      name: 'a PNG cut short',
      call: async () =>
        client.images.edit({
          model: 'gpt-image-1',
          prompt: 'x',
          image: await toFile(makePng({ width: 64, height: 64 }).subarray(0, 50), 'a.png', { type: 'image/png' })
        }),
      status: 400,
      code: 'invalid_image',
      param: 'image'
    },
    {
      name: 'a mask the size of another image',
      call: async () =>
        client.images.edit({
          model: 'gpt-image-1',
          prompt: 'x',
          image: await toFile(await opaqueImage(128), 'a.png', { type: 'image/png' }),
          mask: await toFile(await maskWithHole(64, 0, 32), 'm.png', { type: 'image/png' })
        }),
      status: 400,
      code: 'invalid_image_dimensions',
      param: 'mask'
    },
    {
      name: 'variations with a GPT image model',
      call: async () => client.images.createVariation({ model: 'gpt-image-1', image: await toFile(await opaqueImage(64), 'a.png', { type: 'image/png' }) }),
      status: 400,
      code: 'invalid_value',
      param: 'model'
    },
    {
      name: 'streaming with dall-e-2',
      call: () => client.images.generate({ model: 'dall-e-2', prompt: 'x', stream: true }),
      status: 400,
      code: 'invalid_value',
      param: 'stream'
    }
  ]
  for (const { name, call, status, code, param } of cases) {
    const err = await call().then(
      () => null,
      (e: unknown) => e
    )
    t.ok(err instanceof OpenAI.APIError, `${name}: an APIError`)
    if (!(err instanceof OpenAI.APIError)) continue
    t.match(err, { status, code, param, type: 'invalid_request_error' }, name)
    t.match(err.error, { message: String, type: 'invalid_request_error', code, param }, `${name}: the whole envelope`)
    t.match(err.requestID, /^req_[0-9a-f]{32}$/, `${name}: x-request-id`)
  }
})
