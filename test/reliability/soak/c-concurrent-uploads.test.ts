import t from 'tap'
import { json } from '../../helpers/fake-upstream.js'
import { PROVIDER_KEY } from '../../helpers/gateway.js'
import { buildMultipart } from '../../helpers/multipart.js'
import { makePng } from '../../helpers/images.js'
import { seededRandom } from '../../helpers/random.js'
import { startStack } from '../../helpers/stack.js'
import { ABORT_BOUND_MS, crowdOfUploads, OK, randomAborts, spread } from '../harness/c-cases.js'
import { MiB, UpstreamWatch } from '../harness/c-uploads.js'
import { assertNothingLeaked, portOf, rssAfterGcMb, spoolFiles } from '../harness/invariants.js'

/*
 * Reliability plan cases 21 and 23 at full size (`npm run test:soak`); the quick versions run in
 * npm test (test/reliability/c-uploads.test.ts). 100 x 20 MB is 2 GB through the gateway twice
 * (in and out), so each crowd takes seconds to tens of seconds on a 2-core machine.
 */

t.test('#23 100 concurrent 20 MB uploads in streaming mode: all 200, peak RSS within 200 MB, no CLOSE_WAIT', async (t) => {
  await crowdOfUploads(t, { count: 100, fileBytes: 20 * MiB, peakSlackMb: 200, withinMs: 120_000 })
})

t.test('#23 100 concurrent 20 MB uploads over server.maxInFlight 40: each 200 or 503 server_busy, peak RSS within 200 MB', async (t) => {
  await crowdOfUploads(t, { count: 100, fileBytes: 20 * MiB, peakSlackMb: 200, maxInFlight: 40, withinMs: 120_000 })
})

t.test('#21 200 uploads cut off at random points: each upstream request aborted promptly, 499, slot freed, spool gone', async (t) => {
  const watch = new UpstreamWatch(json(200, OK), { tailOnly: true })
  const { upstream, gateway } = await startStack(t, { behaviour: watch.behaviour, gateway: { limits: { holdMemoryBytes: 64 * 1024 } } })
  const { key, record } = await gateway.store.create({ name: 'one at a time', concurrency: 1, budgetMicroUsd: 10_000_000 })
  const spoolBaseline = spoolFiles()
  const image = makePng({ width: 64, height: 64, seed: 210, padToBytes: 2 * MiB })
  const parts = {
    model: { name: 'model', value: 'gpt-image-1' },
    prompt: { name: 'prompt', value: 'p' },
    image: { name: 'image', filename: 'a.png', data: image }
  }
  const aborts = await randomAborts(gateway, upstream, watch, {
    key,
    forms: [
      { ...buildMultipart([parts.model, parts.prompt, parts.image]), spools: false },
      { ...buildMultipart([parts.prompt, parts.image, parts.model]), spools: true }
    ],
    rng: seededRandom(200),
    count: 220,
    warmup: 20,
    spoolBaseline
  })
  t.same(aborts.problems, [], 'every abort: 499, upstream cut off, slot freed, spool closed')
  t.ok(aborts.upstreamMs.length >= 50, `${aborts.upstreamMs.length} were cut with a live upstream request`)
  t.ok(Math.max(...aborts.upstreamMs) <= ABORT_BOUND_MS, `each within ${ABORT_BOUND_MS} ms (${spread(aborts.upstreamMs)})`)
  t.equal(upstream.received.filter((r) => r.complete).length, 0, 'no upstream request was ever completed')
  t.equal(await gateway.store.spentMicroUsd(record.id), 0, 'nothing charged')
  t.same(gateway.logs().filter((line) => line.level >= 50), [], 'no error logged')
  const rssMb = rssAfterGcMb()
  t.ok(rssMb <= aborts.rssAfterWarmupMb + 32, `RSS after GC ${rssMb.toFixed(0)} MB within 32 MB of ${aborts.rssAfterWarmupMb.toFixed(0)} MB after the first 20`)
  await assertNothingLeaked(t, {
    gateway,
    ports: [portOf(gateway.url), portOf(upstream.url)],
    received: upstream.received,
    secrets: [gateway.key, key, PROVIDER_KEY],
    spoolBaseline
  })
})
