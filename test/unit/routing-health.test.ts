import t from 'tap'
import { DeploymentHealth } from '../../src/routing/health.js'
import { localBoard } from '../../src/routing/cooldown-board.js'

t.test('failures already in flight when the deployment is taken out', async (t) => {
  const now = 1_000_000
  const h = new DeploymentHealth({ failures: 3, baseMs: 10_000, maxMs: 300_000 }, localBoard(), () => now)
  // 8 concurrent requests were in flight when the upstream started failing
  for (let i = 0; i < 8; i++) h.failed('a', 'server_error', 10)
  const period = h.coolingUntil('a') - now
  t.comment(`cooldown after one burst of 8 failures: ${period} ms (base 10000)`)
  t.equal(period, 10_000, 'one cooldown episode: baseMs')
})

t.test('retry-after shorter than the current cooldown', async (t) => {
  const now = 1_000_000
  const h = new DeploymentHealth({ failures: 3, baseMs: 10_000, maxMs: 300_000 }, localBoard(), () => now)
  h.failed('a', 'rate_limited', 1, { forMs: 60_000 })
  t.equal(h.coolingUntil('a') - now, 60_000)
  // another in-flight request gets a 429 retry-after 1 s
  h.failed('a', 'rate_limited', 1, { forMs: 1_000 })
  t.comment(`after a second 429 with retry-after 1s: ${h.coolingUntil('a') - now} ms`)
  t.ok(h.coolingUntil('a') - now >= 60_000, 'a shorter retry-after does not cut the cooldown short')
})


t.test('a probe: one request at a time, and its outcome decides', async (t) => {
  let now = 1_000_000
  const h = new DeploymentHealth({ failures: 1, baseMs: 1_000, maxMs: 300_000 }, localBoard(), () => now)
  h.failed('a', 'server_error', 1)
  t.equal(h.availability('a'), 'cooling')
  now += 1_001
  t.equal(h.availability('a'), 'probe')
  h.startProbe('a')
  t.equal(h.availability('a'), 'cooling', 'taken by one request: the others skip it')
  h.failed('a', 'server_error', 1)
  t.equal(h.coolingUntil('a') - now, 2_000, 'a failed probe doubles the period')
  now += 2_001
  h.startProbe('a')
  h.released('a')
  t.equal(h.availability('a'), 'probe', 'a probe that ended with no verdict frees it')
  h.startProbe('a')
  h.succeeded('a', 5)
  t.equal(h.availability('a'), 'healthy')
  t.match(h.status('a'), { state: 'healthy', consecutiveFailures: 0, attempts: 3 })
})
