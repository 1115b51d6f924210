import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { RedisKeyStore } from '../../src/keys/redis-store.js'
import { createRedis } from '../../src/redis/client.js'
import { keyStoreSuite, waitFor } from '../helpers/key-store-suite.js'
import { startRedisCluster, startRedisSentinel, type RedisNode } from '../helpers/redis.js'

type Client = ReturnType<typeof createRedis>
type Target = Parameters<typeof createRedis>[0]

/** How a topology is reached, and plain clients on each of its servers to look at it directly. */
interface Topology {
  label: string
  target: Target
  prefix: string
  /** One plain client per server holding data (the master; every cluster node). */
  probes: Redis[]
}

interface Opened {
  prefix: string
  store: RedisKeyStore
  commands: Client
  subscriber: Client
}

let stores = 0
function freshPrefix(topology: Topology): string {
  stores += 1
  return `${topology.prefix}${stores}:`
}

function probesOf(nodes: RedisNode[]): Redis[] {
  return nodes.map(
    ({ host, port }) => new Redis({ host, port, lazyConnect: false, maxRetriesPerRequest: 1, retryStrategy: () => null })
  )
}

async function answers(store: RedisKeyStore): Promise<boolean> {
  try {
    await store.ping()
    return true
  } catch {
    return false
  }
}

/** Subscribers to `channel` over every server: in a cluster, PUBSUB NUMSUB counts only the node asked. */
async function subscribers(topology: Topology, channel: string): Promise<number> {
  let total = 0
  for (const probe of topology.probes) {
    try {
      const reply = (await probe.pubsub('NUMSUB', channel)) as unknown[]
      total += Number(reply[1])
    } catch {
      // A probe that cannot answer counts no subscribers; the wait below then times out and says so.
    }
  }
  return total
}

/** `count` stores on separate clients sharing one prefix, once each answers and all listen for invalidations. */
async function openShared(topology: Topology, count: number): Promise<{ opened: Opened[]; close: () => Promise<void> }> {
  const prefix = freshPrefix(topology)
  const opened: Opened[] = []
  for (let i = 0; i < count; i++) {
    const commands = createRedis(topology.target, { role: 'commands' })
    const subscriber = createRedis(topology.target, { role: 'subscriber' })
    opened.push({ prefix, store: new RedisKeyStore(commands, subscriber, { prefix }), commands, subscriber })
  }
  const close = async (): Promise<void> => {
    await Promise.all(opened.map((o) => o.store.close()))
  }
  try {
    for (const { store } of opened) {
      if (!(await waitFor(() => answers(store), 5_000, 25))) {
        // Say why: the last ping's own error.
        await store.ping()
      }
    }
    const channel = `${prefix}invalidate`
    if (!(await waitFor(async () => (await subscribers(topology, channel)) >= count, 5_000, 25))) {
      throw new Error(`${topology.label}: ${await subscribers(topology, channel)} of ${count} stores subscribed to ${channel} after 5 s`)
    }
  } catch (error) {
    await close()
    throw error
  }
  return { opened, close }
}

function runSuite(t: Test, topology: Topology): void {
  keyStoreSuite(t, async () => {
    const { opened, close } = await openShared(topology, 1)
    const first = opened[0]
    if (first === undefined) throw new Error('no store opened')
    return { store: first.store, cleanup: close }
  })
}

t.test('Redis Sentinel', async (t) => {
  const sentinel = await startRedisSentinel()
  t.teardown(() => sentinel.close())
  const topology: Topology = {
    label: 'sentinel',
    target: { sentinels: sentinel.sentinels, sentinelName: sentinel.name },
    prefix: sentinel.prefix,
    probes: probesOf([{ host: '127.0.0.1', port: sentinel.masterPort }])
  }
  t.teardown(() => topology.probes.forEach((probe) => probe.disconnect()))

  t.test('the client reaches the master the sentinel names', async (t) => {
    const { opened, close } = await openShared(topology, 1)
    t.teardown(close)
    const [a] = opened
    if (a === undefined) return
    t.equal(a.commands.isCluster, false, 'a single-server client, not a cluster client')
    const { record } = await a.store.create({ name: 'through the sentinel' })
    const [master] = topology.probes
    t.ok(master !== undefined && (await master.exists(`${a.prefix}key:{${record.id}}`)) === 1, 'the record is on the master')
  })

  t.test('the shared KeyStore suite', async (t) => runSuite(t, topology))
})

t.test('Redis Cluster', async (t) => {
  const cluster = await startRedisCluster()
  t.teardown(() => cluster.close())
  const topology: Topology = {
    label: 'cluster',
    target: { cluster: cluster.nodes },
    prefix: cluster.prefix,
    probes: probesOf(cluster.nodes)
  }
  t.teardown(() => topology.probes.forEach((probe) => probe.disconnect()))

  t.test('the shared KeyStore suite', async (t) => runSuite(t, topology))

  t.test('keys are spread over more than one node', async (t) => {
    const { opened, close } = await openShared(topology, 1)
    t.teardown(close)
    const [a] = opened
    if (a === undefined) return
    t.equal(a.commands.isCluster, true, 'a cluster client')
    const created = await Promise.all(Array.from({ length: 12 }, (_, i) => a.store.create({ name: `spread ${i}` })))
    const holding = new Set<number>()
    for (const { record } of created) {
      for (const [i, probe] of topology.probes.entries()) {
        // A node that does not own the slot answers MOVED; only the owner answers 0 or 1.
        const owned = await probe.exists(`${a.prefix}key:{${record.id}}`).catch(() => 0)
        if (owned === 1) holding.add(i)
      }
    }
    t.ok(holding.size >= 2, `12 records are on ${holding.size} of ${topology.probes.length} nodes`)
    t.equal((await a.store.list()).length, 12, 'and list finds them all')
  })

  t.test('two instances on separate cluster clients share keys and invalidations', async (t) => {
    const { opened, close } = await openShared(topology, 2)
    t.teardown(close)
    const [a, b] = opened
    if (a === undefined || b === undefined) return
    t.not(a.commands, b.commands, 'separate command clients')
    t.not(a.subscriber, b.subscriber, 'separate subscriber clients')

    const { record, key } = await a.store.create({ name: 'shared on the cluster' })
    const found = await b.store.findByDigest(record.digest)
    t.same(found, record, 'B finds by digest the key A created')
    t.notOk(JSON.stringify(found).includes(key), 'without the key in it')
    t.same(await b.store.get(record.id), record, 'B gets it by id')

    const seenByA: string[] = []
    const seenByB: string[] = []
    a.store.onInvalidate((id) => seenByA.push(id))
    b.store.onInvalidate((id) => seenByB.push(id))
    await a.store.update(record.id, { name: 'renamed on A' })
    t.ok(await waitFor(() => seenByB.includes(record.id), 2_000), "A's update fires B's listener within 2 s")
    t.ok(await waitFor(() => seenByA.includes(record.id), 2_000), "and A's own")
    t.equal((await b.store.get(record.id))?.name, 'renamed on A', 'B reads the change')

    seenByA.length = 0
    await b.store.revoke(record.id)
    t.ok(await waitFor(() => seenByA.includes(record.id), 2_000), "B's revocation fires A's listener within 2 s")
    t.ok((await a.store.findByDigest(record.digest))?.revokedAt, 'A sees the revocation')
  })
})

t.test('a whole gateway on Sentinel and on a Cluster: keys, requests per minute and budgets work', async (t) => {
  const { json, startFakeUpstream } = await import('../helpers/fake-upstream.js')
  const { startGateway } = await import('../helpers/gateway.js')
  const { sendRaw } = await import('../helpers/http-client.js')
  const sentinel = await startRedisSentinel()
  const cluster = await startRedisCluster()
  const upstream = await startFakeUpstream(json(200, { created: 1, data: [{ b64_json: 'QUJD' }] }))
  t.teardown(async () => {
    await upstream.close()
    await sentinel.close()
    await cluster.close()
  })
  const targets = {
    sentinel: { sentinels: sentinel.sentinels, sentinelName: sentinel.name, keyPrefix: sentinel.prefix },
    cluster: { cluster: cluster.nodes, keyPrefix: cluster.prefix }
  }
  for (const [name, redis] of Object.entries(targets)) {
    const gateway = await startGateway({ providers: { up: upstream.baseUrl }, redis })
    t.teardown(() => gateway.close())
    t.equal(gateway.store.kind, 'redis')
    // dall-e-3 hd is $0.08: the budget pays for one; rpm allows two.
    const { key } = await gateway.store.create({ name, rpm: 2, budgetMicroUsd: 80_000 })
    const call = () =>
      sendRaw(`${gateway.url}/v1/images/generations`, {
        headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
        body: [Buffer.from('{"model":"dall-e-3","prompt":"x","quality":"hd","size":"1024x1024"}')]
      })
    const statuses = [(await call()).status]
    const second = await call()
    statuses.push(second.status)
    t.match(second.json(), { error: { code: 'insufficient_quota' } }, `${name}: the budget holds`)
    statuses.push((await call()).status)
    t.strictSame(statuses, [200, 429, 429], `${name}: served, over budget, over rpm`)
    const third = await call()
    t.match(third.json(), { error: { code: 'rate_limit_exceeded' } }, `${name}: requests per minute count through Redis`)
  }
})
