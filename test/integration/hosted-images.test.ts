import { mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import OpenAI, { toFile } from 'openai'
import t, { type Test } from 'tap'
import { json, startFakeUpstream, type Behaviour, type FakeUpstream } from '../helpers/fake-upstream.js'
import { startGateway, type Gateway, type GatewayOptions } from '../helpers/gateway.js'
import { makePng } from '../helpers/images.js'
import { startRedis } from '../helpers/redis.js'

const SECRET = 'links-are-signed-with-this-32-chars-or-more'
const ADMIN = 'admin-token-0123456789'
const PNG = makePng({ width: 64, height: 48, seed: 7 })
const PNG_2 = makePng({ width: 32, height: 32, seed: 9 })

function tempDirectory(t: Test): string {
  const directory = mkdtempSync(join(tmpdir(), 'igw-images-'))
  t.teardown(() => rmSync(directory, { recursive: true, force: true }))
  return directory
}

/** Image files in the store's directory (temp files included, so that a leftover one shows). */
function filesIn(directory: string): string[] {
  return readdirSync(directory)
}

/** The fake upstream: a GPT-style base64 answer for image calls, and image files under /files/. */
function imageUpstream(answer: () => unknown, files: Record<string, Behaviour> = {}): Behaviour {
  return async (request, response, received) => {
    const file = files[request.url ?? '']
    if (file !== undefined) return file(request, response, received)
    return json(200, answer())(request, response, received)
  }
}

function pngFile(bytes: Buffer): Behaviour {
  return (_request, response) => {
    response.writeHead(200, { 'content-type': 'image/png', 'content-length': bytes.length })
    response.end(bytes)
  }
}

async function hostedStack(
  t: Test,
  behaviour: Behaviour,
  options: { images?: Record<string, unknown>; gateway?: Partial<GatewayOptions> } = {}
): Promise<{ upstream: FakeUpstream; gateway: Gateway; client: OpenAI; directory: string }> {
  const directory = tempDirectory(t)
  const upstream = await startFakeUpstream(behaviour)
  const gateway = await startGateway({
    providers: { up: upstream.baseUrl },
    models: [
      { name: 'gpt-image-1', hostImages: true, deployments: [{ provider: 'up' }] },
      { name: 'gpt-image-1-mini', deployments: [{ provider: 'up' }] },
      { name: 'dall-e-2', hostImages: true, deployments: [{ provider: 'up' }] },
      { name: 'dall-e-3', deployments: [{ provider: 'up' }] }
    ],
    adminToken: ADMIN,
    extra: { images: { signingSecret: SECRET, directory, ...options.images } },
    ...options.gateway
  })
  t.teardown(async () => {
    await gateway.close()
    await upstream.close()
  })
  const client = new OpenAI({ apiKey: gateway.key, baseURL: gateway.baseURL, maxRetries: 0 })
  return { upstream, gateway, client, directory }
}

async function download(url: string): Promise<{ status: number; headers: Headers; bytes: Buffer; text: string }> {
  const answer = await fetch(url)
  const bytes = Buffer.from(await answer.arrayBuffer())
  return { status: answer.status, headers: answer.headers, bytes, text: bytes.toString('utf8') }
}

t.test('a GPT image model answers response_format url with gateway links to the very bytes the upstream sent', async (t) => {
  const { upstream, gateway, client, directory } = await hostedStack(
    t,
    imageUpstream(() => ({ created: 1, data: [{ b64_json: PNG.toString('base64') }, { b64_json: PNG_2.toString('base64') }], usage: { total_tokens: 9 } }))
  )
  const answer = await client.images.generate({ model: 'gpt-image-1', prompt: 'a lighthouse', n: 2, response_format: 'url' })
  t.equal(answer.data?.length, 2)
  t.strictSame(answer.usage, { total_tokens: 9 }, 'the rest of the answer is kept')
  const upstreamBody = JSON.parse(upstream.received[0]?.body().toString('utf8') ?? '{}') as Record<string, unknown>
  t.notOk('response_format' in upstreamBody, 'the base64-only upstream never saw response_format')
  t.equal(upstreamBody.prompt, 'a lighthouse')
  const [first, second] = answer.data ?? []
  t.equal(first?.b64_json, undefined, 'no base64 left in the answer')
  t.match(first?.url, new RegExp(`^${gateway.url}/v1/images/files/[A-Za-z0-9_-]{22}\\.png\\?expires=[0-9]+&sig=[A-Za-z0-9_-]{43}$`))
  const image = await download(first?.url ?? '')
  t.equal(image.status, 200)
  t.ok(image.bytes.equals(PNG), 'byte-identical to the upstream base64')
  t.equal(image.headers.get('content-type'), 'image/png')
  t.equal(image.headers.get('content-length'), String(PNG.length))
  t.match(image.headers.get('cache-control'), /^public, max-age=(3[0-5][0-9]{2}|3600), immutable$/)
  t.ok((await download(second?.url ?? '')).bytes.equals(PNG_2))
  t.equal(filesIn(directory).length, 2, 'one file per image')
  const line = gateway.logs().find((l) => l.msg === 'request' && l.route === '/v1/images/generations')
  t.strictSame(line?.hosted, { stored: 2, storedBytes: PNG.length + PNG_2.length, fetched: 0 })
  const usage = await fetch(`${gateway.url}/admin/images`, { headers: { authorization: `Bearer ${ADMIN}` } })
  t.strictSame(await usage.json(), { enabled: true, store: 'directory', ttlMs: 3_600_000, images: 2, bytes: PNG.length + PNG_2.length })
  const metrics = await (await fetch(`${gateway.url}/metrics`)).text()
  t.match(metrics, /image_gateway_hosted_images_total\{kind="stored"\} 2/)
  t.match(metrics, new RegExp(`image_gateway_hosted_bytes_total ${PNG.length + PNG_2.length}`))
})

t.test('without response_format the answer streams through untouched; a model without hostImages still refuses it', async (t) => {
  const body = { created: 1, data: [{ b64_json: PNG.toString('base64') }] }
  const { gateway, client, directory } = await hostedStack(t, imageUpstream(() => body))
  const answer = await client.images.generate({ model: 'gpt-image-1', prompt: 'x' })
  t.equal(answer.data?.[0]?.b64_json, PNG.toString('base64'))
  const asked = await client.images.generate({ model: 'gpt-image-1', prompt: 'x', response_format: 'b64_json' })
  t.equal(asked.data?.[0]?.b64_json, PNG.toString('base64'), 'b64_json asked of a base64 upstream: as it came')
  t.equal(filesIn(directory).length, 0)
  const refused = await client.images.generate({ model: 'gpt-image-1-mini', prompt: 'x', response_format: 'url' }).catch((e: unknown) => e)
  t.ok(refused instanceof OpenAI.BadRequestError)
  t.match((refused as InstanceType<typeof OpenAI.BadRequestError>).error, { code: 'unknown_parameter', param: 'response_format' })
  const wrong = await fetch(`${gateway.baseURL}/images/generations`, {
    method: 'POST',
    headers: { authorization: `Bearer ${gateway.key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-image-1', prompt: 'x', response_format: 'png' })
  })
  t.equal(wrong.status, 400)
  t.match(await wrong.json(), { error: { code: 'invalid_value', param: 'response_format' } })
})

t.test('a tampered, foreign or unknown link is a 404; an expired one a 410, and its file is deleted', async (t) => {
  const { gateway, client, directory } = await hostedStack(
    t,
    imageUpstream(() => ({ created: 1, data: [{ b64_json: PNG.toString('base64') }] })),
    { images: { ttlMs: 1000 } }
  )
  const answer = await client.images.generate({ model: 'gpt-image-1', prompt: 'x', response_format: 'url' })
  const link = new URL(answer.data?.[0]?.url ?? '')
  const sig = link.searchParams.get('sig') ?? ''
  const expires = link.searchParams.get('expires') ?? ''
  const name = link.pathname.split('/').pop() ?? ''
  const variants = {
    'a flipped signature character': `${link.pathname}?expires=${expires}&sig=${sig.startsWith('A') ? 'B' : 'A'}${sig.slice(1)}`,
    'a later expiry': `${link.pathname}?expires=${Number(expires) + 3600}&sig=${sig}`,
    'another name': `${link.pathname.replace(name, `${'x'.repeat(22)}.png`)}?expires=${expires}&sig=${sig}`,
    'another extension': `${link.pathname.replace('.png', '.webp')}?expires=${expires}&sig=${sig}`,
    'no signature': `${link.pathname}?expires=${expires}`,
    'a path trick': `/v1/images/files/..%2F..%2Fetc%2Fpasswd?expires=${expires}&sig=${sig}`
  }
  for (const [what, path] of Object.entries(variants)) {
    const answer = await download(`${gateway.url}${path}`)
    t.equal(answer.status, 404, what)
    t.match(JSON.parse(answer.text), { error: { code: 'image_link_invalid', type: 'invalid_request_error' } }, what)
  }
  t.equal((await download(link.href)).status, 200, 'the link itself works')
  await sleep(Number(expires) * 1000 - Date.now() + 50)
  const expired = await download(link.href)
  t.equal(expired.status, 410)
  t.match(JSON.parse(expired.text), { error: { code: 'image_link_expired' } })
  const usage = await fetch(`${gateway.url}/admin/images`, { headers: { authorization: `Bearer ${ADMIN}` } })
  t.match(await usage.json(), { images: 0, bytes: 0 })
  t.strictSame(filesIn(directory), [], 'the expired image is gone from the directory')
})

t.test('multipart edits: response_format is taken out of the form wherever it comes, and the answer is hosted', async (t) => {
  const { upstream, client } = await hostedStack(t, imageUpstream(() => ({ created: 1, data: [{ b64_json: PNG.toString('base64') }] })))
  const image = makePng({ width: 256, height: 256, seed: 3 })
  const answer = await client.images.edit({
    model: 'gpt-image-1',
    image: await toFile(image, 'in.png', { type: 'image/png' }),
    prompt: 'add a boat',
    response_format: 'url'
  })
  const sent = upstream.received[0]?.body().toString('latin1') ?? ''
  t.notMatch(sent, /name="response_format"/, 'the upstream form has no response_format part')
  t.match(sent, /name="prompt"\r\n\r\nadd a boat\r\n/)
  t.ok(upstream.received[0]?.body().includes(image), 'the image went through byte for byte')
  t.ok((await download(answer.data?.[0]?.url ?? '')).bytes.equals(PNG))
})

t.test('an upstream that answers with URLs: b64_json is inlined, and with rehostUrls a URL is re-hosted', async (t) => {
  let origin = ''
  const { upstream, gateway, client, directory } = await hostedStack(
    t,
    imageUpstream(() => ({ created: 1, data: [{ url: `${origin}/files/a.png`, revised_prompt: 'p' }] }), { '/files/a.png': pngFile(PNG) }),
    { gateway: { providerExtra: { rehostUrls: true } } }
  )
  origin = upstream.url
  const inlined = await client.images.generate({ model: 'dall-e-2', prompt: 'x', response_format: 'b64_json' })
  t.equal(inlined.data?.[0]?.b64_json, PNG.toString('base64'), 'the upstream URL was fetched and inlined')
  t.equal(inlined.data?.[0]?.url, undefined)
  t.equal(inlined.data?.[0]?.revised_prompt, 'p')
  const upstreamBody = JSON.parse(upstream.received[0]?.body().toString('utf8') ?? '{}') as Record<string, unknown>
  t.equal(upstreamBody.response_format, 'b64_json', 'a DALL-E upstream is still asked for what the client wants')
  const rehosted = await client.images.generate({ model: 'dall-e-3', prompt: 'x' })
  const url = rehosted.data?.[0]?.url ?? ''
  t.ok(url.startsWith(`${gateway.url}/v1/images/files/`), 'the client never sees the upstream host')
  t.notOk(JSON.stringify(rehosted).includes(upstream.url))
  t.ok((await download(url)).bytes.equals(PNG))
  t.equal(upstream.received.filter((r) => r.url === '/files/a.png').length, 2, 'each image fetched once')
  t.equal(filesIn(directory).length, 1)
  const line = gateway.logs().filter((l) => l.msg === 'request' && l.route === '/v1/images/generations').pop()
  t.strictSame(line?.hosted, { stored: 1, storedBytes: PNG.length, fetched: 1 })
})

t.test('an upstream image over the cap, a redirect or a dead URL is refused cleanly, and nothing is kept', async (t) => {
  let origin = ''
  let path = '/files/big.png'
  const big = makePng({ width: 64, height: 64, padToBytes: 300_000 })
  const { upstream, gateway, client, directory } = await hostedStack(
    t,
    imageUpstream(() => ({ created: 1, data: [{ url: `${origin}${path}` }] }), {
      '/files/big.png': pngFile(big),
      '/files/redirect.png': (_request, response) => {
        response.writeHead(302, { location: `${origin}/files/big.png` })
        response.end()
      },
      '/files/chunked.png': (_request, response) => {
        // No content-length: the cap is found as the bytes arrive.
        response.writeHead(200, { 'content-type': 'image/png' })
        response.write(big.subarray(0, 150_000))
        setTimeout(() => response.end(big.subarray(150_000)), 20)
      },
      '/files/missing.png': (_request, response) => {
        response.writeHead(404)
        response.end()
      }
    }),
    { images: { fetchMaxBytes: 100_000 }, gateway: { providerExtra: { rehostUrls: true } } }
  )
  origin = upstream.url
  const cases = [
    ['/files/big.png', /300000 bytes, over the 100000 allowed/],
    ['/files/chunked.png', /over the 100000 bytes allowed/],
    ['/files/redirect.png', /answered HTTP 302/],
    ['/files/missing.png', /answered HTTP 404/]
  ] as const
  for (const [where, message] of cases) {
    path = where
    const failed = await client.images.generate({ model: 'dall-e-3', prompt: 'x' }).catch((e: unknown) => e)
    t.ok(failed instanceof OpenAI.APIError, where)
    const error = failed as InstanceType<typeof OpenAI.APIError>
    t.equal(error.status, 502, where)
    t.equal(error.headers?.get('x-should-retry'), 'false', `${where}: the upstream made it; not to be retried`)
    t.match(error.error, { code: 'image_hosting_failed', type: 'server_error' }, where)
    t.match(error.message, message, where)
    t.notOk(error.message.includes('/files/'), `${where}: the upstream path is not echoed`)
  }
  t.equal(upstream.received.filter((r) => r.url === '/files/big.png').length, 1, 'the redirect was not followed')
  t.strictSame(filesIn(directory), [], 'no image and no temp file kept')
  const lines = gateway.logs().filter((l) => l.msg === 'request' && l.route === '/v1/images/generations')
  t.same(
    lines.map((l) => l.status),
    [502, 502, 502, 502]
  )
})

t.test('an answer over images.maxAnswerBytes is refused, not read on', async (t) => {
  const { client, directory } = await hostedStack(
    t,
    imageUpstream(() => ({ created: 1, data: [{ b64_json: makePng({ width: 64, height: 64, padToBytes: 200_000 }).toString('base64') }] })),
    { images: { maxAnswerBytes: 100_000 } }
  )
  const failed = await client.images.generate({ model: 'gpt-image-1', prompt: 'x', response_format: 'url' }).catch((e: unknown) => e)
  t.ok(failed instanceof OpenAI.APIError)
  t.match((failed as InstanceType<typeof OpenAI.APIError>).error, { code: 'image_hosting_failed' })
  t.match((failed as InstanceType<typeof OpenAI.APIError>).message, /over the 100000 bytes/)
  t.strictSame(filesIn(directory), [])
  const streamed = await client.images.generate({ model: 'gpt-image-1', prompt: 'x', response_format: 'b64_json' })
  t.equal(streamed.data?.length, 1, 'b64_json of a base64 upstream needs no change: streamed, not capped')
})

t.test('an upstream URL that is not an image is neither inlined nor hosted; one failure stops the other images', async (t) => {
  let origin = ''
  let paths = ['/files/secret.json']
  let slowDone = false
  const { upstream, client, directory } = await hostedStack(
    t,
    imageUpstream(() => ({ created: 1, data: paths.map((p) => ({ url: `${origin}${p}` })) }), {
      '/files/secret.json': (_request, response) => {
        response.writeHead(200, { 'content-type': 'application/json' })
        response.end('{"internal":"do not leak"}')
      },
      '/files/missing.png': (_request, response) => {
        response.writeHead(404)
        response.end()
      },
      '/files/slow.png': (_request, response) => {
        response.writeHead(200, { 'content-type': 'image/png' })
        response.write(PNG.subarray(0, 100))
        setTimeout(() => {
          slowDone = true
          response.end(PNG.subarray(100))
        }, 500)
      }
    }),
    { gateway: { providerExtra: { rehostUrls: true } } }
  )
  origin = upstream.url
  const inlined = await client.images.generate({ model: 'dall-e-2', prompt: 'x', response_format: 'b64_json' }).catch((e: unknown) => e)
  t.ok(inlined instanceof OpenAI.APIError)
  t.match((inlined as InstanceType<typeof OpenAI.APIError>).error, { code: 'image_hosting_failed', message: /not a PNG, JPEG, WebP or GIF/ })
  t.notOk(JSON.stringify((inlined as InstanceType<typeof OpenAI.APIError>).error).includes('do not leak'))
  paths = ['/files/missing.png', '/files/slow.png']
  const failed = await client.images.generate({ model: 'dall-e-3', prompt: 'x' }).catch((e: unknown) => e)
  t.ok(failed instanceof OpenAI.APIError)
  await sleep(700)
  t.notOk(slowDone && filesIn(directory).length > 0, 'the slow image was not stored after the answer failed')
  t.strictSame(filesIn(directory), [])
})

t.test('two gateways on one Redis serve each other\'s links, and expired images are gone from Redis', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.close())
  const upstream = await startFakeUpstream(imageUpstream(() => ({ created: 1, data: [{ b64_json: PNG.toString('base64') }] })))
  t.teardown(() => upstream.close())
  const start = (): Promise<Gateway> =>
    startGateway({
      providers: { up: upstream.baseUrl },
      models: [{ name: 'gpt-image-1', hostImages: true, deployments: [{ provider: 'up' }] }],
      redis: { url: redis.url, keyPrefix: redis.prefix },
      extra: { images: { store: 'redis', signingSecret: SECRET, ttlMs: 1500, publicBaseUrl: 'https://images.example.test' } }
    })
  const a = await start()
  t.teardown(() => a.close())
  const b = await start()
  t.teardown(() => b.close())
  const client = new OpenAI({ apiKey: a.key, baseURL: a.baseURL, maxRetries: 0 })
  const answer = await client.images.generate({ model: 'gpt-image-1', prompt: 'x', response_format: 'url' })
  const link = new URL(answer.data?.[0]?.url ?? '')
  t.equal(link.origin, 'https://images.example.test', 'links are made under publicBaseUrl')
  const local = `${link.pathname}${link.search}`
  t.ok((await download(`${b.url}${local}`)).bytes.equals(PNG), 'the other instance serves it')
  t.ok((await download(`${a.url}${local}`)).bytes.equals(PNG))
  const direct = new Redis(redis.url)
  t.teardown(() => direct.quit())
  const name = link.pathname.split('/').pop() ?? ''
  t.equal(await direct.exists(`${redis.prefix}image:${name}`), 1)
  await sleep(Number(link.searchParams.get('expires')) * 1000 - Date.now() + 50)
  t.equal((await download(`${b.url}${local}`)).status, 410)
  t.equal(await direct.exists(`${redis.prefix}image:${name}`), 0, 'Redis deleted the image')
})

t.test('streams are left as they are: response_format is withheld and the events pass unchanged', async (t) => {
  const events = 'event: image_generation.completed\ndata: {"type":"image_generation.completed","b64_json":"AAAA"}\n\n'
  const { upstream, client } = await hostedStack(t, (_request, response, received) => {
    void received.done.then(() => {
      response.writeHead(200, { 'content-type': 'text/event-stream' })
      response.end(events)
    })
  })
  const stream = await client.images.generate({ model: 'gpt-image-1', prompt: 'x', stream: true, response_format: 'url' })
  const seen: unknown[] = []
  for await (const event of stream) seen.push(event)
  t.match(seen, [{ type: 'image_generation.completed', b64_json: 'AAAA' }])
  const upstreamBody = JSON.parse(upstream.received[0]?.body().toString('utf8') ?? '{}') as Record<string, unknown>
  t.notOk('response_format' in upstreamBody)
})

t.test('config: the redis store needs Redis and a signing secret; a short secret is refused', async (t) => {
  const upstream = await startFakeUpstream()
  t.teardown(() => upstream.close())
  const models = [{ name: 'gpt-image-1', hostImages: true, deployments: [{ provider: 'up' }] }]
  await t.rejects(startGateway({ providers: { up: upstream.baseUrl }, models, extra: { images: { store: 'redis' } } }), /images\.store.*redis section[\s\S]*signingSecret/)
  await t.rejects(startGateway({ providers: { up: upstream.baseUrl }, models, extra: { images: { signingSecret: 'short' } } }), /at least 32 characters/)
})
