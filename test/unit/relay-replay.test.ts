import t from 'tap'
import { PassThrough, type Readable } from 'node:stream'
import { createHash } from 'node:crypto'
import { MultipartRelay } from '../../src/multipart/relay.js'
import { rulesFor } from '../../src/openai/models.js'
import { buildMultipart } from '../helpers/multipart.js'
import { makePng } from '../helpers/images.js'

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')
function collect(r: Readable): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    r.on('data', (c: Buffer) => chunks.push(c))
    r.on('end', () => resolve(Buffer.concat(chunks)))
    r.on('error', reject)
  })
}
const tick = () => new Promise((r) => setImmediate(r))

for (const hold of [1024 * 1024, 16 * 1024]) for (const when of ['sync', 'immediate', 'timeout5']) {
  t.test(`gate resolving during the second attempt's replay (hold ${hold}, ${when})`, async (t) => {
    const image = makePng({ width: 8, height: 8, seed: 1, padToBytes: 200 * 1024 })
    const form = buildMultipart([
      { name: 'model', value: 'gpt-image-1' },
      { name: 'prompt', value: 'a boat' },
      { name: 'image', filename: 'a.png', data: image, contentType: 'image/png' }
    ])
    const source = new PassThrough()
    const relay = new MultipartRelay(source as never, { endpoint: 'edits', boundary: 'test-boundary-7f3a9c', maxBodyBytes: 50e6, holdMemoryBytes: hold, idleTimeoutMs: 10_000 })
    const closeAt = form.body.length - 30
    source.write(form.body.subarray(0, 300))
    await relay.routable
    relay.route('gpt-image-1', rulesFor('gpt-image-1'))
    relay.keepForReplay(64 * 1024 * 1024)
    let open!: () => void
    relay.setEndGate(() => new Promise<void>((r) => (open = r)))
    const first = relay.body('gpt-image-1', 'gpt-image-1')
    const firstBytes: Buffer[] = []
    first.on('data', (c: Buffer) => firstBytes.push(c))
    first.on('error', () => undefined)
    source.write(form.body.subarray(300, closeAt))
    await new Promise((r) => setTimeout(r, 50))
    source.end(form.body.subarray(closeAt))
    await new Promise((r) => setTimeout(r, 50))
    t.ok(open !== undefined, 'gate pending on the closing chunk')
    // the attempt fails (undici destroys the body), the next one takes it again
    first.destroy()
    const second = relay.body('gpt-image-1', 'gpt-image-1')
    const done = collect(second)
    if (when === 'sync') open()
    else if (when === 'immediate') { await tick(); open() }
    else { await new Promise((r) => setTimeout(r, 5)); open() }
    const got = await Promise.race([done, new Promise<Buffer>((_, rej) => setTimeout(() => rej(new Error('stalled')), 3000))])
    t.equal(got.length, form.body.length, 'length ' + got.length + ' vs ' + form.body.length + ' closing-chunk-first=' + got.subarray(0,30).equals(form.body.subarray(closeAt)))
    t.equal(sha(got), sha(form.body), 'byte-identical')
    relay.dispose()
  })
}
for (const hold of [16 * 1024 * 1024, 16 * 1024]) t.test(`between attempts the source should wait (hold ${hold})`, async (t) => {
  const image = makePng({ width: 8, height: 8, seed: 1, padToBytes: 8 * 1024 * 1024 })
  const form = buildMultipart([
    { name: 'model', value: 'gpt-image-1' },
    { name: 'prompt', value: 'a boat' },
    { name: 'image', filename: 'a.png', data: image, contentType: 'image/png' }
  ])
  const source = new PassThrough({ highWaterMark: 16 * 1024 })
  const relay = new MultipartRelay(source as never, { endpoint: 'edits', boundary: 'test-boundary-7f3a9c', maxBodyBytes: 50e6, holdMemoryBytes: hold, idleTimeoutMs: 10_000 })
  source.write(form.body.subarray(0, 300))
  await relay.routable
  relay.route('gpt-image-1', rulesFor('gpt-image-1'))
  relay.keepForReplay(4 * 1024 * 1024)
  const first = relay.body('gpt-image-1', 'gpt-image-1')
  let taken = 0
  first.on('data', (c: Buffer) => { taken += c.length; if (taken > 512 * 1024) first.destroy() })
  first.on('error', () => undefined)
  // the client keeps uploading while the gateway reads the error body / sleeps out a retry-after
  let offset = 300
  const pump = async () => {
    while (offset < form.body.length) {
      const next = Math.min(offset + 64 * 1024, form.body.length)
      if (!source.write(form.body.subarray(offset, next))) await new Promise((r) => source.once('drain', r))
      offset = next
    }
    source.end()
  }
  void pump()
  await new Promise((r) => setTimeout(r, 1500))
  t.comment(`after the attempt died: upstream took ${taken}, relay read ${relay.bytesIn} of ${form.body.length}, replayable=${relay.replayable}`)
  t.ok(relay.bytesIn < 2 * 1024 * 1024, 'the relay waits for the next attempt instead of reading the upload on')
  t.ok(relay.replayable, 'still replayable')
  relay.dispose()
  source.destroy()
})
