import { request as httpRequest, type ClientRequest } from 'node:http'
import OpenAI, { toFile } from 'openai'
import t, { type Test } from 'tap'
import { DEFAULT_MULTIPART_BODY_BYTES } from '../../src/config/defaults.js'
import { hang, json, type Behaviour, type Received } from '../helpers/fake-upstream.js'
import { eventually, PROVIDER_KEY, type Gateway } from '../helpers/gateway.js'
import { sendRaw } from '../helpers/http-client.js'
import { makePng } from '../helpers/images.js'
import { buildMultipart } from '../helpers/multipart.js'
import { seededRandom } from '../helpers/random.js'
import { startStack } from '../helpers/stack.js'
import { ABORT_BOUND_MS, afterAbort, crowdOfUploads, logLine, OK, randomAborts, spread, startUpload, writeSome } from './harness/c-cases.js'
import {
  acceptedSockets,
  bytesRead,
  eventuallyAsync,
  MiB,
  pushUpload,
  sawClosingDelimiter,
  settledRssMb,
  streamedForm,
  UpstreamWatch,
  withFiller,
  type FormSpec,
  type StreamedForm
} from './harness/c-uploads.js'
import { assertError, assertNothingLeaked, noSlotsOrReservations, portOf, rssAfterGcMb, spoolFiles } from './harness/invariants.js'

/*
 * Reliability plan, group C (reliability.md section 5, cases 18-23): body size and the upload's
 * lifecycle. What is checked beyond each answer: what the upstream received (never a complete
 * form after a refusal), how much the gateway read, when the upstream request was cut off, the
 * key's slot and budget, spool files, sockets and memory.
 */

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** The form's size for a file of `fileBytes`, to size a form to an exact total. */
function formOfLength(spec: Omit<FormSpec, 'fileBytes'>, totalBytes: number): StreamedForm {
  const overhead = streamedForm({ ...spec, fileBytes: MiB }).length - MiB
  return streamedForm({ ...spec, fileBytes: totalBytes - overhead })
}

function authHeaders(key: string, form: StreamedForm): Record<string, string> {
  return { authorization: `Bearer ${key}`, 'content-type': form.contentType }
}

/** RSS after GC back within 32 MB of the baseline (invariant i), allowing V8 a moment to free dead Buffers. */
async function assertRssSettles(t: Test, baselineMb: number): Promise<void> {
  const rssMb = await settledRssMb(baselineMb + 32)
  t.ok(rssMb <= baselineMb + 32, `RSS after GC ${rssMb.toFixed(0)} MB within 32 MB of ${baselineMb.toFixed(0)} MB`)
}

function secretsOf(gateway: Gateway, ...keys: string[]): string[] {
  return [gateway.key, PROVIDER_KEY, ...keys]
}

t.test('#18 50 MB + 1 byte with Content-Length: 413 before the body is read, connection closed, upstream not called', async (t) => {
  const variants = [
    { name: 'a 50 MB cap', limits: { multipartBodyBytes: 50 * MiB }, expectContinue: false },
    { name: `the default cap (${DEFAULT_MULTIPART_BODY_BYTES / MiB} MB)`, limits: {}, expectContinue: false },
    { name: 'a 50 MB cap, with Expect: 100-continue as curl sends it', limits: { multipartBodyBytes: 50 * MiB }, expectContinue: true }
  ]
  for (const variant of variants) {
    await t.test(variant.name, async (t) => {
      const watch = new UpstreamWatch(json(200, OK), { tailOnly: true })
      const { upstream, gateway } = await startStack(t, { behaviour: watch.behaviour, gateway: { limits: variant.limits } })
      const cap = gateway.config.limits.multipartBodyBytes
      const form = formOfLength({ before: [['model', 'gpt-image-1'], ['prompt', 'p']] }, cap + 1)
      t.equal(form.length, cap + 1)
      const sockets = acceptedSockets(gateway)
      const answer = await pushUpload(portOf(gateway.url), form.pieces(), {
        path: '/v1/images/edits',
        headers: { ...authHeaders(gateway.key, form), 'content-length': String(form.length) },
        expectContinue: variant.expectContinue
      })
      assertError(t, answer, 413, 'request_too_large')
      t.equal(answer.headers.connection, 'close', 'the answer says the connection ends')
      t.ok(answer.closed, 'the gateway closed the connection')
      t.ok(answer.sent < form.length, `the client could not push the whole body (${(answer.sent / MiB).toFixed(1)} of ${(form.length / MiB).toFixed(0)} MB)`)
      const read = bytesRead(sockets)
      // A lingering close reads (and drops) at most 8 MiB more, so that the client reads the 413.
      t.ok(read <= 9 * MiB, `the gateway read ${(read / 1024).toFixed(0)} KB of it`)
      t.equal(upstream.received.length, 0, 'the upstream was not called')
      await assertNothingLeaked(t, { gateway, ports: [portOf(gateway.url), portOf(upstream.url)], secrets: secretsOf(gateway), bodies: [answer.body] })
    })
  }
})

t.test('#19 50 MB + 1 byte chunked: 413 when the count passes the cap, reading stops, upstream aborted and never completed', async (t) => {
  await t.test('a body of exactly 50 MB + 1 byte against a 50 MB cap, model first (the upstream request is live)', async (t) => {
    const watch = new UpstreamWatch(json(200, OK), { tailOnly: true })
    const { upstream, gateway } = await startStack(t, { behaviour: watch.behaviour, gateway: { limits: { multipartBodyBytes: 50 * MiB } } })
    const cap = gateway.config.limits.multipartBodyBytes
    const form = formOfLength({ before: [['model', 'gpt-image-1'], ['prompt', 'p']] }, cap + 1)
    const rssBaselineMb = rssAfterGcMb()
    const answer = await pushUpload(portOf(gateway.url), form.pieces(), {
      path: '/v1/images/edits',
      headers: { ...authHeaders(gateway.key, form), 'transfer-encoding': 'chunked' },
      chunked: true
    })
    assertError(t, answer, 413, 'request_too_large')
    t.equal(upstream.received.length, 1, 'the upstream request had begun')
    const seen = upstream.received[0] as Received
    await seen.done
    t.notOk(seen.complete, 'the upstream request was never completed')
    t.ok(seen.aborted, 'it was aborted')
    t.notOk(sawClosingDelimiter(seen, form.boundary), 'the upstream never saw the closing delimiter')
    t.ok(seen.bytes <= cap, `the upstream got ${seen.bytes} bytes, no more than the cap`)
    await assertNothingLeaked(t, {
      gateway,
      ports: [portOf(gateway.url), portOf(upstream.url)],
      received: upstream.received,
      secrets: secretsOf(gateway),
      bodies: [answer.body]
    })
    await assertRssSettles(t, rssBaselineMb)
  })

  // The relay refuses at the cap but reads on (and drops) up to 8 MiB more, with its side of the
  // connection ended, so that a client still sending reads the 413 rather than a reset (which the
  // SDKs would retry, sending the upload again); past that margin it cuts the connection.
  // Regression: Node destroyed the socket as soon as the 413 was written, so the gateway read about
  // 1 MB past the cap, and a client still sending got EPIPE, at times before it had read the 413.
  for (const halfOpen of [false, true]) {
    const name = halfOpen
      ? 'a client that keeps sending past a 5 MB cap after the gateway ended its side: read up to the 8 MiB margin, then cut off'
      : 'a client that keeps sending past a 5 MB cap: it reads the 413, not a reset, and stops when the gateway ends its side'
    await t.test(name, async (t) => {
      const watch = new UpstreamWatch(json(200, OK), { tailOnly: true })
      const { upstream, gateway } = await startStack(t, { behaviour: watch.behaviour, gateway: { limits: { multipartBodyBytes: 5 * MiB } } })
      const cap = gateway.config.limits.multipartBodyBytes
      const form = formOfLength({ before: [['model', 'gpt-image-1'], ['prompt', 'p']] }, cap + 1)
      const sockets = acceptedSockets(gateway)
      const rssBaselineMb = rssAfterGcMb()
      const pushed = form.length + 60 * MiB
      const answer = await pushUpload(portOf(gateway.url), withFiller(form.pieces(), 60 * MiB), {
        path: '/v1/images/edits',
        headers: { ...authHeaders(gateway.key, form), 'transfer-encoding': 'chunked' },
        chunked: true,
        halfOpen
      })
      assertError(t, answer, 413, 'request_too_large')
      t.equal(answer.headers.connection, 'close')
      t.ok(answer.closed, 'the connection was closed')
      t.ok(answer.sent < pushed, `the client could not push it all (${(answer.sent / MiB).toFixed(1)} of ${(pushed / MiB).toFixed(0)} MB)`)
      const read = bytesRead(sockets)
      t.ok(read <= cap + 9 * MiB, `the gateway stopped reading at ${(read / MiB).toFixed(1)} MB (cap 5 MB + 8 MiB margin)`)
      if (halfOpen) t.ok(read >= cap + 8 * MiB, 'it drained up to the margin before cutting the client off')
      else t.equal(answer.error, null, 'the client saw no reset')
      const seen = upstream.received[0] as Received
      await seen.done
      t.notOk(seen.complete, 'the upstream request was never completed')
      t.notOk(sawClosingDelimiter(seen, form.boundary))
      await assertNothingLeaked(t, {
        gateway,
        ports: [portOf(gateway.url), portOf(upstream.url)],
        received: upstream.received,
        secrets: secretsOf(gateway),
        bodies: [answer.body]
      })
      await assertRssSettles(t, rssBaselineMb)
    })
  }
})

t.test('#20 one file over its per-file limit, total under the cap: 400 image_too_large, no truncated file reaches the upstream as a whole body', async (t) => {
  const watch = new UpstreamWatch(json(200, OK), { tailOnly: true })
  const { upstream, gateway } = await startStack(t, { behaviour: watch.behaviour, gateway: { limits: { holdMemoryBytes: 256 * 1024 } } })
  const spoolBaseline = spoolFiles()
  const smallPng = makePng({ width: 16, height: 16, seed: 4 })
  const variants: { name: string; spec: FormSpec; param: string; limitBytes: number; live: boolean }[] = [
    {
      name: 'dall-e-2 takes images under 4 MB: a 5 MB one, model first',
      spec: { before: [['model', 'dall-e-2'], ['prompt', 'p']], fileBytes: 5 * MiB },
      param: 'image',
      limitBytes: 4 * MiB,
      live: true
    },
    {
      name: 'the same with the model last (the upload is held until it is known)',
      spec: { before: [['prompt', 'p']], after: [['model', 'dall-e-2']], fileBytes: 5 * MiB },
      param: 'image',
      limitBytes: 4 * MiB,
      live: false
    },
    {
      name: 'gpt-image-1 takes masks under 4 MB: a 4 MB one',
      spec: { before: [['model', 'gpt-image-1'], ['prompt', 'p']], smallFiles: [['image', smallPng]], field: 'mask', fileBytes: 4 * MiB },
      param: 'mask',
      limitBytes: 4 * MiB,
      live: true
    },
    {
      name: 'gpt-image-1 takes images under 50 MB: a 50 MB one, under the default body cap',
      spec: { before: [['model', 'gpt-image-1'], ['prompt', 'p']], fileBytes: 50 * MiB },
      param: 'image',
      limitBytes: 50 * MiB,
      live: true
    }
  ]
  const bodies: string[] = []
  for (const variant of variants) {
    const before = upstream.received.length
    const form = streamedForm(variant.spec)
    t.ok(form.length < gateway.config.limits.multipartBodyBytes, `${variant.name}: the body is under the cap`)
    const answer = await pushUpload(portOf(gateway.url), form.pieces(), {
      path: '/v1/images/edits',
      headers: { ...authHeaders(gateway.key, form), 'content-length': String(form.length) }
    })
    bodies.push(answer.body)
    assertError(t, answer, 400, 'image_too_large')
    t.match(JSON.parse(answer.body), { error: { param: variant.param } }, `${variant.name}: names ${variant.param}`)
    t.equal(answer.error, null, `${variant.name}: the client read the answer, not a reset`)
    const seen = upstream.received.slice(before)
    t.equal(seen.length, variant.live ? 1 : 0, variant.live ? 'the upstream request had begun' : 'no upstream request')
    for (const received of seen) {
      await received.done
      t.notOk(received.complete, `${variant.name}: the upstream request was cut off`)
      t.notOk(sawClosingDelimiter(received, form.boundary), 'the upstream never saw the closing delimiter')
      // The chunk in which the file reaches its limit is never sent on.
      const fileBytesSent = received.bytes - (form.length - variant.spec.fileBytes)
      t.ok(fileBytesSent < variant.limitBytes, `${variant.name}: the upstream got under the limit of the file (${(received.bytes / MiB).toFixed(2)} of ${(form.length / MiB).toFixed(2)} MB)`)
    }
  }
  t.equal(upstream.received.filter((r) => r.complete).length, 0, 'completed bodies at the upstream: 0')
  await assertNothingLeaked(t, {
    gateway,
    ports: [portOf(gateway.url), portOf(upstream.url)],
    received: upstream.received,
    secrets: secretsOf(gateway),
    bodies,
    spoolBaseline
  })
})

t.test('#21 client aborts the upload at 50 % and at 60 random points: upstream aborted promptly, 499, slot freed, spool gone, nothing charged', async (t) => {
  const watch = new UpstreamWatch(json(200, OK), { tailOnly: true })
  // A small hold in memory, so that uploads with the model last go to a spool file.
  const { upstream, gateway } = await startStack(t, { behaviour: watch.behaviour, gateway: { limits: { holdMemoryBytes: 64 * 1024 } } })
  const { key, record } = await gateway.store.create({ name: 'one at a time', concurrency: 1, budgetMicroUsd: 10_000_000 })
  const spoolBaseline = spoolFiles()
  const image = makePng({ width: 64, height: 64, seed: 21, padToBytes: 2 * MiB })
  const modelFirst = buildMultipart([
    { name: 'model', value: 'gpt-image-1' },
    { name: 'prompt', value: 'p' },
    { name: 'image', filename: 'a.png', data: image }
  ])
  const modelLast = buildMultipart([
    { name: 'prompt', value: 'p' },
    { name: 'image', filename: 'a.png', data: image },
    { name: 'model', value: 'gpt-image-1' }
  ])

  // At 50 %, once the upstream request is live.
  const half = startUpload(gateway, key, modelFirst, 'c21-half')
  await writeSome(half, modelFirst.body, Math.floor(modelFirst.body.length / 2))
  const live = await upstream.nthRequest(1)
  t.ok(await eventually(() => live.bytes > 0), 'the upload was streaming to the upstream')
  const abortedAt = Date.now()
  half.destroy()
  const first = await afterAbort(gateway, watch, [live], { requestId: 'c21-half', abortedAt, spoolBaseline })
  t.same(first.problems, [], 'at 50 %: 499, upstream cut off, slot freed, spool closed')
  t.ok(live.aborted && !live.complete, 'the upstream saw the request cut off')
  t.ok((first.upstreamMs[0] ?? Infinity) <= ABORT_BOUND_MS, `the upstream request was cut ${String(first.upstreamMs[0])} ms after the client left`)

  // At random points, with the model first (a live upstream request) or last (held in a spool file).
  const aborts = await randomAborts(gateway, upstream, watch, {
    key,
    forms: [
      { ...modelFirst, spools: false },
      { ...modelLast, spools: true }
    ],
    rng: seededRandom(2021),
    count: 60,
    warmup: 10,
    spoolBaseline
  })
  t.same(aborts.problems, [], 'every random abort: 499, upstream cut off, slot freed, spool closed')
  t.ok(aborts.spooled > 0, `some were cut while the upload was held in a spool file (${aborts.spooled})`)
  t.ok(aborts.upstreamMs.length >= 10, `${aborts.upstreamMs.length} were cut with a live upstream request`)
  t.ok(Math.max(...aborts.upstreamMs) <= ABORT_BOUND_MS, `each of those was cut within ${ABORT_BOUND_MS} ms (${spread(aborts.upstreamMs)})`)
  t.equal(upstream.received.filter((r) => r.complete).length, 0, 'no upstream request was ever completed')
  t.equal(await gateway.store.spentMicroUsd(record.id), 0, 'clients that left during the upload are charged nothing')
  t.same(gateway.logs().filter((line) => line.level >= 50), [], 'no error logged (no uncaught failure)')
  const rssMb = rssAfterGcMb()
  t.ok(rssMb <= aborts.rssAfterWarmupMb + 32, `RSS after GC ${rssMb.toFixed(0)} MB within 32 MB of ${aborts.rssAfterWarmupMb.toFixed(0)} MB after the first 10 aborts`)

  // The key's one slot is free: a whole upload goes through.
  const whole = await sendRaw(`${gateway.url}/v1/images/edits`, {
    headers: { authorization: `Bearer ${key}`, 'content-type': modelFirst.contentType },
    body: [modelFirst.body]
  })
  t.equal(whole.status, 200, 'the next request of the concurrency-1 key is admitted')
  await assertNothingLeaked(t, {
    gateway,
    ports: [portOf(gateway.url), portOf(upstream.url)],
    received: upstream.received,
    secrets: secretsOf(gateway, key),
    bodies: [whole.body.toString('utf8')],
    spoolBaseline
  })
})

/** A request sent whole (JSON or multipart), then left hanging for the test to cut off. */
function sendWhole(gateway: Gateway, key: string, kind: 'json' | 'multipart', requestId: string): ClientRequest {
  const form = buildMultipart([
    { name: 'model', value: 'gpt-image-1' },
    { name: 'prompt', value: 'p' },
    { name: 'image', filename: 'a.png', data: makePng({ width: 32, height: 32, seed: 22 }) }
  ])
  const body = kind === 'json' ? Buffer.from(JSON.stringify({ model: 'gpt-image-1', prompt: 'an otter' })) : form.body
  const req = httpRequest(`${gateway.url}/v1/images/${kind === 'json' ? 'generations' : 'edits'}`, {
    method: 'POST',
    agent: false,
    headers: {
      authorization: `Bearer ${key}`,
      'content-type': kind === 'json' ? 'application/json' : form.contentType,
      'content-length': String(body.length),
      'x-request-id': requestId
    }
  })
  req.on('error', () => undefined)
  req.end(body)
  return req
}

t.test('#22 client disconnects after the upload while the upstream generates: upstream aborted promptly, reservation kept, slot freed', async (t) => {
  const watch = new UpstreamWatch(hang)
  const { upstream, gateway } = await startStack(t, { behaviour: watch.behaviour })
  const { key, record } = await gateway.store.create({ name: 'leaver', concurrency: 1, budgetMicroUsd: 10_000_000 })
  for (const kind of ['json', 'multipart'] as const) {
    const since = upstream.received.length
    const id = `c22-${kind}`
    const spentBefore = await gateway.store.spentMicroUsd(record.id)
    const req = sendWhole(gateway, key, kind, id)
    const seen = await upstream.nthRequest(since + 1)
    t.ok(await eventually(() => seen.complete), `${kind}: the upstream has the whole request and is generating`)
    await sleep(200)
    t.notOk(watch.closedAt.has(seen), `${kind}: a client still waiting does not cut the upstream request`)
    const abortedAt = Date.now()
    req.destroy()
    t.ok(await eventually(() => watch.closedAt.has(seen), 3000), `${kind}: the upstream request was aborted`)
    const ms = (watch.closedAt.get(seen) ?? Infinity) - abortedAt
    t.ok(ms <= ABORT_BOUND_MS, `${kind}: ${ms} ms after the client left`)
    t.ok(seen.aborted, `${kind}: the upstream saw its answer cut off`)
    t.ok(await eventually(() => logLine(gateway, id) !== undefined), `${kind}: logged`)
    t.equal(logLine(gateway, id)?.status, 499, `${kind}: as 499`)
    t.ok(await eventuallyAsync(async () => (await noSlotsOrReservations(gateway)).ok, 1000), `${kind}: the slot is freed`)
    const spent = await gateway.store.spentMicroUsd(record.id)
    t.ok(spent > spentBefore, `${kind}: the reservation is kept as the cost (${spent - spentBefore} µUSD): the upstream may have made the image`)
  }
  watch.answer = json(200, OK)
  const next = await new OpenAI({ apiKey: key, baseURL: gateway.baseURL, maxRetries: 0 }).images.generate({ model: 'gpt-image-1', prompt: 'next' })
  t.same(next.data, OK.data, 'the key (concurrency 1) is admitted again')
  await assertNothingLeaked(t, {
    gateway,
    ports: [portOf(gateway.url), portOf(upstream.url)],
    received: upstream.received,
    secrets: secretsOf(gateway, key)
  })
})

/** Answers 200 `delayMs` after the whole request arrived. */
function slowAnswer(delayMs: number): Behaviour {
  return async (_request, response, received) => {
    await received.done
    await sleep(delayMs)
    const payload = Buffer.from(JSON.stringify(OK))
    response.writeHead(200, { 'content-type': 'application/json', 'content-length': payload.length })
    response.end(payload)
  }
}

t.test('#22 control: a client that waits 3 s for a slow upstream gets its 200 and the upstream sees no abort (fastify request.signal regression)', async (t) => {
  // Fastify's request.signal fires when a POST body has been read (fastify#6725); a gateway using it
  // would cut every upstream call that takes longer than the upload, JSON and multipart alike.
  const watch = new UpstreamWatch(slowAnswer(3000))
  const { upstream, gateway } = await startStack(t, { behaviour: watch.behaviour })
  const client = new OpenAI({ apiKey: gateway.key, baseURL: gateway.baseURL, maxRetries: 0, timeout: 20_000 })
  const started = Date.now()
  const [generated, edited] = await Promise.all([
    client.images.generate({ model: 'gpt-image-1', prompt: 'an otter' }),
    client.images.edit({ model: 'gpt-image-1', prompt: 'an otter', image: await toFile(makePng({ width: 32, height: 32, seed: 22 }), 'a.png', { type: 'image/png' }) })
  ])
  const elapsed = Date.now() - started
  t.same(generated.data, OK.data, 'generations (JSON): 200')
  t.same(edited.data, OK.data, 'edits (multipart): 200')
  t.ok(elapsed >= 3000, `the answers came after the upstream's 3 s (${elapsed} ms)`)
  t.equal(upstream.received.length, 2)
  for (const seen of upstream.received) {
    t.ok(seen.complete, `${seen.url}: the upstream had the whole request`)
    t.notOk(seen.aborted, `${seen.url}: and saw no abort`)
  }
  t.same(
    gateway.logs().filter((line) => line.msg === 'request').map((line) => line.status),
    [200, 200],
    'both logged as 200, none as 499'
  )
  await assertNothingLeaked(t, { gateway, ports: [portOf(gateway.url), portOf(upstream.url)], received: upstream.received, secrets: secretsOf(gateway) })
})

t.test('#23 16 concurrent 20 MB uploads (streaming, model first): all 200, peak RSS within 2 MB per upload plus 32 MB for the in-process clients; 100 in the soak', async (t) => {
  // 2 MB per upload for the gateway, and 32 MB for this process's own clients and upstream, which
  // share its memory (buffering the bodies instead would take 320 MB).
  await crowdOfUploads(t, { count: 16, fileBytes: 20 * MiB, peakSlackMb: 16 * 2 + 32, withinMs: 20_000 })
})
