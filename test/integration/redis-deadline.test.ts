import { Cluster, Redis } from 'ioredis'
import t from 'tap'
import { createRedis, secondConnection, whenReady } from '../../src/redis/client.js'
import { startRedis, startRedisCluster } from '../helpers/redis.js'

/*
 * The command deadline (300 ms on the commands connection) is for a Redis that does not answer,
 * not for a gateway that was too busy to read the answer: a reply that came while the event loop
 * was held (a long GC, a large answer rewritten) is taken, not refused as a timeout.
 */

/**
 * Holds the event loop, as a full GC of a large heap or a synchronous rewrite does, once the
 * commands issued before it are written (auto-pipelining writes them in the check phase, with setImmediate).
 */
async function busyFor(ms: number): Promise<void> {
  await new Promise((resolve) => setImmediate(resolve))
  const until = performance.now() + ms
  while (performance.now() < until) {
    // Nothing: the point is that no I/O or timer runs meanwhile.
  }
}

async function outcome(promise: Promise<unknown>): Promise<string> {
  try {
    return `answer ${String(await promise)}`
  } catch (error) {
    return `error ${(error as Error).message}`
  }
}

t.test('commands connection', async (t) => {
  const redis = await startRedis()
  const client = createRedis(redis.url)
  const images = secondConnection(client, 2_000, 'igw-test-images')
  const subscriber = createRedis(redis.url, { role: 'subscriber' })
  t.teardown(async () => {
    client.disconnect()
    images.disconnect()
    subscriber.disconnect()
    await redis.close()
  })
  await whenReady(client, 5_000)
  await whenReady(images, 5_000)
  await whenReady(subscriber, 5_000)

  t.test('a reply that arrived while the event loop was held 600 ms is taken', async (t) => {
    const pending = outcome(client.ping('held'))
    await busyFor(600)
    t.equal(await pending, 'answer held')
  })

  t.test('auto-pipelined commands held the same way are all taken', async (t) => {
    const pending = Array.from({ length: 50 }, (_, i) => outcome(client.incr(`${redis.prefix}held:${i % 5}`)))
    await busyFor(600)
    const answers = await Promise.all(pending)
    t.same(answers.filter((a) => !a.startsWith('answer')), [])
  })

  t.test('a Redis that does not answer still ends a command at about 300 ms', async (t) => {
    redis.freeze()
    t.teardown(() => redis.thaw())
    const started = performance.now()
    const result = await outcome(client.ping('frozen'))
    const took = performance.now() - started
    t.equal(result, 'error Command timed out')
    t.ok(took >= 290 && took < 600, `ended after ${took.toFixed(0)} ms`)
    redis.thaw()
    t.equal(await outcome(client.ping('thawed')), 'answer thawed', 'and the connection serves the next command')
  })

  t.test('a second connection keeps the deadline it is given (the images connection: MBs per command); a subscriber has none', async (t) => {
    redis.freeze()
    const started = performance.now()
    const pending = outcome(images.ping('slow'))
    const short = outcome(client.ping('short'))
    const waiting = outcome(subscriber.ping('waits'))
    await new Promise((resolve) => setTimeout(resolve, 800))
    redis.thaw()
    t.equal(await short, 'error Command timed out', 'the commands connection gave up at its own deadline')
    t.equal(await pending, 'answer slow', 'the second connection waited past 300 ms')
    t.equal(await waiting, 'answer waits', 'and so did the subscriber')
    const frozenAgain = performance.now()
    redis.freeze()
    t.teardown(() => redis.thaw())
    t.equal(await outcome(images.ping('never')), 'error Command timed out')
    const took = performance.now() - frozenAgain
    t.ok(took >= 1_990 && took < 2_500, `and gave up at its own deadline: ${took.toFixed(0)} ms (${(frozenAgain - started).toFixed(0)} ms in)`)
  })
})

t.test('cluster connection: the deadline is armed at the cluster, once per sending of a command', async (t) => {
  const cluster = await startRedisCluster()
  const client = createRedis({ cluster: cluster.nodes })
  const second = secondConnection(client, 2_000, 'igw-test-images')
  t.teardown(async () => {
    client.disconnect()
    second.disconnect()
    await cluster.close()
  })
  await whenReady(client, 5_000)
  await whenReady(second, 5_000)
  // Keys on every node: the commands go out over several node connections, each opened (a cluster
  // client connects to a node on its first command) before the event loop is held.
  const keys = Array.from({ length: 30 }, (_, i) => `${cluster.prefix}held:${i}`)
  await Promise.all(keys.flatMap((key) => [client.get(key), second.get(key)]))
  const pending = [...keys.map((key) => outcome(client.incr(key))), ...keys.map((key) => outcome(second.incr(key)))]
  await busyFor(600)
  const answers = await Promise.all(pending)
  t.same(answers.filter((a) => !a.startsWith('answer')), [], 'replies that arrived while the event loop was held are taken')
  t.equal(second.isCluster, true, 'the second connection is a cluster client too')

  // A pipeline answered MOVED is sent again with new promises (ioredis's initPromise): the retry
  // needs a deadline of its own, or a frozen owner node holds it for ever (the usage pipeline of
  // RedisKeyStore.usage during a resharding or failover).
  if (!(client instanceof Cluster)) throw new Error('createRedis({ cluster }) made no cluster client')
  const key = `${cluster.prefix}usage:{moved}`
  const slot = Number(await client.cluster('KEYSLOT', key))
  const owner = client.slots[slot]?.[0]
  const elsewhere = cluster.nodes.map((n) => `${n.host}:${n.port}`).find((node) => node !== owner)
  if (owner === undefined || elsewhere === undefined) throw new Error(`no owner or other node for slot ${slot}`)
  const [host = '', port = ''] = owner.split(':')
  const probe = new Redis({ host, port: Number(port), lazyConnect: true })
  const pid = Number(/process_id:(\d+)/.exec(await probe.info('server'))?.[1])
  probe.disconnect()
  const thaw = (): void => {
    try {
      process.kill(pid, 'SIGCONT')
    } catch {
      // Already gone with the cluster.
    }
  }
  process.kill(pid, 'SIGSTOP')
  t.teardown(thaw)
  // The client believes another node owns the slot: the first try is answered MOVED.
  client.slots[slot] = [elsewhere]
  const started = performance.now()
  const pipeline = client.pipeline().hgetall(key).hgetall(key).exec()
  const cutOff = new Promise<'pending'>((resolve) => setTimeout(() => resolve('pending'), 3_000).unref())
  const replies = await Promise.race([pipeline, cutOff])
  const took = performance.now() - started
  thaw()
  const errors = replies === 'pending' ? replies : (replies ?? []).map(([error]) => error?.message ?? null)
  t.same(errors, ['Command timed out', 'Command timed out'], 'a pipeline retried after MOVED to a frozen node ends at the deadline')
  t.ok(took < 2_000, `in ${took.toFixed(0)} ms`)
})
