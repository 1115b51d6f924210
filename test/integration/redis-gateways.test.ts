import { performance } from 'node:perf_hooks'
import OpenAI from 'openai'
import t, { type Test } from 'tap'
import { json, startFakeUpstream, type FakeUpstream } from '../helpers/fake-upstream.js'
import { startGateway, type Gateway } from '../helpers/gateway.js'
import { startRedis, type TestRedis } from '../helpers/redis.js'
import { sendRaw } from '../helpers/http-client.js'

const OK = { created: 1, data: [{ b64_json: 'QUJD' }] }

interface Pair {
  redis: TestRedis
  upstream: FakeUpstream
  a: Gateway
  b: Gateway
}

/** Two gateway instances on one real Redis, as behind a load balancer. */
async function twoInstances(t: Test): Promise<Pair> {
  const redis = await startRedis()
  const upstream = await startFakeUpstream(json(200, OK))
  const options = {
    providers: { up: upstream.baseUrl },
    redis: { url: redis.url, keyPrefix: redis.prefix },
    // Long enough that only the invalidation channel can explain a revocation seen at once.
    keys: { cacheTtlMs: 60_000 }
  }
  const a = await startGateway(options)
  const b = await startGateway(options)
  t.teardown(async () => {
    await a.close()
    await b.close()
    await upstream.close()
    await redis.close()
  })
  return { redis, upstream, a, b }
}

function generate(gateway: Gateway, key: string, body = { model: 'dall-e-3', prompt: 'x', quality: 'hd', size: '1024x1024' }) {
  return sendRaw(`${gateway.url}/v1/images/generations`, {
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: [Buffer.from(JSON.stringify(body))]
  })
}

t.test('two instances on one Redis: one key, one rpm limit, one budget', async (t) => {
  const { a, b, upstream } = await twoInstances(t)
  t.equal(a.store.kind, 'redis')
  const { key, record: shared } = await a.store.create({ name: 'shared', rpm: 4 })
  const statuses: number[] = []
  for (let i = 0; i < 6; i++) statuses.push((await generate(i % 2 === 0 ? a : b, key)).status)
  t.strictSame(statuses, [200, 200, 200, 200, 429, 429], 'the fifth request is refused whichever instance gets it')
  // No image, concurrency or budget limit: admitted without a Redis round trip, usage still kept.
  let used = 0
  for (let i = 0; i < 50 && used < 4; i++) {
    used = (await a.store.usage(shared.id, 1, Date.now()))[0]?.requests ?? 0
    if (used < 4) await new Promise((r) => setTimeout(r, 20))
  }
  t.equal(used, 4, 'the four served requests are in today\'s usage')

  // dall-e-3 hd 1024x1024 is $0.08 (answers here carry no usage): $0.24 pays for three.
  const { key: budgetKey, record } = await b.store.create({ name: 'budget', budgetMicroUsd: 240_000 })
  const before = upstream.received.length
  const answers = await Promise.all(Array.from({ length: 12 }, (_, i) => generate(i % 2 === 0 ? a : b, budgetKey)))
  const served = answers.filter((r) => r.status === 200).length
  t.equal(served, 3)
  t.ok(answers.filter((r) => r.status !== 200).every((r) => r.json<{ error: { code: string } }>().error.code === 'insufficient_quota'))
  t.equal(upstream.received.length - before, 3, 'refused requests never reached the upstream')
  t.equal(await a.store.spentMicroUsd(record.id), 240_000)
  const [today] = await b.store.usage(record.id, 1, Date.now())
  t.match(today, { requests: 3, images: 3, costMicroUsd: 240_000 })
})

t.test('a key revoked on one instance is refused on the other within a second', async (t) => {
  const { a, b } = await twoInstances(t)
  const { key, record } = await a.store.create({ name: 'soon revoked' })
  t.equal((await generate(b, key)).status, 200, 'b has the key in its cache now')
  await a.store.revoke(record.id)
  const started = performance.now()
  let status = 200
  while (status === 200 && performance.now() - started < 1000) {
    status = (await generate(b, key)).status
    if (status === 200) await new Promise((r) => setTimeout(r, 20))
  }
  t.equal(status, 401)
  t.ok(performance.now() - started < 1000, 'refused within one second')
})

t.test('Redis frozen, then killed, mid-traffic: cached keys keep working, others get 503 fast, all recovers', async (t) => {
  const { redis, a } = await twoInstances(t)
  if (redis.external) {
    t.comment('skipped: REDIS_URL points at a Redis this test cannot stop')
    return
  }
  const { key: cached } = await a.store.create({ name: 'cached' })
  const { key: uncached } = await a.store.create({ name: 'uncached' })
  const { key: budgeted } = await a.store.create({ name: 'budgeted', budgetMicroUsd: 10_000_000 })
  t.equal((await generate(a, cached)).status, 200)
  t.equal((await generate(a, budgeted)).status, 200)
  const client = new OpenAI({ apiKey: cached, baseURL: a.baseURL, maxRetries: 0 })

  for (const fault of ['freeze', 'kill'] as const) {
    if (fault === 'freeze') await redis.freeze()
    else await redis.kill()
    const started = performance.now()
    const refused = await generate(a, uncached)
    t.equal(refused.status, 503, `${fault}: an uncached key gets 503, never 401`)
    t.match(refused.json(), { error: { code: 'service_unavailable' } })
    t.ok(performance.now() - started < 1000, `${fault}: within one second`)
    const served = await client.images.generate({ model: 'gpt-image-1', prompt: 'still here' })
    t.strictSame(served.data, OK.data, `${fault}: a cached key keeps working (limits held locally)`)
    t.equal((await generate(a, budgeted)).status, 503, `${fault}: a budgeted key is refused: spending cannot be checked`)
    if (fault === 'freeze') await redis.thaw()
  }

  await redis.restart()
  // A fresh Redis has lost its data (no persistence in tests); the gateway reconnects by itself.
  const { key: fresh } = await a.store.create({ name: 'after restart' }).catch(async () => {
    await new Promise((r) => setTimeout(r, 1000))
    return a.store.create({ name: 'after restart' })
  })
  let status = 0
  for (let i = 0; i < 50 && status !== 200; i++) {
    status = (await generate(a, fresh)).status
    if (status !== 200) await new Promise((r) => setTimeout(r, 100))
  }
  t.equal(status, 200, 'a new key works once Redis is back')
})
