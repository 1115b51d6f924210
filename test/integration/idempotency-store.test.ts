import t from 'tap'
import { RedisIdempotencyStore } from '../../src/idempotency/redis-store.js'
import { StoreUnavailableError } from '../../src/keys/types.js'
import { createRedis } from '../../src/redis/client.js'
import { idempotencyStoreSuite } from '../helpers/idempotency-store-suite.js'
import { startRedis } from '../helpers/redis.js'

const server = await startRedis()
t.teardown(() => server.close())

let stores = 0

idempotencyStoreSuite(t, async (options) => {
  stores += 1
  const redis = createRedis(server.url)
  const store = new RedisIdempotencyStore(redis, { prefix: `${server.prefix}${stores}:`, ...options })
  return { store, cleanup: async () => void redis.disconnect() }
})

t.test('one Redis key per scope, named by its digest and prefix, with a ttl', async (t) => {
  const redis = createRedis(server.url)
  t.teardown(() => redis.disconnect())
  const prefix = `${server.prefix}naming:`
  const store = new RedisIdempotencyStore(redis, { prefix, ttlMs: 60_000 })
  const scope = 'f'.repeat(64)
  await store.begin(scope, 'fp', 'req_1')
  t.same(await redis.keys(`${prefix}*`), [`${prefix}idem:${scope}`])
  const ttl = await redis.pttl(`${prefix}idem:${scope}`)
  t.ok(ttl > 59_000 && ttl <= 60_000, `ttl ${ttl}`)
})

t.test('a Redis that is down is an error, never an empty entry', async (t) => {
  const redis = createRedis('redis://127.0.0.1:1')
  t.teardown(() => redis.disconnect())
  const store = new RedisIdempotencyStore(redis, { prefix: 'igwtest:down:', ttlMs: 60_000 })
  await t.rejects(store.begin('scope', 'fp', 'req_1'), StoreUnavailableError)
})
