import t, { type Test } from 'tap'
import { json, startFakeUpstream, type Behaviour, type FakeUpstream } from '../helpers/fake-upstream.js'
import { PROVIDER_KEY, eventually, startGateway, type Gateway, type GatewayOptions } from '../helpers/gateway.js'
import { sendRaw } from '../helpers/http-client.js'
import { startRedis, type TestRedis } from '../helpers/redis.js'
import { assertNothingLeaked, envelopeProblems, portOf, rssAfterGcMb } from './harness/invariants.js'
import { maxLatency, paced, steadyTraffic, tally, type Shot, type ShotSpec } from './harness/f-redis.js'

/*
 * Reliability plan section 5, group F: the key and limit store (Redis) fails under traffic.
 * The product's decisions (docs/keys.md "When Redis is in trouble"): a 300 ms command timeout and
 * no offline queue; cached keys keep working for keys.staleMs past their cache lifetime; any other
 * key gets 503 service_unavailable (never 401, never a hang); requests per minute, images per
 * minute and concurrency fall back to counting in the instance; a key with a budget is refused
 * with 503; settlements wait in a bounded queue and are replayed. The Redis here persists to an
 * append-only file, as the compose file's does, so a restarted Redis comes back with its data.
 */

const OK = { created: 1, data: [{ b64_json: 'QUJD' }] }
/** dall-e-3 hd 1024x1024: $0.08 an image, the reservation and the charge alike. */
const GENERATE = { model: 'dall-e-3', prompt: 'a lighthouse', quality: 'hd', size: '1024x1024' }
const IMAGE_COST_MICRO_USD = 80_000

interface RedisCase {
  redis: TestRedis
  upstream: FakeUpstream
  gateway: Gateway
}

async function redisCase(t: Test, options: { behaviour?: Behaviour; gateway?: Partial<GatewayOptions> } = {}): Promise<RedisCase> {
  const redis = await startRedis({ persistent: true, debugCommand: true })
  const upstream = await startFakeUpstream(options.behaviour ?? json(200, OK))
  const gateway = await startGateway({
    providers: { up: upstream.baseUrl },
    redis: { url: redis.url, keyPrefix: redis.prefix },
    ...options.gateway
  })
  t.teardown(async () => {
    await gateway.close()
    await upstream.close()
    await redis.close()
  })
  return { redis, upstream, gateway }
}

function generate(gateway: Gateway, key: string, body: unknown = GENERATE) {
  return sendRaw(`${gateway.url}/v1/images/generations`, {
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: [Buffer.from(JSON.stringify(body))]
  })
}

function statuses(shots: Shot[]): Set<number> {
  return new Set(shots.map((s) => s.status))
}

/** Every error answer in OpenAI's envelope; the problems of the first one that is not. */
function envelopeFailures(shots: Shot[]): string[] {
  const bad = shots.filter((s) => s.status !== 200 && s.status !== 0).map((s) => envelopeProblems(s.body))
  return bad.find((problems) => problems.length > 0) ?? []
}

async function until(check: () => Promise<boolean>, timeoutMs: number, stepMs = 50): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await check()) return true
    if (Date.now() >= deadline) return false
    await new Promise((resolve) => setTimeout(resolve, stepMs))
  }
}

const pause = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

function reconnected(gateway: Gateway): Promise<boolean> {
  return gateway.store.ping().then(
    () => true,
    () => false
  )
}

/**
 * RSS after GC once the first requests have compiled and allocated what later ones reuse. Taken
 * before the traffic starts: a full GC stops this process (the gateway's too) for longer than the
 * 300 ms Redis command timeout, which would fail commands that are in flight.
 */
async function warmedUpRss(gateway: Gateway): Promise<number> {
  for (let i = 0; i < 30; i++) await generate(gateway, gateway.key)
  return rssAfterGcMb()
}

/** A key cache of half a second: the outages below outlast it, so cached keys are served from the stale window. */
const SHORT_CACHE = { gateway: { keys: { cacheTtlMs: 500 } } }

t.test('#38 Redis kill -9 under steady traffic, a key revoked just before: cached keys 200, uncached 503 fast (never 401), revoked refused, recovery within the reconnect cap', async (t) => {
  const { redis, upstream, gateway } = await redisCase(t, SHORT_CACHE)
  const steady = await gateway.store.create({ name: 'steady' })
  // Limits without a budget: checked in Redis, counted in the instance while it is gone.
  const limited = await gateway.store.create({ name: 'limited', concurrency: 16, imagesPerMinute: 100_000 })
  const budgeted = await gateway.store.create({ name: 'budgeted', budgetMicroUsd: 1_000_000_000 })
  const revoked = await gateway.store.create({ name: 'revoked' })
  // Never used before the kill, so no instance has it cached.
  const fresh = await gateway.store.create({ name: 'fresh' })
  const keys = { steady, limited, budgeted, revoked, fresh }
  const labels = ['steady', 'limited', 'budgeted', 'revoked', 'fresh'] as const
  const rssBaselineMb = await warmedUpRss(gateway)
  let freshAllowed = false
  const traffic = steadyTraffic(gateway.url, 60, (i) => {
    const label = labels[i % labels.length] ?? 'steady'
    if (label === 'fresh' && !freshAllowed) return null
    return { label, key: keys[label].key, body: GENERATE }
  })

  await pause(600)
  const beforeEnd = traffic.now()
  await gateway.store.revoke(revoked.record.id)
  await redis.kill()
  const killedAt = traffic.now()
  freshAllowed = true
  await pause(800)
  const ready = await sendRaw(`${gateway.url}/readyz`, { method: 'GET' })
  t.equal(ready.status, 503, '/readyz fails while Redis is down')
  await pause(1_200)
  await redis.start()
  const restartedAt = traffic.now()
  const recovered = await until(async () => traffic.shots.some((s) => s.label === 'fresh' && s.sentMs >= restartedAt && s.status === 200), 6_000)
  const firstFresh = traffic.shots.filter((s) => s.label === 'fresh' && s.status === 200).reduce((min, s) => Math.min(min, s.sentMs), Infinity)
  const afterAt = traffic.now()
  await pause(1_000)
  const shots = await traffic.stop()

  const of = (label: string, from: number, to = Infinity): Shot[] => shots.filter((s) => s.label === label && s.sentMs >= from && s.sentMs < to)
  t.comment(`before ${JSON.stringify(tally(shots.filter((s) => s.sentMs < beforeEnd)))}`)
  for (const label of labels) {
    t.comment(`${label} outage ${JSON.stringify(tally(of(label, killedAt, restartedAt)))} max ${maxLatency(of(label, killedAt, restartedAt)).toFixed(0)} ms; after ${JSON.stringify(tally(of(label, afterAt)))}`)
  }
  t.comment(`fresh key served ${(firstFresh - restartedAt).toFixed(0)} ms after Redis answered PING again`)

  t.same(statuses(shots.filter((s) => s.sentMs < beforeEnd)), new Set([200]), 'before the kill: every request 200')
  t.same(statuses(of('steady', killedAt, restartedAt)), new Set([200]), 'outage: a cached key keeps working (past its cache lifetime, within keys.staleMs)')
  t.same(statuses(of('limited', killedAt, restartedAt)), new Set([200]), 'outage: a cached key with limits keeps working (counted in the instance)')
  const freshOutage = of('fresh', killedAt, restartedAt)
  t.ok(freshOutage.length >= 10, `outage: ${freshOutage.length} requests with an uncached key`)
  t.ok(freshOutage.every((s) => s.status === 503 && s.code === 'service_unavailable'), 'outage: an uncached key gets 503 service_unavailable, never 401')
  t.ok(maxLatency(freshOutage) < 1_000, `outage: every 503 within a second (slowest ${maxLatency(freshOutage).toFixed(0)} ms)`)
  t.ok(of('budgeted', killedAt, restartedAt).every((s) => s.status === 503 && s.code === 'service_unavailable'), 'outage: a key with a budget is refused with 503 (fail closed)')
  const revokedLater = of('revoked', killedAt)
  t.ok(revokedLater.length > 0 && revokedLater.every((s) => s.status !== 200), 'the key revoked before the kill is never served again')
  t.ok(of('revoked', killedAt, restartedAt).every((s) => s.status === 503 || s.status === 401), 'outage: the revoked key is refused (401 or 503)')
  t.ok(recovered, 'after the restart an uncached key is served')
  t.ok(firstFresh - restartedAt < 4_000, `recovery within the 2 s reconnect cap, with margin (${(firstFresh - restartedAt).toFixed(0)} ms)`)
  for (const label of ['steady', 'limited', 'budgeted', 'fresh']) t.same(statuses(of(label, afterAt)), new Set([200]), `after: ${label} served`)
  t.ok(of('revoked', afterAt).every((s) => s.status === 401 && s.code === 'invalid_api_key'), 'after: the revoked key gets 401 invalid_api_key')
  t.notOk(shots.some((s) => s.status === 0 || (s.status >= 500 && s.code !== 'service_unavailable')), 'no hang, no 500')
  t.same(envelopeFailures(shots), [], 'every error in OpenAI\'s envelope')

  t.ok(await eventually(() => gateway.app.keys.meter.pendingSettlements === 0, 5_000), 'queued settlements replayed')
  const served = shots.filter((s) => s.label === 'steady' && s.status === 200).length
  const [today, yesterday] = await gateway.store.usage(steady.record.id, 2, Date.now())
  t.equal((today?.requests ?? 0) + (yesterday?.requests ?? 0), served, `usage reconciles: ${served} requests served, each counted once`)
  t.equal((await sendRaw(`${gateway.url}/readyz`, { method: 'GET' })).status, 200, '/readyz ready again')
  await assertNothingLeaked(t, {
    gateway,
    ports: [portOf(gateway.url), portOf(upstream.url)],
    received: upstream.received,
    secrets: [PROVIDER_KEY, ...Object.values(keys).map((k) => k.key)],
    bodies: shots.map((s) => s.body),
    rssBaselineMb
  })
})

t.test('#39 Redis frozen (SIGSTOP, DEBUG SLEEP, CLIENT PAUSE ALL): every Redis call ends at the command timeout, cached keys 200, uncached 503, nothing stuck after the thaw', async (t) => {
  const { redis, upstream, gateway } = await redisCase(t, SHORT_CACHE)
  const steady = await gateway.store.create({ name: 'steady' })
  const limited = await gateway.store.create({ name: 'limited', concurrency: 16, imagesPerMinute: 100_000 })
  // A low concurrency: admissions that Redis runs after the thaw, for requests refused during the
  // freeze, would hold its slots until keys.leaseMs (15 min) unless released.
  const budgeted = await gateway.store.create({ name: 'budgeted', concurrency: 3, budgetMicroUsd: 1_000_000_000 })
  const rssBaselineMb = await warmedUpRss(gateway)
  const secrets = [PROVIDER_KEY, steady.key, limited.key, budgeted.key]
  const bodies: string[] = []
  const FREEZE_MS = 1_500
  /** True once Redis does not answer a PING within 100 ms. */
  const frozen = (): Promise<boolean> => redis.command(['PING'], 100).then((reply) => reply === undefined)
  const freezes: { name: string; begin: () => Promise<void>; end: () => void }[] = [
    { name: 'SIGSTOP', begin: async () => redis.freeze(), end: () => redis.thaw() },
    {
      name: 'DEBUG SLEEP',
      // The reply comes when the sleep ends; nothing waits for it.
      begin: async () => {
        void redis.command(['DEBUG', 'SLEEP', String(FREEZE_MS / 1000)], FREEZE_MS + 5_000)
        t.ok(await until(frozen, 1_000, 0), 'DEBUG SLEEP: Redis asleep')
      },
      end: () => undefined
    },
    {
      name: 'CLIENT PAUSE ALL',
      begin: async () => {
        t.equal(await redis.command(['CLIENT', 'PAUSE', String(FREEZE_MS), 'ALL']), 'OK', 'CLIENT PAUSE accepted')
      },
      end: () => undefined
    }
  ]
  for (const freeze of freezes) {
    const fresh = await gateway.store.create({ name: `fresh ${freeze.name}` })
    secrets.push(fresh.key)
    const keys = { steady, limited, budgeted, fresh }
    const labels = ['steady', 'limited', 'budgeted', 'fresh'] as const
    let sendFresh = false
    const traffic = steadyTraffic(gateway.url, 50, (i) => {
      const label = labels[i % labels.length] ?? 'steady'
      if (label === 'fresh' && !sendFresh) return null
      return { label, key: keys[label].key, body: GENERATE }
    })
    await pause(300)
    // DEBUG SLEEP and CLIENT PAUSE end by themselves FREEZE_MS after they began, SIGSTOP when
    // thawed then: no Redis answer comes before thawedAt.
    const thawedAt = traffic.now() + FREEZE_MS
    await freeze.begin()
    const frozenAt = traffic.now()
    sendFresh = true
    const ready = await sendRaw(`${gateway.url}/readyz`, { method: 'GET' })
    await pause(Math.max(0, thawedAt - traffic.now()))
    freeze.end()
    // The backlog Redis runs at the thaw (these keys have no requests-per-minute limit, so the
    // rate limiter's 1 s skip of a failed Redis plays no part).
    await pause(500)
    const afterAt = traffic.now()
    await pause(500)
    const shots = await traffic.stop()
    bodies.push(...shots.map((s) => s.body))
    const of = (label: string, from: number, to = Infinity): Shot[] => shots.filter((s) => s.label === label && s.sentMs >= from && s.sentMs < to)
    // Answered while Redis was still frozen: whatever ended them, it was not Redis answering.
    const inside = (label: string): Shot[] => of(label, frozenAt).filter((s) => s.sentMs + s.latencyMs < thawedAt)
    for (const label of labels) {
      t.comment(`${freeze.name} ${label}: frozen ${JSON.stringify(tally(inside(label)))} max ${maxLatency(inside(label)).toFixed(0)} ms; after ${JSON.stringify(tally(of(label, afterAt)))}`)
    }
    t.equal(ready.status, 503, `${freeze.name}: /readyz fails while Redis does not answer`)
    // Cached keys are served whenever their answer comes: every one sent during the freeze is a 200.
    t.same(statuses(of('steady', frozenAt, thawedAt)), new Set([200]), `${freeze.name}: a cached key keeps working (past its cache lifetime, within keys.staleMs)`)
    t.same(statuses(of('limited', frozenAt, thawedAt)), new Set([200]), `${freeze.name}: a cached key with limits keeps working (counted in the instance)`)
    t.ok(inside('steady').length > 0 && inside('limited').length > 0, `${freeze.name}: some of them answered before the thaw`)
    const fresh503 = inside('fresh')
    t.ok(fresh503.length >= 3 && fresh503.every((s) => s.status === 503 && s.code === 'service_unavailable'), `${freeze.name}: an uncached key gets 503 service_unavailable (never 401), ${fresh503.length} of them before the thaw`)
    const latencies = fresh503.map((s) => s.latencyMs).sort((a, b) => a - b)
    t.ok((latencies[0] ?? 0) >= 250, `${freeze.name}: ended by the 300 ms command timeout (fastest ${(latencies[0] ?? 0).toFixed(0)} ms)`)
    // The docs promise a 503 within a second; the margin is for a loaded machine.
    t.ok((latencies[Math.floor(latencies.length / 2)] ?? 0) < 1_000, `${freeze.name}: median 503 within a second (${(latencies[Math.floor(latencies.length / 2)] ?? 0).toFixed(0)} ms; slowest ${maxLatency(fresh503).toFixed(0)} ms)`)
    t.ok(inside('budgeted').length > 0 && inside('budgeted').every((s) => s.status === 503 && s.code === 'service_unavailable'), `${freeze.name}: a key with a budget is refused with 503`)
    for (const label of labels) t.same(statuses(of(label, afterAt)), new Set([200]), `${freeze.name}, after the thaw: ${label} served, nothing stuck at 429`)
    t.notOk(shots.some((s) => s.status === 0 || (s.status >= 500 && s.code !== 'service_unavailable')), `${freeze.name}: no hang, no 500`)
    t.same(envelopeFailures(shots), [], `${freeze.name}: every error in OpenAI's envelope`)
  }
  t.ok(await eventually(() => gateway.app.keys.meter.pendingSettlements === 0, 5_000), 'queued settlements replayed')
  const slots = await redis.command(['ZCARD', `${redis.prefix}slots:{${budgeted.record.id}}`])
  const reserved = await redis.command(['HLEN', `${redis.prefix}reserved:{${budgeted.record.id}}`])
  t.same([slots, reserved], [0, 0], 'no slot or reservation of the budgeted key left in Redis')
  await assertNothingLeaked(t, {
    gateway,
    ports: [portOf(gateway.url), portOf(upstream.url)],
    received: upstream.received,
    secrets,
    bodies,
    rssBaselineMb
  })
})

/*
 * The plan's #40 assumes a rate-limit Redis apart from the key Redis. This product keeps keys and
 * every counter in one Redis (docs/keys.md), so the case is run as its spirit: the counting fails
 * while key lookups keep working. Redis 7 ACLs take the scripting commands away from the gateway's
 * user (every limit, admission and settlement is a Lua script; a key lookup is GET and HGETALL),
 * the way LiteLLM's limiter lost Redis behind proxies that block SCRIPT (BerriAI/litellm#32232).
 * Then the whole Redis goes down with the key cached. Either way the limits keep being enforced,
 * counted in each instance: 429s at the key's limit per instance, never unlimited, never a 500.
 */
t.test('#40 the limit counters fail while key lookups work (one Redis for both): limits enforced in each instance, 429 at the limit, never unlimited, never 500', async (t) => {
  const { redis, upstream, gateway: a } = await redisCase(t)
  const b = await startGateway({ providers: { up: upstream.baseUrl }, redis: { url: redis.url, keyPrefix: redis.prefix } })
  t.teardown(() => b.close())
  const bodies: string[] = []
  const secrets = [PROVIDER_KEY]
  const shoot = async (gateway: Gateway, key: string, count: number, body: unknown = GENERATE): Promise<Shot[]> => {
    const specs: ShotSpec[] = Array.from({ length: count }, () => ({ label: 'x', key, body }))
    const shots = await paced(gateway.url, 50, specs)
    bodies.push(...shots.map((s) => s.body))
    return shots
  }
  const served = (shots: Shot[]): number => shots.filter((s) => s.status === 200).length

  t.equal(await redis.command(['ACL', 'SETUSER', 'default', '-@scripting']), 'OK', 'scripts denied to the gateway\'s Redis user')
  // Made while the counters fail, so nobody has it cached: its lookup works, its counting does not.
  const rpm = await a.store.create({ name: 'rpm', rpm: 10 })
  const ipm = await a.store.create({ name: 'ipm', imagesPerMinute: 5 })
  const budgeted = await a.store.create({ name: 'budgeted', budgetMicroUsd: 1_000_000_000 })
  secrets.push(rpm.key, ipm.key, budgeted.key)

  const onA = await shoot(a, rpm.key, 25)
  const onB = await shoot(b, rpm.key, 25)
  t.comment(`rpm 10, scripts denied: instance a ${JSON.stringify(tally(onA))}, instance b ${JSON.stringify(tally(onB))}`)
  for (const [name, shots] of [['a', onA], ['b', onB]] as const) {
    t.equal(served(shots), 10, `instance ${name}: exactly the limit served (counted in the instance)`)
    const refused = shots.filter((s) => s.status !== 200)
    t.ok(refused.length === 15 && refused.every((s) => s.status === 429 && s.code === 'rate_limit_exceeded'), `instance ${name}: the rest 429 rate_limit_exceeded`)
    t.ok(refused.every((s) => s.headers['x-ratelimit-limit-requests'] === '10' && Number(s.headers['retry-after']) >= 1), `instance ${name}: with the limit and retry-after headers`)
  }
  t.ok(served(onA) + served(onB) <= 2 * 10, 'two instances: at most twice the limit (docs/deployment.md: N instances, N times the limit)')

  const images = await shoot(a, ipm.key, 10)
  t.comment(`images per minute 5, scripts denied: ${JSON.stringify(tally(images))}`)
  t.equal(served(images), 5, 'images per minute: exactly the limit served')
  t.ok(images.filter((s) => s.status !== 200).every((s) => s.status === 429 && s.code === 'rate_limit_exceeded' && s.headers['x-ratelimit-limit-images'] === '5'), 'then 429 with the images headers')

  const budget = await shoot(a, budgeted.key, 3)
  t.ok(budget.every((s) => s.status === 503 && s.code === 'service_unavailable'), 'a key with a budget: 503, its spending cannot be checked')

  // Key lookups kept working: these keys were found although no one had them cached.
  t.notOk([...onA, ...onB, ...images, ...budget].some((s) => s.status === 401 || s.status === 0 || s.status === 500), 'no 401, no hang, no 500')

  t.equal(await redis.command(['ACL', 'SETUSER', 'default', '+@all']), 'OK', 'scripts allowed again')
  // A failed counter is skipped for 1 s (src/redis/health.ts), then the shared count resumes.
  await pause(1_100)
  const shared = await a.store.create({ name: 'shared again', rpm: 4 })
  secrets.push(shared.key)
  const again = [...(await shoot(a, shared.key, 3)), ...(await shoot(b, shared.key, 3))]
  t.equal(served(again), 4, 'scripts back: one limit shared by both instances again')
  t.ok(await eventually(() => a.app.keys.meter.pendingSettlements === 0 && b.app.keys.meter.pendingSettlements === 0, 5_000), 'settlements queued while scripts failed are replayed')
  const [today] = await a.store.usage(rpm.record.id, 1, Date.now())
  t.equal(today?.requests, 20, 'usage of the requests served while counting failed is recorded once each')

  // The whole Redis down, the key cached: still counted in the instance, still refused at the limit.
  const cached = await a.store.create({ name: 'cached', rpm: 10 })
  secrets.push(cached.key)
  t.equal((await generate(a, cached.key)).status, 200, 'the key is cached (and its first request counted in Redis)')
  await redis.kill()
  const down = await shoot(a, cached.key, 25)
  t.comment(`rpm 10, Redis killed: ${JSON.stringify(tally(down))}`)
  t.equal(served(down), 10, 'Redis down: the limit counted afresh in the instance, never unlimited')
  t.ok(down.filter((s) => s.status !== 200).every((s) => s.status === 429 && s.code === 'rate_limit_exceeded'), 'then 429, never 500')
  t.same(envelopeFailures([...onA, ...onB, ...images, ...budget, ...again, ...down]), [], 'every error in OpenAI\'s envelope')
  await redis.start()
  t.ok(await until(() => reconnected(a), 5_000), 'the gateway reconnects by itself')
  await assertNothingLeaked(t, {
    gateway: a,
    ports: [portOf(a.url), portOf(b.url), portOf(upstream.url)],
    received: upstream.received,
    secrets,
    bodies
  })
})

t.test('#41 Redis flapping (stopped and started every second or so): no unhandled error, queues and memory bounded, nothing logged per Redis failure, all normal once it stays up', async (t) => {
  const { redis, upstream, gateway } = await redisCase(t)
  const shared = gateway.app.keys.backend.shared
  if (shared === null) throw new Error('the gateway should be on Redis')
  const steady = await gateway.store.create({ name: 'steady' })
  const limited = await gateway.store.create({ name: 'limited', concurrency: 16, imagesPerMinute: 100_000 })
  const budgeted = await gateway.store.create({ name: 'budgeted', concurrency: 4, budgetMicroUsd: 1_000_000_000 })
  // Looked up in turn during the flapping: each first lookup needs Redis.
  const pool = await Promise.all(Array.from({ length: 20 }, (_, i) => gateway.store.create({ name: `pool ${i}` })))
  const rssBaselineMb = await warmedUpRss(gateway)

  const events = ['ready', 'connect', 'close', 'end', 'error', 'reconnecting', 'message']
  const listeners = (): number[] => [shared.redis, shared.subscriber].flatMap((client) => events.map((name) => client.listenerCount(name)))
  const listenersBefore = listeners()
  const unhandled: unknown[] = []
  const onUnhandled = (reason: unknown): void => void unhandled.push(reason)
  process.on('unhandledRejection', onUnhandled)
  process.on('uncaughtException', onUnhandled)
  t.teardown(() => {
    process.off('unhandledRejection', onUnhandled)
    process.off('uncaughtException', onUnhandled)
  })
  const logsBefore = gateway.logs().length

  const keys = { steady, limited, budgeted }
  const labels = ['steady', 'limited', 'budgeted', 'pool'] as const
  let turn = 0
  const traffic = steadyTraffic(gateway.url, 50, (i) => {
    const label = labels[i % labels.length] ?? 'steady'
    const key = label === 'pool' ? (pool[turn++ % pool.length]?.key ?? '') : keys[label].key
    return { label, key, body: GENERATE }
  })
  let peakPending = 0
  const sampler = setInterval(() => (peakPending = Math.max(peakPending, gateway.app.keys.meter.pendingSettlements)), 20)
  t.teardown(() => clearInterval(sampler))
  let transitions = 0
  for (let cycle = 0; cycle < 4; cycle++) {
    await pause(700)
    if (cycle % 2 === 0) await redis.stop()
    else await redis.kill()
    transitions += 1
    await pause(700)
    await redis.start()
    transitions += 1
  }
  const flappingEnd = traffic.now()
  t.ok(await until(() => reconnected(gateway), 5_000), 'the gateway reconnects by itself once Redis stays up')
  // The replayed backlog and the 1 s that the rate limiter skips a failed Redis.
  await pause(1_100)
  const afterAt = traffic.now()
  await pause(600)
  const shots = await traffic.stop()
  clearInterval(sampler)
  const logs = gateway.logs().slice(logsBefore)

  const during = shots.filter((s) => s.sentMs < flappingEnd)
  for (const label of labels) {
    t.comment(`${label}: flapping ${JSON.stringify(tally(during.filter((s) => s.label === label)))}; after ${JSON.stringify(tally(shots.filter((s) => s.label === label && s.sentMs >= afterAt)))}`)
  }
  t.same(statuses(during.filter((s) => s.label === 'steady' || s.label === 'limited')), new Set([200]), 'cached keys served throughout')
  t.ok(during.every((s) => s.status === 200 || (s.status === 503 && s.code === 'service_unavailable')), 'every answer 200 or 503 service_unavailable: no 401, no 429 from a stuck slot, no 500, no hang')
  for (const label of labels) t.same(statuses(shots.filter((s) => s.label === label && s.sentMs >= afterAt)), new Set([200]), `after: ${label} served`)
  t.same(envelopeFailures(shots), [], 'every error in OpenAI\'s envelope')
  t.same(unhandled.map(String), [], 'no unhandled rejection or uncaught exception')
  t.same(listeners(), listenersBefore, 'no listener piles up on the Redis clients')

  t.ok(peakPending <= shots.length, `settlement queue bounded by the requests (peak ${peakPending} for ${shots.length} requests)`)
  t.ok(await eventually(() => gateway.app.keys.meter.pendingSettlements === 0, 5_000), 'queued settlements replayed')
  const usage = await gateway.store.usage(steady.record.id, 2, Date.now())
  const counted = usage.reduce((sum, day) => sum + day.requests, 0)
  const servedSteady = shots.filter((s) => s.label === 'steady' && s.status === 200).length
  t.equal(counted, servedSteady, `usage reconciles: ${servedSteady} requests served, each counted once`)

  // One line per request (and one more for each 5xx, with its cause), none per Redis failure.
  const byMessage: Record<string, number> = {}
  for (const line of logs) byMessage[line.msg] = (byMessage[line.msg] ?? 0) + 1
  t.comment(`log lines: ${JSON.stringify(byMessage)} for ${shots.length} requests and ${transitions} transitions`)
  const outsideRequests = logs.filter((line) => line.reqId === undefined)
  t.ok(outsideRequests.length <= transitions, `log lines outside requests at most one per transition (${outsideRequests.length} for ${transitions})`)
  const perRequest = logs.filter((line) => line.reqId !== undefined)
  const fiveHundreds = shots.filter((s) => s.status >= 500).length
  t.ok(perRequest.length <= shots.length + fiveHundreds, `at most one line per request and one per 5xx (${perRequest.length} lines, ${shots.length} requests, ${fiveHundreds} 5xx)`)

  await assertNothingLeaked(t, {
    gateway,
    ports: [portOf(gateway.url), portOf(upstream.url)],
    received: upstream.received,
    secrets: [PROVIDER_KEY, steady.key, limited.key, budgeted.key, ...pool.map((p) => p.key)],
    bodies: shots.map((s) => s.body),
    rssBaselineMb
  })
})

/** An upstream that holds each answer until `open()` (then answers at once until `hold()`). */
function gatedUpstream(): { behaviour: Behaviour; open(): void; hold(): void } {
  let waiting: (() => void)[] = []
  let opened = false
  return {
    behaviour: async (_request, response, received) => {
      await received.done
      if (!opened) await new Promise<void>((resolve) => waiting.push(resolve))
      response.writeHead(200, { 'content-type': 'application/json' })
      response.end(JSON.stringify(OK))
    },
    open() {
      opened = true
      for (const resolve of waiting) resolve()
      waiting = []
    },
    hold() {
      opened = false
    }
  }
}

t.test('#42 Redis stopped with a request in flight, then restarted: the slot and reservation are released (replay, or the lease for a lost instance), no key stuck at 429', async (t) => {
  const gate = gatedUpstream()
  const { redis, upstream, gateway } = await redisCase(t, { behaviour: gate.behaviour })
  const slotCounts = async (keyId: string): Promise<unknown[]> => [
    await redis.command(['ZCARD', `${redis.prefix}slots:{${keyId}}`]),
    await redis.command(['HLEN', `${redis.prefix}reserved:{${keyId}}`])
  ]
  const bodies: string[] = []
  const send = async (target: Gateway, key: string): Promise<{ status: number; code: string | null }> => {
    const answer = await generate(target, key)
    const body = answer.body.toString('utf8')
    bodies.push(body)
    return { status: answer.status, code: answer.status === 200 ? null : (JSON.parse(body) as { error: { code: string } }).error.code }
  }
  /** Sends one request every 100 ms until one is served; every answer on the way. */
  const untilServed = async (target: Gateway, key: string, timeoutMs: number): Promise<{ answers: string[]; ms: number }> => {
    const started = Date.now()
    const answers: string[] = []
    while (Date.now() - started < timeoutMs) {
      const { status, code } = await send(target, key)
      answers.push(code === null ? String(status) : `${status} ${code}`)
      if (status === 200) break
      await pause(100)
    }
    return { answers, ms: Date.now() - started }
  }

  // A: the instance that admitted the request lives on; its queued settlement frees the slot.
  const one = await gateway.store.create({ name: 'one at a time', concurrency: 1, budgetMicroUsd: 1_000_000 })
  const first = send(gateway, one.key)
  await upstream.nthRequest(1)
  t.same(await slotCounts(one.record.id), [1, 1], 'in flight: one slot and one reservation in Redis')
  t.same(await send(gateway, one.key), { status: 429, code: 'rate_limit_exceeded' }, 'a second request is over the concurrency of 1')
  await redis.stop()
  t.same(await send(gateway, one.key), { status: 503, code: 'service_unavailable' }, 'Redis down: 503 (the budget cannot be checked), not 429')
  gate.open()
  t.same(await first, { status: 200, code: null }, 'the request in flight is answered')
  t.ok(await eventually(() => gateway.app.keys.meter.pendingSettlements >= 1, 2_000), 'its settlement waits for Redis')
  await redis.start()
  const replayed = await untilServed(gateway, one.key, 6_000)
  t.comment(`after the restart: ${replayed.answers.join(', ')} (${replayed.ms} ms)`)
  t.equal(replayed.answers.at(-1), '200', 'a new request is served')
  t.ok(replayed.ms < 5_000, `within the reconnect cap and the 1 s settlement retry, not the 15 min lease (${replayed.ms} ms)`)
  t.ok(replayed.answers.every((a) => a === '200' || a === '429 rate_limit_exceeded' || a === '503 service_unavailable'), 'on the way: only 429 or 503')
  t.ok(await eventually(() => gateway.app.keys.meter.pendingSettlements === 0, 5_000), 'every settlement replayed')
  t.same(await slotCounts(one.record.id), [0, 0], 'no slot or reservation left in Redis')
  t.equal(await gateway.store.spentMicroUsd(one.record.id), 2 * IMAGE_COST_MICRO_USD, 'both served requests charged once each (the replay did not charge twice)')
  const [today] = await gateway.store.usage(one.record.id, 1, Date.now())
  t.equal(today?.requests, 2, 'usage: the two served requests, once each')

  // B: the instance that admitted the request goes away while Redis is down, its settlement with
  // it (a crash); the slot lapses with the lease (keys.leaseMs, short here) and no later.
  gate.hold()
  const leaseMs = 4_000
  const doomed = await startGateway({ providers: { up: upstream.baseUrl }, redis: { url: redis.url, keyPrefix: redis.prefix }, keys: { leaseMs } })
  const lost = await gateway.store.create({ name: 'lost settlement', concurrency: 1, budgetMicroUsd: 1_000_000 })
  const admittedAt = Date.now()
  const inFlight = send(doomed, lost.key)
  await upstream.nthRequest(upstream.received.length + 1)
  await redis.stop()
  gate.open()
  t.same(await inFlight, { status: 200, code: null }, 'the request in flight is answered')
  const closing = Date.now()
  // Closing must not wait for Redis: the cooldown board's UNSUBSCRIBE used to wait for its return.
  const closed = await Promise.race([doomed.close().then(() => true), pause(3_000).then(() => false)])
  t.ok(closed, `an instance closes while Redis is down (${Date.now() - closing} ms)`)
  t.match(doomed.logText(), /closing with usage settlements the key store never took/, 'the instance that goes away logs the settlement it could not deliver')
  await redis.start()
  t.ok(await until(() => reconnected(gateway), 5_000), 'the surviving instance reconnects')
  t.same(await slotCounts(lost.record.id), [1, 1], 'the dead instance\'s slot and reservation are still in Redis')
  const lapsed = await untilServed(gateway, lost.key, leaseMs + 4_000)
  const servedAfterMs = Date.now() - admittedAt
  t.comment(`on the surviving instance: ${lapsed.answers.join(', ')}; served ${servedAfterMs} ms after the lost request was admitted (lease ${leaseMs} ms)`)
  t.equal(lapsed.answers[0], '429 rate_limit_exceeded', 'first refused: the lost request still holds the only slot')
  t.equal(lapsed.answers.at(-1), '200', 'then served: the slot lapsed with the lease')
  t.ok(servedAfterMs >= leaseMs - 200 && servedAfterMs < leaseMs + 3_000, 'served once the lease ran out, and soon after')
  t.same(await slotCounts(lost.record.id), [0, 0], 'no slot or reservation left in Redis')
  t.equal(await gateway.store.spentMicroUsd(lost.record.id), IMAGE_COST_MICRO_USD, 'the lost settlement is never charged; the later request is')

  await assertNothingLeaked(t, {
    gateway,
    ports: [portOf(gateway.url), portOf(doomed.url), portOf(upstream.url)],
    received: upstream.received,
    secrets: [PROVIDER_KEY, one.key, lost.key],
    bodies
  })
})
