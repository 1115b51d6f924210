import t from 'tap'
import { ImageStore } from '../../src/sandbox/image-store.js'

function clock(startMs = 1_000_000): { now: () => number; advance: (ms: number) => void } {
  let nowMs = startMs
  return { now: () => nowMs, advance: (ms) => (nowMs += ms) }
}

t.test('an image is served until its lifetime is over, then gone', async (t) => {
  const time = clock()
  const store = new ImageStore({ ttlMs: 60_000, maxBytes: 1024, now: time.now })
  const name = store.put(Buffer.from('png'), 'image/png', 'png')
  t.match(name, /^[0-9a-f]{32}\.png$/)
  t.same(store.get(name), { bytes: Buffer.from('png'), contentType: 'image/png', expiresAtMs: 1_060_000 })
  time.advance(59_999)
  t.ok(store.get(name))
  time.advance(1)
  t.equal(store.get(name), undefined)
  t.equal(store.totalBytes, 0, 'expired bytes are released')
  t.equal(store.get('no-such.png'), undefined)
})

t.test('over the byte cap, the oldest images go first', async (t) => {
  const time = clock()
  const store = new ImageStore({ ttlMs: 60_000, maxBytes: 100, now: time.now })
  const a = store.put(Buffer.alloc(40), 'image/png', 'png')
  time.advance(1)
  const b = store.put(Buffer.alloc(40), 'image/png', 'png')
  time.advance(1)
  const c = store.put(Buffer.alloc(40), 'image/png', 'png')
  t.equal(store.get(a), undefined, 'the oldest was dropped')
  t.ok(store.get(b))
  t.ok(store.get(c))
  t.equal(store.totalBytes, 80)
  t.equal(store.size, 2)
})

t.test('an image larger than the cap is kept, alone, so the URL just answered works', async (t) => {
  const store = new ImageStore({ ttlMs: 60_000, maxBytes: 100 })
  const small = store.put(Buffer.alloc(10), 'image/png', 'png')
  const big = store.put(Buffer.alloc(500), 'image/png', 'png')
  t.equal(store.get(small), undefined)
  t.equal(store.get(big)?.bytes.length, 500)
  t.equal(store.totalBytes, 500)
  store.clear()
  t.equal(store.totalBytes, 0)
  t.equal(store.size, 0)
})

t.test('expired images are dropped on put too, without a timer', async (t) => {
  const time = clock()
  const store = new ImageStore({ ttlMs: 10, maxBytes: 1000, now: time.now })
  for (let i = 0; i < 5; i++) store.put(Buffer.alloc(100), 'image/png', 'png')
  time.advance(10)
  store.put(Buffer.alloc(1), 'image/png', 'png')
  t.equal(store.size, 1)
  t.equal(store.totalBytes, 1)
})
