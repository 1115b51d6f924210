import t from 'tap'
import { MemoryIdempotencyStore } from '../../src/idempotency/memory-store.js'
import { toParts } from '../../src/idempotency/store.js'
import { idempotencyStoreSuite } from '../helpers/idempotency-store-suite.js'

idempotencyStoreSuite(t, async (options) => {
  const store = new MemoryIdempotencyStore(options)
  return { store, cleanup: () => store.close() }
})

t.test('toParts joins small chunks and cuts large ones, keeping every byte in order', async (t) => {
  const bytes = Buffer.from(Array.from({ length: 100 }, (_, i) => i))
  const chunks = [bytes.subarray(0, 3), bytes.subarray(3, 4), bytes.subarray(4, 60), bytes.subarray(60)]
  const parts = toParts(chunks, 16)
  t.same(parts.map((p) => p.length), [16, 16, 16, 16, 16, 16, 4])
  t.ok(Buffer.concat(parts).equals(bytes))
  t.same(toParts([], 16), [])
})

t.test('the in-process store drops the oldest answers past its cap, and remembers that they ran', async (t) => {
  const store = new MemoryIdempotencyStore({ ttlMs: 60_000, maxBytes: 10 })
  t.teardown(() => store.close())
  for (const scope of ['a', 'b']) {
    const found = await store.begin(scope, 'fp', `req_${scope}`)
    if (found.state !== 'run') throw new Error('expected run')
    await store.complete(scope, found.token, { status: 200, headers: {}, parts: [Buffer.alloc(6)], formDigest: null })
  }
  t.same(await store.begin('a', 'fp', 'req_repeat'), { state: 'not_stored', fingerprint: 'fp', requestId: 'req_a', reason: 'evicted' })
  t.equal((await store.begin('b', 'fp', 'req_repeat')).state, 'done')
})
