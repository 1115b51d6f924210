import { randomBytes } from 'node:crypto'
import { chmodSync, mkdtempSync, rmSync } from 'node:fs'
import { access, mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { DirectoryImageStore } from '../../src/images/directory-store.js'
import { RedisImageStore } from '../../src/images/redis-store.js'
import type { ImageExtension, ImageStore } from '../../src/images/store.js'
import { StoreUnavailableError } from '../../src/keys/types.js'
import { createRedis, whenReady, type RedisClient } from '../../src/redis/client.js'
import { startRedis } from '../helpers/redis.js'

const server = await startRedis()
t.teardown(() => server.close())

/** Short enough to wait for, long enough that the first get still finds the image. */
const SHORT_TTL_MS = 200
const HOUR_MS = 3_600_000

function imageName(ext: ImageExtension = 'png'): string {
  return `${randomBytes(16).toString('base64url')}.${ext}`
}

function clock(): { now: () => number; advance: (ms: number) => void } {
  // Starts at the real time: the directory store compares temp files' ctime (real) with it.
  let nowMs = Date.now()
  return { now: () => nowMs, advance: (ms) => void (nowMs += ms) }
}

async function waitFor(check: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await check()) return true
    if (Date.now() >= deadline) return false
    await sleep(10)
  }
}

/** One backend's storage (a directory, a Redis prefix), which any number of stores can open. */
interface Place {
  /** A new store object on this storage; closed at the test's teardown. */
  open(): Promise<ImageStore>
  /** Whether the backend still holds the image's bytes, looked at directly rather than through a store. */
  holds(name: string): Promise<boolean>
  /** Redis only: whether the usage index still lists the image. */
  indexed?: (name: string) => Promise<boolean>
}

type MakePlace = (t: Test) => Promise<Place>

/** What both backends must do alike. */
function imageStoreSuite(t: Test, make: MakePlace): void {
  t.test('an image comes back byte for byte, a 3 MB one too', async (t) => {
    const store = await (await make(t)).open()
    const expiresAt = Date.now() + HOUR_MS
    const images = [
      { name: imageName('png'), bytes: randomBytes(100) },
      { name: imageName('jpeg'), bytes: randomBytes(3 * 1024 * 1024 + 7) },
      { name: imageName('webp'), bytes: Buffer.alloc(0) },
      { name: imageName('gif'), bytes: Buffer.from([0, 255, 0x0d, 0x0a, 0]) }
    ]
    for (const { name, bytes } of images) await store.put(name, bytes, expiresAt)
    for (const { name, bytes } of images) {
      const got = await store.get(name)
      t.ok(got !== null && got.equals(bytes), `${name.split('.')[1]}: the same ${bytes.length} bytes`)
    }
  })

  t.test('an unknown name is null', async (t) => {
    const store = await (await make(t)).open()
    t.equal(await store.get(imageName()), null)
    await store.put(imageName(), Buffer.from('x'), Date.now() + HOUR_MS)
    t.equal(await store.get(imageName()), null, 'also next to a stored image')
  })

  t.test('an expired image is null and deleted from the backend', async (t) => {
    const place = await make(t)
    const store = await place.open()
    const name = imageName()
    const bytes = randomBytes(64)
    await store.put(name, bytes, Date.now() + SHORT_TTL_MS)
    t.ok((await store.get(name))?.equals(bytes), 'there before it expires')
    t.ok(await place.holds(name))
    await sleep(SHORT_TTL_MS + 100)
    t.equal(await store.get(name), null, 'null once expired')
    t.notOk(await place.holds(name), 'and gone from the backend')
    if (place.indexed !== undefined) {
      t.ok(await place.indexed(name), 'the index still lists it until usage()')
      await store.usage()
      t.notOk(await place.indexed(name), 'usage() removed it from the index')
    }
  })

  t.test('usage counts the images and their bytes, before and after one expires', async (t) => {
    const place = await make(t)
    const store = await place.open()
    t.same(await store.usage(), { images: 0, bytes: 0 }, 'empty')
    const kept = randomBytes(1_000)
    const expiring = randomBytes(234)
    await store.put(imageName(), kept, Date.now() + HOUR_MS)
    await store.put(imageName('webp'), expiring, Date.now() + SHORT_TTL_MS)
    t.same(await store.usage(), { images: 2, bytes: 1_234 }, 'both')
    await sleep(SHORT_TTL_MS + 100)
    t.same(await store.usage(), { images: 1, bytes: 1_000 }, 'only the one not expired')
  })

  t.test('an image whose expiry has passed already is not stored', async (t) => {
    const place = await make(t)
    const store = await place.open()
    const name = imageName()
    await store.put(name, Buffer.from('late'), Date.now() - 1)
    t.notOk(await place.holds(name), 'nothing was written')
    t.equal(await store.get(name), null)
    t.same(await store.usage(), { images: 0, bytes: 0 })
  })

  t.test('two stores on the same storage see each other’s images, and a restarted one sees both', async (t) => {
    const place = await make(t)
    const a = await place.open()
    const b = await place.open()
    const fromA = { name: imageName(), bytes: randomBytes(300) }
    const fromB = { name: imageName('gif'), bytes: randomBytes(500) }
    await a.put(fromA.name, fromA.bytes, Date.now() + HOUR_MS)
    await b.put(fromB.name, fromB.bytes, Date.now() + HOUR_MS)
    t.ok((await b.get(fromA.name))?.equals(fromA.bytes), 'B gets what A put')
    t.ok((await a.get(fromB.name))?.equals(fromB.bytes), 'A gets what B put')
    t.same(await a.usage(), { images: 2, bytes: 800 }, 'A counts both')
    await a.close()
    await b.close()
    const restarted = await place.open()
    t.ok((await restarted.get(fromA.name))?.equals(fromA.bytes), 'a new store gets A’s image')
    t.ok((await restarted.get(fromB.name))?.equals(fromB.bytes), 'and B’s')
    t.same(await restarted.usage(), { images: 2, bytes: 800 })
  })

  t.test('names that are not image names are refused', async (t) => {
    const store = await (await make(t)).open()
    const valid = imageName()
    const refused = [
      `../${valid}`,
      `sub/${valid}`,
      `/${valid}`,
      '../../../../etc/passwd',
      `${valid.slice(0, -4)}.txt`,
      `${valid}\0`,
      'short.png',
      ''
    ]
    for (const name of refused) {
      await t.rejects(store.put(name, Buffer.from('x'), Date.now() + HOUR_MS), TypeError, `put ${JSON.stringify(name)}`)
      await t.rejects(store.get(name), TypeError, `get ${JSON.stringify(name)}`)
    }
    t.same(await store.usage(), { images: 0, bytes: 0 }, 'nothing was stored')
  })
}

// ---------------------------------------------------------------------------------------------
// The directory backend
// ---------------------------------------------------------------------------------------------

async function scratchDirectory(t: Test): Promise<string> {
  const directory = await mkdtemp(join(tmpdir(), 'igw-images-'))
  t.teardown(() => rm(directory, { recursive: true, force: true }))
  return directory
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path)
    return true
  } catch {
    return false
  }
}

async function tempFiles(directory: string): Promise<string[]> {
  return (await readdir(directory)).filter((name) => name.startsWith('.tmp-'))
}

async function openDirectory(t: Test, directory: string, options?: Parameters<typeof DirectoryImageStore.open>[1]): Promise<DirectoryImageStore> {
  const store = await DirectoryImageStore.open(directory, options)
  t.teardown(() => store.close())
  return store
}

t.test('directory store', async (t) => {
  t.test('the shared suite', async (t) => {
    imageStoreSuite(t, async (t) => {
      // A parent that does not exist yet: open creates it.
      const directory = join(await scratchDirectory(t), 'images')
      return {
        open: () => openDirectory(t, directory),
        holds: (name) => exists(join(directory, name))
      }
    })
  })

  t.test('open creates the directory and its parents, private to this user', async (t) => {
    const directory = join(await scratchDirectory(t), 'a', 'b')
    await openDirectory(t, directory)
    const stats = await stat(directory)
    t.ok(stats.isDirectory())
    t.equal(stats.mode & 0o777, 0o700)
    await openDirectory(t, directory)
    t.pass('opening an existing directory works too')
    await t.rejects(DirectoryImageStore.open(directory, { sweepEveryMs: 0 }), RangeError)
  })

  t.test('one file per image, named by the image, whose mtime is its expiry', async (t) => {
    const directory = await scratchDirectory(t)
    const store = await openDirectory(t, directory)
    const name = imageName('jpeg')
    const expiresAt = Date.now() + HOUR_MS + 123
    const bytes = randomBytes(2_000)
    await store.put(name, bytes, expiresAt)
    t.same(await readdir(directory), [name])
    const stats = await stat(join(directory, name))
    t.equal(Math.round(stats.mtimeMs), expiresAt, 'mtime is expiresAt, to the ms')
    t.equal(stats.size, bytes.length)
    t.equal(stats.mode & 0o777, 0o600, 'readable by this user only')
  })

  t.test('a get past the expiry deletes the file; a store opened later keeps the same expiry', async (t) => {
    const directory = await scratchDirectory(t)
    const time = clock()
    const store = await openDirectory(t, directory, { now: time.now })
    const name = imageName()
    await store.put(name, Buffer.from('soon gone'), time.now() + 1_000)
    time.advance(999)
    const reopened = await openDirectory(t, directory, { now: time.now })
    t.ok(await reopened.get(name), 'a new store still serves it 1 ms before expiry')
    t.ok(await store.get(name), 'and so does the first')
    time.advance(1)
    t.ok(await exists(join(directory, name)), 'the file is there until a get or a sweep looks at it')
    t.equal(await reopened.get(name), null, 'null at expiresAt')
    t.notOk(await exists(join(directory, name)), 'and the file is deleted')
    t.equal(await store.get(name), null, 'the other store: null too, not an error')
  })

  t.test('puts leave no temp file behind, concurrent ones included', async (t) => {
    const directory = await scratchDirectory(t)
    const store = await openDirectory(t, directory)
    const names = Array.from({ length: 20 }, () => imageName())
    await Promise.all(names.map((name) => store.put(name, randomBytes(50_000), Date.now() + HOUR_MS)))
    t.same(await tempFiles(directory), [])
    t.same((await readdir(directory)).sort(), [...names].sort())
  })

  t.test('a failed put leaves no temp file and no image', async (t) => {
    const directory = await scratchDirectory(t)
    const store = await openDirectory(t, directory)
    // A directory under the image's name makes the final rename fail.
    const name = imageName()
    await mkdir(join(directory, name))
    await t.rejects(store.put(name, randomBytes(1_000), Date.now() + HOUR_MS))
    t.same(await tempFiles(directory), [], 'the temp file was removed')
    t.equal(await store.get(name), null, 'a directory is not an image')
    t.same(await store.usage(), { images: 0, bytes: 0 }, 'nor counted as one')
  })

  t.test('refused names write nothing outside the directory', async (t) => {
    const parent = await scratchDirectory(t)
    const directory = join(parent, 'images')
    const store = await openDirectory(t, directory)
    const name = imageName()
    await t.rejects(store.put(`../${name}`, Buffer.from('x'), Date.now() + HOUR_MS), TypeError)
    t.same(await readdir(parent), ['images'], 'nothing next to the directory')
    t.same(await readdir(directory), [], 'nor in it, temp files included')
  })

  t.test('usage() deletes stale temp files and expired images, and leaves other files alone', async (t) => {
    const directory = await scratchDirectory(t)
    const time = clock()
    const store = await openDirectory(t, directory, { now: time.now })
    const kept = imageName()
    const expiring = imageName()
    await store.put(kept, randomBytes(10), time.now() + HOUR_MS)
    await store.put(expiring, randomBytes(20), time.now() + 5 * 60_000)
    await writeFile(join(directory, '.tmp-left-by-a-crash'), randomBytes(99))
    await writeFile(join(directory, 'README.txt'), 'not an image')
    t.same(await store.usage(), { images: 2, bytes: 30 }, 'a fresh temp file and other files are not counted')
    t.same(await tempFiles(directory), ['.tmp-left-by-a-crash'], 'a fresh temp file may be a put in progress: kept')

    // Past 10 minutes with room to spare: the temp file's ctime is real time, a few ms after the clock's start.
    time.advance(11 * 60_000)
    t.same(await store.usage(), { images: 1, bytes: 10 })
    t.same((await readdir(directory)).sort(), ['README.txt', kept].sort(), 'the stale temp file and the expired image are gone')
  })

  t.test('the sweep timer deletes expired images with no call to the store, until close()', async (t) => {
    const directory = await scratchDirectory(t)
    const time = clock()
    const store = await openDirectory(t, directory, { now: time.now, sweepEveryMs: 20 })
    const kept = imageName()
    const first = imageName()
    const second = imageName()
    await store.put(kept, Buffer.from('kept'), time.now() + HOUR_MS)
    await store.put(first, Buffer.from('first'), time.now() + 1_000)
    await store.put(second, Buffer.from('second'), time.now() + 2_000)
    await sleep(100)
    t.same((await readdir(directory)).length, 3, 'nothing is deleted before it expires')

    time.advance(1_000)
    t.ok(await waitFor(async () => !(await exists(join(directory, first))), 2_000), 'the timer deleted the expired image')
    t.ok(await exists(join(directory, second)), 'not the one that has not expired')
    t.ok(await exists(join(directory, kept)))

    await store.close()
    time.advance(1_000)
    await sleep(150)
    t.ok(await exists(join(directory, second)), 'after close() the timer no longer runs')
  })

  t.test('a sweep timer that fails does not take the process down; usage() reports the failure', async (t) => {
    const directory = join(await scratchDirectory(t), 'images')
    const store = await openDirectory(t, directory, { sweepEveryMs: 10 })
    await rm(directory, { recursive: true })
    // An unhandled rejection from the timer would fail this file.
    await sleep(100)
    await t.rejects(store.usage(), { code: 'ENOENT' })
  })
})

// ---------------------------------------------------------------------------------------------
// The Redis backend
// ---------------------------------------------------------------------------------------------

let prefixes = 0
function freshPrefix(): string {
  prefixes += 1
  return `${server.prefix}${prefixes}:`
}

function client(t: Test): RedisClient {
  const redis = createRedis(server.url)
  t.teardown(() => redis.disconnect())
  return redis
}

t.test('redis store', async (t) => {
  t.test('the shared suite', async (t) => {
    imageStoreSuite(t, async (t) => {
      const prefix = freshPrefix()
      const looker = client(t)
      // It sends commands of its own, and a client refuses them until it is connected.
      await whenReady(looker, 5_000)
      return {
        // Each store its own client, as on two instances.
        open: async () => {
          const store = new RedisImageStore(client(t), prefix)
          t.teardown(() => store.close())
          return store
        },
        holds: async (name) => (await looker.exists(`${prefix}image:${name}`)) === 1,
        indexed: async (name) => (await looker.zrange(`${prefix}images`, '0', '-1')).some((m) => m.startsWith(`${name}:`))
      }
    })
  })

  t.test('the keys: the image with a Redis expiry, and an index entry scored by expiresAt', async (t) => {
    const redis = client(t)
    const prefix = freshPrefix()
    const store = new RedisImageStore(redis, prefix)
    const name = imageName()
    const expiresAt = Date.now() + 60_000
    await store.put(name, randomBytes(4_321), expiresAt)
    t.same((await redis.keys(`${prefix}*`)).sort(), [`${prefix}image:${name}`, `${prefix}images`].sort())
    const ttl = await redis.pttl(`${prefix}image:${name}`)
    t.ok(ttl > 59_000 && ttl <= 60_000, `ttl ${ttl}`)
    t.same(await redis.zrange(`${prefix}images`, '0', '-1', 'WITHSCORES'), [`${name}:4321`, String(expiresAt)])
  })

  t.test('the index is trimmed by puts too, and by usage() on the store’s clock', async (t) => {
    const redis = client(t)
    const prefix = freshPrefix()
    const time = clock()
    const store = new RedisImageStore(redis, prefix, { now: time.now })
    const old = imageName()
    await store.put(old, randomBytes(10), time.now() + 1_000)
    t.same(await store.usage(), { images: 1, bytes: 10 })
    time.advance(1_000)
    t.same(await store.usage(), { images: 0, bytes: 0 }, 'expired by the store’s clock: not counted')
    await redis.zadd(`${prefix}images`, time.now() - 1, `${old}:10`)
    await store.put(imageName(), randomBytes(5), time.now() + 1_000)
    t.same(await redis.zrange(`${prefix}images`, '0', '-1').then((m) => m.length), 1, 'the put removed the expired entry')
  })

  t.test('close() leaves the shared client open', async (t) => {
    const redis = client(t)
    const store = new RedisImageStore(redis, freshPrefix())
    const name = imageName()
    // The put waits for the connection, so that the ping below could only fail because of close().
    await store.put(name, Buffer.from('x'), Date.now() + HOUR_MS)
    await store.close()
    t.equal(await redis.ping(), 'PONG')
    t.ok(await store.get(name), 'and the images stay')
  })

  t.test('a Redis that is not there is StoreUnavailableError, never null', async (t) => {
    const redis = createRedis('redis://127.0.0.1:1')
    t.teardown(() => redis.disconnect())
    const store = new RedisImageStore(redis, 'igwtest:down:')
    await t.rejects(store.get(imageName()), StoreUnavailableError)
    await t.rejects(store.put(imageName(), Buffer.from('x'), Date.now() + HOUR_MS), StoreUnavailableError)
    await t.rejects(store.usage(), StoreUnavailableError)
  })
})

t.test('directory store: a directory others can write to is refused', async (t) => {
  const shared = mkdtempSync(join(tmpdir(), 'igw-shared-'))
  t.teardown(() => rmSync(shared, { recursive: true, force: true }))
  chmodSync(shared, 0o777)
  await t.rejects(DirectoryImageStore.open(shared), /writable by other users/)
  chmodSync(shared, 0o700)
  const store = await DirectoryImageStore.open(shared)
  await store.close()
})
