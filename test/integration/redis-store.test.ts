import { performance } from 'node:perf_hooks'
import type { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { RedisKeyStore } from '../../src/keys/redis-store.js'
import { StoreUnavailableError } from '../../src/keys/types.js'
import { createRedis, type RedisClient } from '../../src/redis/client.js'
import { admission, keyStoreSuite, usage, waitFor } from '../helpers/key-store-suite.js'
import { startRedis, type TestRedis } from '../helpers/redis.js'

const server = await startRedis()
t.teardown(() => server.close())

let stores = 0
function freshPrefix(redis: TestRedis): string {
  stores += 1
  return `${redis.prefix}${stores}:`
}

interface Opened {
  prefix: string
  store: RedisKeyStore
  commands: RedisClient
  subscriber: RedisClient
}

function open(redis: TestRedis, prefix: string): Opened {
  const commands = createRedis(redis.url)
  const subscriber = createRedis(redis.url, { role: 'subscriber' })
  return { prefix, store: new RedisKeyStore(commands, subscriber, { prefix }), commands, subscriber }
}

async function answers(store: RedisKeyStore): Promise<boolean> {
  try {
    await store.ping()
    return true
  } catch {
    return false
  }
}

async function subscribers(client: RedisClient, channel: string): Promise<number> {
  try {
    const reply = (await client.pubsub('NUMSUB', channel)) as unknown[]
    return Number(reply[1])
  } catch {
    return 0
  }
}

/** Stores sharing one prefix, once they answer and all of them listen for invalidations. */
async function openShared(t: Test, redis: TestRedis, count: number): Promise<Opened[]> {
  const prefix = freshPrefix(redis)
  const opened = Array.from({ length: count }, () => open(redis, prefix))
  t.teardown(() => Promise.all(opened.map((o) => o.store.close())))
  for (const { store } of opened) t.ok(await waitFor(() => answers(store), 5_000), 'store answers')
  const first = opened[0]
  if (first === undefined) throw new Error('no store opened')
  t.ok(await waitFor(async () => (await subscribers(first.commands, `${prefix}invalidate`)) >= count, 5_000), 'all subscribed')
  return opened
}

async function rejectsFast(t: Test, label: string, operation: () => Promise<unknown>): Promise<void> {
  const started = performance.now()
  let failure: unknown = null
  try {
    await operation()
  } catch (error) {
    failure = error
  }
  const elapsedMs = performance.now() - started
  t.ok(failure instanceof StoreUnavailableError, `${label} rejects with StoreUnavailableError (${String(failure)})`)
  t.ok(elapsedMs < 1_000, `${label} rejected in ${elapsedMs.toFixed(0)} ms (< 1000)`)
}

t.test('the shared KeyStore suite', async (t) => {
  keyStoreSuite(t, async () => {
    const [opened] = await openShared(t, server, 1)
    if (opened === undefined) throw new Error('no store opened')
    // Each case's store is closed by openShared's teardown.
    return { store: opened.store, cleanup: async () => {} }
  })
})

t.test('the plaintext key never reaches Redis', async (t) => {
  const [opened] = await openShared(t, server, 1)
  if (opened === undefined) return
  const prefix = opened.prefix
  const { record, key } = await opened.store.create({ name: 'secret', metadata: { note: 'x' } })
  const admitted = admission(record.id, { concurrency: 1, budgetMicroUsd: 10, reserveMicroUsd: 1 })
  await opened.store.admit(admitted)
  await opened.store.settle(record.id, admitted.ticket, usage(), Date.now())
  const stored: string[] = []
  let cursor = '0'
  do {
    const [next, names] = await opened.commands.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', '1000')
    for (const name of names) {
      stored.push(name)
      const type = await opened.commands.type(name)
      if (type === 'string') stored.push((await opened.commands.get(name)) ?? '')
      else if (type === 'hash') stored.push(JSON.stringify(await opened.commands.hgetall(name)))
      else if (type === 'set') stored.push(...(await opened.commands.smembers(name)))
      else if (type === 'zset') stored.push(...(await opened.commands.zrange(name, '0', '-1')))
    }
    cursor = next
  } while (cursor !== '0')
  t.ok(stored.some((s) => s.includes(record.digest)), 'the digest is stored (the scan saw the key)')
  t.notOk(stored.some((s) => s.includes(key)), 'the key is not')
  t.notOk(stored.some((s) => s.includes(key.slice(record.prefix.length))), 'nor its hidden part')
})

t.test('two instances on one Redis share keys and invalidations', async (t) => {
  const [a, b] = await openShared(t, server, 2)
  if (a === undefined || b === undefined) return
  const { record, key } = await a.store.create({ name: 'shared' })
  t.same(await b.store.get(record.id), record, 'B gets what A created')
  t.ok((await b.store.list()).some((r) => r.id === record.id), 'B lists it')
  const found = await b.store.findByDigest(record.digest)
  t.equal(found?.id, record.id, 'B finds it by digest')
  t.notOk(JSON.stringify(found).includes(key))

  const seenByA: string[] = []
  const seenByB: string[] = []
  a.store.onInvalidate((id) => seenByA.push(id))
  b.store.onInvalidate((id) => seenByB.push(id))
  await a.store.update(record.id, { name: 'renamed' })
  t.ok(await waitFor(() => seenByB.length === 1, 1_000), "A's update fires B's listener within 1 s")
  t.ok(await waitFor(() => seenByA.length >= 1, 1_000), "and A's own (at once, and again when its notice comes back)")
  await new Promise((resolve) => setTimeout(resolve, 100))
  const seenBefore = seenByA.length
  await b.store.revoke(record.id)
  t.ok(await waitFor(() => seenByA.length > seenBefore, 1_000), "B's revocation fires A's listener")
  t.ok(seenByA.every((id) => id === record.id), 'only the changed key is named')
  t.ok((await a.store.get(record.id))?.revokedAt, 'A sees the revocation')
})

t.test('two instances admitting at once share one budget and one images-per-minute limit', async (t) => {
  const [a, b] = await openShared(t, server, 2)
  if (a === undefined || b === undefined) return
  const { record } = await a.store.create({ name: 'contended' })
  const budget = await Promise.all(
    Array.from({ length: 50 }, (_, i) =>
      (i % 2 === 0 ? a : b).store.admit(admission(record.id, { budgetMicroUsd: 1_000, reserveMicroUsd: 100 }))
    )
  )
  t.equal(budget.filter((r) => r.ok).length, 10, 'budget: exactly 10 of 50 across both')

  const other = await b.store.create({ name: 'rate' })
  const images = await Promise.all(
    Array.from({ length: 30 }, (_, i) =>
      (i % 2 === 0 ? a : b).store.admit(admission(other.record.id, { imagesPerMinute: 10, images: 1 }))
    )
  )
  t.equal(images.filter((r) => r.ok).length, 10, 'images per minute: exactly 10 of 30 across both')
  t.ok(images.every((r) => r.ok || r.limit === 'images'))
})

const ownServer = { skip: server.external ? 'needs a redis-server started by the tests' : false }

t.test('a Redis that is not there refuses fast', ownServer, async (t) => {
  // Nothing listens on the port of a server that has been closed.
  const gone = await startRedis()
  await gone.close()
  const { store } = open(gone, freshPrefix(gone))
  t.teardown(() => store.close())
  await rejectsFast(t, 'ping', () => store.ping())
  await rejectsFast(t, 'findByDigest', () => store.findByDigest('0'.repeat(64)))
  await rejectsFast(t, 'admit', () => store.admit(admission('key_000000000000000000000000')))
})

t.test('createRedis takes only redis:// and rediss:// URLs', async (t) => {
  t.throws(() => createRedis('http://127.0.0.1:6379'), TypeError)
  const tls = createRedis('rediss://127.0.0.1:1', { role: 'commands' }) as Redis
  t.ok(tls.options.tls, 'rediss:// turns TLS on')
  t.equal(tls.options.enableOfflineQueue, false)
  tls.disconnect()
})

t.test('faults: frozen, killed, restarted', ownServer, async (t) => {
  const faulty = await startRedis()
  t.teardown(() => faulty.close())
  const [opened] = await openShared(t, faulty, 1)
  if (opened === undefined) return
  const { store, commands } = opened
  const { record } = await store.create({ name: 'faults' })
  const seen: string[] = []
  store.onInvalidate((id) => seen.push(id))

  const everyOperation = async (t: Test): Promise<void> => {
    await rejectsFast(t, 'findByDigest', () => store.findByDigest(record.digest))
    await rejectsFast(t, 'admit', () => store.admit(admission(record.id, { concurrency: 1, budgetMicroUsd: 10 })))
    await rejectsFast(t, 'ping', () => store.ping())
    await rejectsFast(t, 'get', () => store.get(record.id))
    await rejectsFast(t, 'list', () => store.list())
    await rejectsFast(t, 'create', () => store.create({ name: 'during outage' }))
    await rejectsFast(t, 'update', () => store.update(record.id, { name: 'during outage' }))
    await rejectsFast(t, 'revoke', () => store.revoke(record.id))
    await rejectsFast(t, 'settle', () => store.settle(record.id, 'ticket', usage(), Date.now()))
    await rejectsFast(t, 'spentMicroUsd', () => store.spentMicroUsd(record.id))
    await rejectsFast(t, 'usage', () => store.usage(record.id, 7, Date.now()))
  }

  await t.test('frozen (SIGSTOP): every operation rejects within 1000 ms', async (t) => {
    faulty.freeze()
    try {
      await everyOperation(t)
      // Several at once must not queue behind each other.
      const started = performance.now()
      const all = await Promise.allSettled([store.ping(), store.findByDigest(record.digest), store.admit(admission(record.id))])
      t.ok(all.every((r) => r.status === 'rejected' && r.reason instanceof StoreUnavailableError), 'concurrent calls all fail')
      t.ok(performance.now() - started < 1_000, 'concurrent calls fail within 1000 ms')
    } finally {
      faulty.thaw()
    }
    t.ok(await waitFor(() => answers(store), 5_000), 'answers again once thawed')
    t.same(await store.get(record.id).then((r) => r?.id), record.id)
  })

  await t.test('killed (SIGKILL): every operation rejects within 1000 ms', async (t) => {
    await faulty.kill()
    await everyOperation(t)
    // Past the first reconnect attempts, too: the client must keep refusing fast, never queue.
    await new Promise((resolve) => setTimeout(resolve, 1_500))
    await rejectsFast(t, 'ping after 1.5 s down', () => store.ping())
    await rejectsFast(t, 'admit after 1.5 s down', () => store.admit(admission(record.id)))
  })

  await t.test('restarted: the same store instance works again, invalidations included', async (t) => {
    await faulty.restart()
    const started = performance.now()
    t.ok(await waitFor(() => answers(store), 5_000, 50), 'answers within 5 s of the restart')
    t.comment(`back after ${(performance.now() - started).toFixed(0)} ms`)
    t.equal(await store.get(record.id), null, 'the old data is gone (no persistence in tests)')
    const { record: fresh, key } = await store.create({ name: 'after restart' })
    t.equal((await store.findByDigest(fresh.digest))?.id, fresh.id)
    t.notOk(key === '')
    const a = admission(fresh.id, { concurrency: 1, budgetMicroUsd: 1_000, reserveMicroUsd: 500 })
    t.same(await store.admit(a), { ok: true }, 'scripts are loaded again after the restart')
    await store.settle(fresh.id, a.ticket, usage({ costMicroUsd: 200 }), Date.now())
    t.equal(await store.spentMicroUsd(fresh.id), 200)

    t.ok(await waitFor(async () => (await subscribers(commands, `${opened.prefix}invalidate`)) >= 1, 5_000), 'resubscribed')
    seen.length = 0
    await store.update(fresh.id, { name: 'renamed after restart' })
    t.ok(await waitFor(() => seen.includes(fresh.id), 1_000), 'invalidations arrive after the restart')
  })
})
