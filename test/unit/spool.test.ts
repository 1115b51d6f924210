import { readdirSync } from 'node:fs'
import type { Readable } from 'node:stream'
import t from 'tap'
import { ByteSpool } from '../../src/multipart/spool.js'
import { seededRandom } from '../helpers/random.js'


/** Bytes whose value depends on their position, so a shifted range cannot pass for the right one. */
function patterned(start: number, length: number): Buffer {
  const out = Buffer.alloc(length)
  for (let i = 0; i < length; i++) out[i] = ((start + i) * 7 + ((start + i) >>> 8)) & 0xff
  return out
}

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const chunk of stream) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks)
}

function spoolFiles(directory: string): string[] {
  return readdirSync(directory).filter((name) => /^image-gateway-.*\.spool$/.test(name))
}

t.test('bytes under the memory cap stay in memory', async (t) => {
  const directory = t.testdir()
  const spool = new ByteSpool(100, directory)
  t.equal(spool.append(patterned(0, 60)), undefined)
  t.equal(spool.append(patterned(60, 40)), undefined, 'exactly at the cap is still memory')
  t.equal(spool.size, 100)
  t.same(readdirSync(directory), [], 'no file was made')
  t.same(await collect(spool.read(0, 100)), patterned(0, 100))
  t.same(await collect(spool.read(55, 65)), patterned(55, 10), 'a range across two chunks')
  t.same(await collect(spool.read(30, 30)), Buffer.alloc(0), 'an empty range')
  await spool.dispose()
  t.same(readdirSync(directory), [])
})

t.test('past the cap the bytes go to an unlinked file', async (t) => {
  const directory = t.testdir()
  const spool = new ByteSpool(100, directory)
  t.equal(spool.append(patterned(0, 90)), undefined)
  const pending = spool.append(patterned(90, 20))
  t.ok(pending instanceof Promise, 'the chunk that crosses the cap returns a promise')
  await pending
  t.same(spoolFiles(directory), [], 'the file is unlinked right after it is opened')
  t.same(readdirSync(directory), [], 'nothing else is left in the directory')
  const small = spool.append(patterned(110, 1))
  t.ok(small instanceof Promise, 'once on disk, even a small chunk goes to the file')
  await small
  t.equal(spool.size, 111)
  t.same(await collect(spool.read(0, 111)), patterned(0, 111))
  t.same(await collect(spool.read(85, 95)), patterned(85, 10), 'a range across memory and file')
  t.same(await collect(spool.read(90, 111)), patterned(90, 21), 'the file alone')
  t.same(await collect(spool.read(100, 105)), patterned(100, 5), 'inside the file')
  await spool.dispose()
  t.same(readdirSync(directory), [])
})

t.test('a first chunk over the cap, and a zero cap', async (t) => {
  const directory = t.testdir()
  const big = new ByteSpool(10, directory)
  const first = big.append(patterned(0, 11))
  t.ok(first instanceof Promise)
  await first
  t.equal(big.size, 11)
  t.same(await collect(big.read(0, 11)), patterned(0, 11))
  t.same(await collect(big.read(3, 4)), patterned(3, 1))
  const none = new ByteSpool(0, directory)
  t.equal(none.append(Buffer.alloc(0)), undefined, 'an empty chunk fits a zero cap')
  const one = none.append(patterned(0, 1))
  t.ok(one instanceof Promise)
  await one
  t.same(await collect(none.read(0, 1)), patterned(0, 1))
  t.same(spoolFiles(directory), [])
  await big.dispose()
  await none.dispose()
  t.same(readdirSync(directory), [])
})

t.test('read(start, end) returns exactly those bytes for many ranges', async (t) => {
  const directory = t.testdir()
  const rng = seededRandom(42)
  const cap = 4096
  const spool = new ByteSpool(cap, directory)
  const chunkEnds: number[] = []
  let total = 0
  let onDisk = false
  while (total < 40_000) {
    const size = rng() < 0.1 ? 5000 + Math.floor(rng() * 5000) : 1 + Math.floor(rng() * 700)
    const result = spool.append(patterned(total, size))
    if (result === undefined) {
      t.equal(onDisk, false, `chunk at ${total} kept in memory only before the file exists`)
      t.ok(total + size <= cap, `chunk at ${total} in memory only under the cap`)
    } else {
      onDisk = true
      await result
    }
    total += size
    chunkEnds.push(total)
  }
  t.equal(spool.size, total)
  t.equal(onDisk, true)
  const memoryEnd = chunkEnds.filter((end) => end <= cap).at(-1) ?? 0
  const edges = [0, 1, memoryEnd - 1, memoryEnd, memoryEnd + 1, total - 1, total]
  for (const end of chunkEnds.slice(0, 8)) edges.push(end - 1, end, end + 1)
  const interesting = [...new Set(edges.filter((n) => n >= 0 && n <= total))].sort((a, b) => a - b)
  const ranges: [number, number][] = []
  for (const start of interesting) for (const end of interesting) if (start <= end) ranges.push([start, end])
  for (let i = 0; i < 150; i++) {
    const a = Math.floor(rng() * (total + 1))
    const b = Math.floor(rng() * (total + 1))
    ranges.push([Math.min(a, b), Math.max(a, b)])
  }
  const wrong: string[] = []
  for (const [start, end] of ranges) {
    const got = await collect(spool.read(start, end))
    if (!got.equals(patterned(start, end - start))) wrong.push(`read(${start}, ${end}) gave ${got.length} bytes`)
  }
  t.same(wrong, [], `${ranges.length} ranges, memory/file edge at ${memoryEnd}`)
  const [whole, again] = await Promise.all([collect(spool.read(0, total)), collect(spool.read(0, total))])
  t.ok(whole.equals(patterned(0, total)) && again.equals(whole), 'two reads at once')
  t.same(spoolFiles(directory), [], 'no spool file is visible before dispose')
  await spool.dispose()
  t.same(readdirSync(directory), [])
})

t.test('appends issued without waiting still land in order', async (t) => {
  const directory = t.testdir()
  const spool = new ByteSpool(10, directory)
  const pending: (Promise<void> | undefined)[] = []
  let total = 0
  for (const size of [8, 5, 300, 1, 64, 2000, 3]) {
    pending.push(spool.append(patterned(total, size)))
    total += size
  }
  await Promise.all(pending)
  t.equal(spool.size, total)
  t.same(await collect(spool.read(0, total)), patterned(0, total))
  await spool.dispose()
})

t.test('after every spool is disposed no spool file exists; dispose is idempotent', async (t) => {
  const directory = t.testdir()
  const spools = [new ByteSpool(16, directory), new ByteSpool(16, directory), new ByteSpool(1024, directory)]
  for (const [i, spool] of spools.entries()) {
    for (let k = 0; k < 5; k++) await spool.append(patterned(k * 10, 10 + i))
  }
  t.same(spoolFiles(directory), [], 'before dispose')
  await Promise.all(spools.map((spool) => spool.dispose()))
  t.same(readdirSync(directory), [], 'after dispose')
  for (const spool of spools) {
    await t.resolves(spool.dispose(), 'a second dispose resolves')
    t.throws(() => spool.append(Buffer.from('x')), /spool disposed/, 'append after dispose throws')
  }
  t.same(readdirSync(directory), [])
})

t.test('append after dispose throws, in memory too', async (t) => {
  const spool = new ByteSpool(100, t.testdir())
  spool.append(Buffer.from('abc'))
  await spool.dispose()
  t.throws(() => spool.append(Buffer.alloc(0)), { message: 'spool disposed' })
})
