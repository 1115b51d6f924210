import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Test } from 'tap'
import type { Begin, IdempotencyStore, StoredAnswer } from '../../src/idempotency/store.js'

export type MakeIdempotencyStore = (options: { ttlMs: number; leaseMs: number }) => Promise<{ store: IdempotencyStore; cleanup: () => Promise<void> }>

const HOUR_MS = 3_600_000

function answer(fields: Partial<StoredAnswer> = {}): StoredAnswer {
  return {
    status: 200,
    headers: { 'content-type': 'application/json', 'x-gateway-deployment': 'up/gpt-image-1' },
    parts: [Buffer.from('{"created":1,'), Buffer.from('"data":[]}')],
    formDigest: null,
    ...fields
  }
}

async function bodyOf(found: Begin): Promise<Buffer> {
  if (found.state !== 'done') throw new Error(`expected done, got ${found.state}`)
  const chunks: Buffer[] = []
  for await (const part of found.answer.body()) chunks.push(part)
  return Buffer.concat(chunks)
}

async function run(store: IdempotencyStore, scope: string, fingerprint = 'fp-1', requestId = 'req_first'): Promise<string> {
  const found = await store.begin(scope, fingerprint, requestId)
  if (found.state !== 'run') throw new Error(`expected run, got ${found.state}`)
  return found.token
}

/** The behaviour both idempotency stores share (test/unit for memory, test/integration for Redis). */
export function idempotencyStoreSuite(t: Test, make: MakeIdempotencyStore): void {
  async function open(t: Test, options: Partial<{ ttlMs: number; leaseMs: number }> = {}): Promise<IdempotencyStore> {
    const { store, cleanup } = await make({ ttlMs: HOUR_MS, leaseMs: 60_000, ...options })
    t.teardown(cleanup)
    return store
  }

  t.test('the first begin runs; the next sees it running, with its fingerprint and request id', async (t) => {
    const store = await open(t)
    const scope = randomUUID()
    await run(store, scope)
    t.same(await store.begin(scope, 'fp-2', 'req_second'), { state: 'running', fingerprint: 'fp-1', requestId: 'req_first' })
    t.equal((await store.begin(randomUUID(), 'fp-1', 'req_other')).state, 'run', 'scopes are independent')
  })

  t.test('a completed entry replays its answer, part by part, to every repeat', async (t) => {
    const store = await open(t)
    const scope = randomUUID()
    const token = await run(store, scope)
    const big = Buffer.alloc(3 * 1024 * 1024 + 5, 7)
    t.equal(await store.complete(scope, token, answer({ parts: [big.subarray(0, 1024 * 1024), big.subarray(1024 * 1024)], formDigest: 'abc' })), true)
    for (let i = 0; i < 2; i++) {
      const found = await store.begin(scope, 'fp-x', 'req_repeat')
      t.equal(found.state, 'done')
      if (found.state !== 'done') return
      t.equal(found.fingerprint, 'fp-1')
      t.equal(found.requestId, 'req_first')
      t.equal(found.answer.status, 200)
      t.same(found.answer.headers, answer().headers)
      t.equal(found.answer.size, big.length)
      t.equal(found.answer.formDigest, 'abc')
      t.ok((await bodyOf(found)).equals(big), 'the same bytes')
    }
    t.equal(await store.release(scope, token), false, 'a done entry is not released')
    t.equal(await store.markNotStored(scope, token, 'client_left'), false, 'nor marked')
  })

  t.test('an empty body and no form digest come back as such', async (t) => {
    const store = await open(t)
    const scope = randomUUID()
    const token = await run(store, scope)
    await store.complete(scope, token, answer({ parts: [], status: 201 }))
    const found = await store.begin(scope, 'fp-1', 'req_repeat')
    t.equal(found.state, 'done')
    if (found.state !== 'done') return
    t.equal(found.answer.status, 201)
    t.equal(found.answer.size, 0)
    t.equal(found.answer.formDigest, null)
    t.equal((await bodyOf(found)).length, 0)
  })

  t.test('release: the next request with the key runs', async (t) => {
    const store = await open(t)
    const scope = randomUUID()
    const token = await run(store, scope)
    t.equal(await store.release(scope, token), true)
    t.equal((await store.begin(scope, 'fp-2', 'req_retry')).state, 'run')
  })

  t.test('not stored: repeats are told why, and which request ran', async (t) => {
    const store = await open(t)
    const scope = randomUUID()
    const token = await run(store, scope)
    t.equal(await store.markNotStored(scope, token, 'too_large'), true)
    t.same(await store.begin(scope, 'fp-1', 'req_repeat'), { state: 'not_stored', fingerprint: 'fp-1', requestId: 'req_first', reason: 'too_large' })
    t.equal(await store.release(scope, token), false, 'the marker stays')
  })

  t.test('a token that does not hold the entry changes nothing', async (t) => {
    const store = await open(t)
    const scope = randomUUID()
    await run(store, scope)
    const stranger = randomUUID()
    t.equal(await store.renew(scope, stranger), false)
    t.equal(await store.complete(scope, stranger, answer()), false)
    t.equal(await store.markNotStored(scope, stranger, 'client_left'), false)
    t.equal(await store.release(scope, stranger), false)
    t.equal((await store.begin(scope, 'fp-1', 'req_repeat')).state, 'running')
    t.equal(await store.release(randomUUID(), stranger), false, 'nor one that does not exist')
  })

  t.test('a lease that is not renewed lapses: the run may have cost, so repeats are refused', async (t) => {
    const store = await open(t, { leaseMs: 150 })
    const scope = randomUUID()
    const token = await run(store, scope)
    await sleep(100)
    t.equal(await store.renew(scope, token), true)
    await sleep(100)
    t.equal((await store.begin(scope, 'fp-1', 'req_repeat')).state, 'running', 'renewed: still running')
    await sleep(250)
    t.same(await store.begin(scope, 'fp-1', 'req_repeat'), { state: 'not_stored', fingerprint: 'fp-1', requestId: 'req_first', reason: 'lapsed' })
    // The instance was only slow: what it finishes is still kept.
    t.equal(await store.complete(scope, token, answer()), true)
    t.equal((await store.begin(scope, 'fp-1', 'req_repeat')).state, 'done')
  })

  t.test('entries expire after ttlMs, counted from their last write', async (t) => {
    const store = await open(t, { ttlMs: 300 })
    const scope = randomUUID()
    const token = await run(store, scope)
    await sleep(200)
    await store.complete(scope, token, answer())
    await sleep(200)
    t.equal((await store.begin(scope, 'fp-1', 'req_repeat')).state, 'done', 'the ttl restarted at completion')
    await sleep(200)
    t.equal((await store.begin(scope, 'fp-1', 'req_late')).state, 'run', 'expired: a new run')
  })
}
