import t from 'tap'
import { Authenticator } from '../../src/keys/authenticator.js'
import { MemoryKeyStore } from '../../src/keys/memory-store.js'

const options = { ttlMs: 5_000, negativeTtlMs: 2_000, staleMs: 60_000, maxEntries: 3 }
const T0 = Date.parse('2026-11-22T00:00:00Z')

t.test('found keys are cached for ttlMs; unknown ones for negativeTtlMs', async (t) => {
  const store = new MemoryKeyStore()
  const auth = new Authenticator(store, options)
  const { key, record } = await store.create({ name: 'a' })
  t.equal((await auth.authenticate(`Bearer ${key}`, T0)).id, record.id)
  await auth.authenticate(`Bearer ${key}`, T0 + 4_999)
  t.strictSame(auth.stats, { hits: 1, misses: 1 })
  await auth.authenticate(`Bearer ${key}`, T0 + 5_000)
  t.strictSame(auth.stats, { hits: 1, misses: 2 }, 'looked up again after the ttl')

  const unknown = `igw_${'B'.repeat(43)}`
  for (const at of [T0, T0 + 1_999]) await t.rejects(auth.authenticate(`Bearer ${unknown}`, at), { code: 'invalid_api_key' })
  t.strictSame(auth.stats, { hits: 2, misses: 3 }, 'the second miss came from the cache')
})

t.test('an update or revocation clears the cached key at once', async (t) => {
  const store = new MemoryKeyStore()
  const auth = new Authenticator(store, options)
  const { key, record } = await store.create({ name: 'a' })
  await auth.authenticate(`Bearer ${key}`, T0)
  await store.update(record.id, { models: ['dall-e-2'] })
  t.strictSame((await auth.authenticate(`Bearer ${key}`, T0 + 1)).models, ['dall-e-2'])
  await store.revoke(record.id)
  await t.rejects(auth.authenticate(`Bearer ${key}`, T0 + 2), { code: 'invalid_api_key', message: /revoked/ })
})

t.test('key states and header shapes', async (t) => {
  const store = new MemoryKeyStore()
  const auth = new Authenticator(store, options)
  const { key } = await store.create({ name: 'a', expiresAt: new Date(T0 + 1_000).toISOString() })
  t.ok(await auth.authenticate(`bearer  ${key}`, T0), 'the scheme is case-insensitive')
  await t.rejects(auth.authenticate(`Bearer ${key}`, T0 + 1_000), { message: /expired/ })
  for (const header of [undefined, '', 'Bearer', `Basic ${key}`, `Bearer ${key} extra`, 'Bearer short', `Bearer ${'x'.repeat(201)}`]) {
    await t.rejects(auth.authenticate(header, T0), { code: 'invalid_api_key', status: 401 }, String(header))
  }
})

t.test('the cache holds at most maxEntries keys', async (t) => {
  const store = new MemoryKeyStore()
  const auth = new Authenticator(store, options)
  const made = await Promise.all([1, 2, 3, 4].map((i) => store.create({ name: `k${i}` })))
  for (const { key } of made) await auth.authenticate(`Bearer ${key}`, T0)
  const first = made[0]?.key as string
  await auth.authenticate(`Bearer ${first}`, T0 + 1)
  t.strictSame(auth.stats, { hits: 0, misses: 5 }, 'the oldest entry was dropped to make room')
})
