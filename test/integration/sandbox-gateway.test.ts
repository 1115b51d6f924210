import t from 'tap'
import OpenAI, { toFile } from 'openai'
import sharp, { type Metadata } from 'sharp'
import { startGateway } from '../helpers/gateway.js'
import { makePng } from '../helpers/images.js'

// The sandbox behind the gateway, as a first run has it: every request goes through the relay
// (auth, validation, limits, metrics) to the sandbox's own port, and back.
const gateway = await startGateway({
  providers: {},
  extra: { providers: [{ id: 'sandbox', type: 'sandbox' }] },
  models: ['dall-e-2', 'dall-e-3', 'gpt-image-1'].map((name) => ({ name, deployments: [{ provider: 'sandbox' }] }))
})
t.teardown(() => gateway.close())
const client = new OpenAI({ baseURL: gateway.baseURL, apiKey: gateway.key, maxRetries: 0 })

async function size(b64: string | undefined): Promise<Metadata> {
  return sharp(Buffer.from(b64 ?? '', 'base64')).metadata()
}

t.test('gpt-image-1: n images of the asked size and format, with usage', async (t) => {
  const result = await client.images.generate({ model: 'gpt-image-1', prompt: 'a red kite', n: 2, size: '1536x1024', output_format: 'jpeg' })
  t.equal(result.data?.length, 2)
  for (const image of result.data ?? []) t.match(await size(image.b64_json), { format: 'jpeg', width: 1536, height: 1024 })
  t.match(result, { output_format: 'jpeg', size: '1536x1024', quality: 'high', background: 'opaque' })
  t.ok((result.usage?.output_tokens ?? 0) > 0)
  const line = gateway.logs().findLast((l) => l.msg === 'request')
  t.match(line, { status: 200, deployment: 'sandbox/gpt-image-1', images: 2 }, 'the usage tap read the answer')
})

t.test('the same prompt gives the same image; another prompt, another', async (t) => {
  const one = await client.images.generate({ model: 'gpt-image-1', prompt: 'a blue door', size: '1024x1024' })
  const again = await client.images.generate({ model: 'gpt-image-1', prompt: 'a blue door', size: '1024x1024' })
  const other = await client.images.generate({ model: 'gpt-image-1', prompt: 'a green door', size: '1024x1024' })
  t.equal(one.data?.[0]?.b64_json, again.data?.[0]?.b64_json)
  t.not(one.data?.[0]?.b64_json, other.data?.[0]?.b64_json)
})

t.test('dall-e-2 answers with a URL to a PNG; dall-e-3 with a revised prompt', async (t) => {
  const small = await client.images.generate({ model: 'dall-e-2', prompt: 'a cat', size: '256x256' })
  const url = small.data?.[0]?.url ?? ''
  const download = await fetch(url)
  t.equal(download.headers.get('content-type'), 'image/png')
  t.match(await sharp(Buffer.from(await download.arrayBuffer())).metadata(), { width: 256, height: 256 })
  const wide = await client.images.generate({ model: 'dall-e-3', prompt: 'a cat', size: '1792x1024', response_format: 'b64_json' })
  t.match(await size(wide.data?.[0]?.b64_json), { width: 1792, height: 1024 })
  t.type(wide.data?.[0]?.revised_prompt, 'string')
})

t.test('a stream with partial images, relayed event by event', async (t) => {
  const stream = await client.images.generate({ model: 'gpt-image-1', prompt: 'a stream', stream: true, partial_images: 2, size: '1024x1024' })
  const types: string[] = []
  for await (const event of stream) {
    types.push(event.type)
    if (event.type === 'image_generation.completed') t.match(await size(event.b64_json), { width: 1024, height: 1024 })
  }
  t.same(types, ['image_generation.partial_image', 'image_generation.partial_image', 'image_generation.completed'])
})

t.test('an edit with a mask streams through the relay; a variation of a dall-e-2 square', async (t) => {
  const image = makePng({ width: 256, height: 256, seed: 3 })
  const mask = await sharp({ create: { width: 256, height: 256, channels: 4, background: { r: 0, g: 0, b: 0, alpha: 0 } } }).png().toBuffer()
  const edited = await client.images.edit({
    model: 'gpt-image-1',
    image: await toFile(image, 'in.png', { type: 'image/png' }),
    mask: await toFile(mask, 'mask.png', { type: 'image/png' }),
    prompt: 'paint it',
    size: '1024x1024'
  })
  t.match(await size(edited.data?.[0]?.b64_json), { format: 'png', width: 1024, height: 1024 })
  const varied = await client.images.createVariation({
    model: 'dall-e-2',
    image: await toFile(image, 'in.png', { type: 'image/png' }),
    n: 2,
    size: '512x512',
    response_format: 'b64_json'
  })
  t.equal(varied.data?.length, 2)
  t.match(await size(varied.data?.[1]?.b64_json), { width: 512, height: 512 })
})
