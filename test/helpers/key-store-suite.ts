import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Test } from 'tap'
import { KEY_PREFIX, digestOf } from '../../src/keys/key-material.js'
import type { Admission, KeyStore, UsageDelta } from '../../src/keys/types.js'

export type MakeStore = () => Promise<{ store: KeyStore; cleanup: () => Promise<void> }>

/** Mid-minute and mid-day, so that neither a minute window nor a UTC day ends during a case. */
export const T0 = Date.UTC(2031, 4, 17, 10, 20, 30)
const DAY_MS = 86_400_000

export function admission(keyId: string, fields: Partial<Admission> = {}): Admission {
  return {
    keyId,
    ticket: randomUUID(),
    images: 1,
    imagesPerMinute: null,
    concurrency: null,
    reserveMicroUsd: 0,
    budgetMicroUsd: null,
    leaseMs: 60_000,
    nowMs: T0,
    ...fields
  }
}

export function usage(fields: Partial<UsageDelta> = {}): UsageDelta {
  return { requests: 1, images: 1, inputTokens: 0, outputTokens: 0, costMicroUsd: 0, ...fields }
}

/** Resolves true as soon as `condition` holds, false after `timeoutMs`. */
export async function waitFor(condition: () => boolean | Promise<boolean>, timeoutMs: number, stepMs = 10): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await condition()) return true
    if (Date.now() >= deadline) return false
    await sleep(stepMs)
  }
}

/**
 * The behaviour every KeyStore must have, run against each implementation, so that the
 * embedded store cannot drift from the Redis one.
 */
export function keyStoreSuite(t: Test, makeStore: MakeStore): void {
  const withStore = async (t: Test): Promise<KeyStore> => {
    const { store, cleanup } = await makeStore()
    t.teardown(cleanup)
    return store
  }

  t.test('create returns a prefixed key with at least 192 random bits, and stores only its digest', async (t) => {
    const store = await withStore(t)
    const { record, key } = await store.create({ name: 'first', metadata: { team: 'a' } })
    const second = await store.create({ name: 'second' })

    t.ok(key.startsWith(KEY_PREFIX), `starts with ${KEY_PREFIX}`)
    const secret = key.slice(KEY_PREFIX.length)
    t.match(secret, /^[A-Za-z0-9_-]+$/, 'base64url after the prefix')
    t.ok(secret.length * 6 >= 192, `${secret.length} base64url characters carry at least 192 bits`)
    t.not(second.key, key, 'two keys differ')
    t.not(second.record.id, record.id, 'two ids differ')

    t.equal(record.digest, digestOf(key), 'the digest is SHA-256 of the whole key')
    t.match(record.digest, /^[0-9a-f]{64}$/)
    t.ok(key.startsWith(record.prefix), 'the display prefix is the start of the key')
    t.ok(record.prefix.length < key.length / 2, 'the display prefix is a small part of the key')
    t.match(record.id, /^key_[0-9a-f]{24}$/)

    const hiddenPart = key.slice(record.prefix.length)
    for (const stored of [record, await store.get(record.id), await store.findByDigest(record.digest)]) {
      const text = JSON.stringify(stored)
      t.notOk(text.includes(key), 'the key is in no field')
      t.notOk(text.includes(hiddenPart), 'nor is the part after the display prefix')
    }

    t.same(record.models, ['*'], 'models default to every model')
    t.equal(record.revokedAt, null)
    t.equal(record.disabled, false)
    t.equal(record.rpm, null)
    t.equal(record.imagesPerMinute, null)
    t.equal(record.concurrency, null)
    t.equal(record.budgetMicroUsd, null)
    t.equal(record.expiresAt, null)
    t.same(record.metadata, { team: 'a' })
    t.ok(Number.isFinite(Date.parse(record.createdAt)), 'createdAt is a date')
  })

  t.test('findByDigest finds the key; any other digest finds nothing', async (t) => {
    const store = await withStore(t)
    const { record, key } = await store.create({
      name: 'found',
      models: ['gpt-image-*'],
      rpm: 60,
      imagesPerMinute: 10,
      concurrency: 2,
      budgetMicroUsd: 5_000_000,
      expiresAt: '2040-01-01T00:00:00.000Z',
      metadata: { owner: 'ops' }
    })
    t.same(await store.findByDigest(digestOf(key)), record)
    t.equal(await store.findByDigest(digestOf(`${key}x`)), null)
    t.equal(await store.findByDigest('0'.repeat(64)), null)
    t.equal(await store.findByDigest(''), null)
  })

  t.test('list and get return stored records; unknown ids are null', async (t) => {
    const store = await withStore(t)
    const a = await store.create({ name: 'a' })
    const b = await store.create({ name: 'b', concurrency: 3 })
    const listed = await store.list()
    t.equal(listed.length, 2)
    t.same(
      listed.map((r) => r.id).sort(),
      [a.record.id, b.record.id].sort()
    )
    t.same(await store.get(b.record.id), b.record)
    t.equal(await store.get('key_000000000000000000000000'), null)
  })

  t.test('update applies the patch and keeps id, digest and createdAt', async (t) => {
    const store = await withStore(t)
    const { record } = await store.create({ name: 'before', models: ['gpt-image-1'], budgetMicroUsd: 1_000 })
    const updated = await store.update(record.id, {
      name: 'after',
      models: ['dall-e-3', 'gpt-image-*'],
      imagesPerMinute: 5,
      budgetMicroUsd: null,
      disabled: true,
      metadata: { reason: 'test' }
    })
    t.ok(updated)
    t.equal(updated?.name, 'after')
    t.same(updated?.models, ['dall-e-3', 'gpt-image-*'])
    t.equal(updated?.imagesPerMinute, 5)
    t.equal(updated?.budgetMicroUsd, null, 'a limit can be removed')
    t.equal(updated?.disabled, true)
    t.same(updated?.metadata, { reason: 'test' })
    t.equal(updated?.id, record.id)
    t.equal(updated?.digest, record.digest)
    t.equal(updated?.prefix, record.prefix)
    t.equal(updated?.createdAt, record.createdAt)
    t.same(await store.get(record.id), updated, 'the change is stored')
    t.same(await store.findByDigest(record.digest), updated)

    const emptied = await store.update(record.id, { models: [] })
    t.same(emptied?.models, [], 'an empty model list stays a list')
    t.equal(await store.update('key_000000000000000000000000', { name: 'x' }), null)
  })

  t.test('revoke sets revokedAt and keeps the record', async (t) => {
    const store = await withStore(t)
    const { record } = await store.create({ name: 'doomed' })
    const revoked = await store.revoke(record.id)
    t.ok(revoked?.revokedAt, 'revokedAt is set')
    t.ok(Number.isFinite(Date.parse(revoked?.revokedAt ?? '')), 'revokedAt is a date')
    t.same(await store.get(record.id), revoked, 'the record is kept')
    t.ok((await store.list()).some((r) => r.id === record.id), 'and listed')
    const found = await store.findByDigest(record.digest)
    t.ok(found === null || found.revokedAt !== null, 'a lookup never shows it as live')
    const again = await store.revoke(record.id)
    t.equal(again?.revokedAt, revoked?.revokedAt, 'revoking twice keeps the first time')
    t.equal(await store.revoke('key_000000000000000000000000'), null)
  })

  t.test('onInvalidate fires for update and revoke', async (t) => {
    const store = await withStore(t)
    const { record } = await store.create({ name: 'watched' })
    const seen: string[] = []
    store.onInvalidate((id) => seen.push(id))
    await store.update(record.id, { name: 'changed' })
    // At least once: a Redis store tells its own listeners at once and again when its notice comes back.
    t.ok(await waitFor(() => seen.length >= 1, 1_000), 'update invalidates within 1 s')
    const afterUpdate = seen.length
    await store.revoke(record.id)
    t.ok(await waitFor(() => seen.length > afterUpdate, 1_000), 'revoke invalidates within 1 s')
    t.ok(seen.every((id) => id === record.id), 'only the changed key is named')
  })

  t.test('ping resolves', async (t) => {
    const store = await withStore(t)
    await t.resolves(store.ping())
  })

  t.test('images per minute counts images, not requests', async (t) => {
    const store = await withStore(t)
    const { record } = await store.create({ name: 'ipm' })
    const limits = { imagesPerMinute: 10 }
    t.same(await store.admit(admission(record.id, { ...limits, images: 6 })), { ok: true })
    t.same(await store.admit(admission(record.id, { ...limits, images: 4 })), { ok: true })
    const refused = await store.admit(admission(record.id, { ...limits, images: 1 }))
    t.match(refused, { ok: false, limit: 'images', limitValue: 10, remaining: 0 })
    if (refused.ok) return
    t.type(refused.retryAfterMs, 'number')
    t.ok((refused.retryAfterMs ?? 0) > 0 && (refused.retryAfterMs ?? Infinity) <= 60_000, `retryAfterMs ${refused.retryAfterMs} is within the minute`)

    const tooMany = await store.admit(admission(record.id, { imagesPerMinute: 3, images: 4, nowMs: T0 + 120_000 }))
    t.match(tooMany, { ok: false, limit: 'images', limitValue: 3, remaining: 3 }, 'one request larger than the limit')

    const nextWindow = T0 + (refused.retryAfterMs ?? 0)
    t.same(await store.admit(admission(record.id, { ...limits, images: 10, nowMs: nextWindow })), { ok: true }, 'a new minute starts empty')
  })

  t.test('concurrency: the third request waits until one of two is settled', async (t) => {
    const store = await withStore(t)
    const { record } = await store.create({ name: 'conc' })
    const first = admission(record.id, { concurrency: 2 })
    t.same(await store.admit(first), { ok: true })
    t.same(await store.admit(admission(record.id, { concurrency: 2 })), { ok: true })
    const refused = await store.admit(admission(record.id, { concurrency: 2 }))
    t.match(refused, { ok: false, limit: 'concurrency', limitValue: 2, remaining: 0 })
    await store.settle(record.id, first.ticket, usage(), T0)
    t.same(await store.admit(admission(record.id, { concurrency: 2 })), { ok: true }, 'a settled slot is free')
  })

  t.test('leases that lapse free their slot and their reservation', async (t) => {
    const store = await withStore(t)
    const { record } = await store.create({ name: 'lapse' })
    const limits = { concurrency: 1, budgetMicroUsd: 1_000, reserveMicroUsd: 600, leaseMs: 30_000 }
    t.same(await store.admit(admission(record.id, limits)), { ok: true })
    t.match(await store.admit(admission(record.id, { ...limits, nowMs: T0 + 29_999 })), { ok: false, limit: 'concurrency' }, 'held until the lease ends')
    const later = T0 + 1_000_000_000
    t.same(await store.admit(admission(record.id, { ...limits, nowMs: later })), { ok: true }, 'a lapsed lease holds neither slot nor budget')
    t.equal(await store.spentMicroUsd(record.id), 0, 'a lapsed reservation is not spent')
  })

  t.test('budget: reservations count until settled, then the real cost counts', async (t) => {
    const store = await withStore(t)
    const { record } = await store.create({ name: 'budget' })
    const limits = { budgetMicroUsd: 1_000, reserveMicroUsd: 600 }
    const first = admission(record.id, limits)
    t.same(await store.admit(first), { ok: true })
    const refused = await store.admit(admission(record.id, limits))
    t.same(refused, { ok: false, limit: 'budget', retryAfterMs: null, limitValue: 1_000, remaining: 400 })
    await store.settle(record.id, first.ticket, usage({ costMicroUsd: 300 }), T0)
    t.equal(await store.spentMicroUsd(record.id), 300)
    t.same(await store.admit(admission(record.id, limits)), { ok: true }, '300 spent + 600 reserved fits 1000')
    t.match(await store.admit(admission(record.id, { budgetMicroUsd: 1_000, reserveMicroUsd: 101 })), { ok: false, limit: 'budget', remaining: 100 })
    t.same(await store.admit(admission(record.id, { budgetMicroUsd: 1_000, reserveMicroUsd: 100 })), { ok: true }, 'exactly the budget fits')
  })

  t.test('settle is idempotent per ticket', async (t) => {
    const store = await withStore(t)
    const { record } = await store.create({ name: 'twice' })
    const a = admission(record.id, { concurrency: 1, budgetMicroUsd: 10_000, reserveMicroUsd: 1_000 })
    t.same(await store.admit(a), { ok: true })
    const used = usage({ images: 2, inputTokens: 10, outputTokens: 20, costMicroUsd: 700 })
    await store.settle(record.id, a.ticket, used, T0)
    await store.settle(record.id, a.ticket, used, T0)
    await store.settle(record.id, a.ticket, usage({ costMicroUsd: 5 }), T0 + 1_000)
    t.equal(await store.spentMicroUsd(record.id), 700)
    const [today] = await store.usage(record.id, 1, T0)
    t.same(today, { day: '2031-05-17', requests: 1, images: 2, inputTokens: 10, outputTokens: 20, costMicroUsd: 700 })
    t.same(await store.admit(admission(record.id, { concurrency: 1 })), { ok: true }, 'the slot was freed once')
  })

  t.test('a failed upstream settles at cost 0 and frees its reservation', async (t) => {
    const store = await withStore(t)
    const { record } = await store.create({ name: 'failed' })
    const a = admission(record.id, { budgetMicroUsd: 1_000, reserveMicroUsd: 1_000 })
    t.same(await store.admit(a), { ok: true })
    t.match(await store.admit(admission(record.id, { budgetMicroUsd: 1_000, reserveMicroUsd: 1 })), { ok: false, limit: 'budget' })
    await store.settle(record.id, a.ticket, usage({ images: 0, costMicroUsd: 0 }), T0)
    t.equal(await store.spentMicroUsd(record.id), 0)
    t.same(await store.admit(admission(record.id, { budgetMicroUsd: 1_000, reserveMicroUsd: 1_000 })), { ok: true })
  })

  t.test('50 concurrent admissions never take more than the budget holds', async (t) => {
    const store = await withStore(t)
    const { record } = await store.create({ name: 'race' })
    const results = await Promise.all(
      Array.from({ length: 50 }, () => store.admit(admission(record.id, { budgetMicroUsd: 1_000, reserveMicroUsd: 100 })))
    )
    const admitted = results.filter((r) => r.ok).length
    t.equal(admitted, 10, 'exactly the 10 that fit')
    t.ok(results.every((r) => r.ok || r.limit === 'budget'), 'the rest are refused for budget')
  })

  t.test('usage sums per UTC day, newest first, zero-filled', async (t) => {
    const store = await withStore(t)
    const { record } = await store.create({ name: 'usage' })
    const other = await store.create({ name: 'idle' })
    const yesterday = T0 - DAY_MS
    await store.settle(record.id, 't1', usage({ images: 2, inputTokens: 5, outputTokens: 7, costMicroUsd: 100 }), T0)
    await store.settle(record.id, 't2', usage({ images: 3, inputTokens: 1, outputTokens: 2, costMicroUsd: 50 }), T0 + 1_000)
    await store.settle(record.id, 't3', usage({ requests: 1, images: 0, costMicroUsd: 0 }), yesterday)
    t.same(await store.usage(record.id, 4, T0), [
      { day: '2031-05-17', requests: 2, images: 5, inputTokens: 6, outputTokens: 9, costMicroUsd: 150 },
      { day: '2031-05-16', requests: 1, images: 0, inputTokens: 0, outputTokens: 0, costMicroUsd: 0 },
      { day: '2031-05-15', requests: 0, images: 0, inputTokens: 0, outputTokens: 0, costMicroUsd: 0 },
      { day: '2031-05-14', requests: 0, images: 0, inputTokens: 0, outputTokens: 0, costMicroUsd: 0 }
    ])
    t.equal(await store.spentMicroUsd(record.id), 150, 'settled without admission still counts')
    t.same(await store.usage(other.record.id, 2, T0), [
      { day: '2031-05-17', requests: 0, images: 0, inputTokens: 0, outputTokens: 0, costMicroUsd: 0 },
      { day: '2031-05-16', requests: 0, images: 0, inputTokens: 0, outputTokens: 0, costMicroUsd: 0 }
    ])
    t.equal(await store.spentMicroUsd(other.record.id), 0)
    t.same(await store.usage(record.id, 0, T0), [])
    const endOfDay = Date.UTC(2031, 4, 17, 23, 59, 59, 999)
    t.equal((await store.usage(record.id, 1, endOfDay))[0]?.day, '2031-05-17', 'days are UTC')
  })

  t.test('null limits never refuse', async (t) => {
    const store = await withStore(t)
    const { record } = await store.create({ name: 'unlimited' })
    const results = await Promise.all(
      Array.from({ length: 30 }, () => store.admit(admission(record.id, { images: 10, reserveMicroUsd: 1_000_000_000 })))
    )
    t.ok(results.every((r) => r.ok), 'all 30 admitted')
  })
}
