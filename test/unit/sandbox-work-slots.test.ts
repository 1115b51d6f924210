import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { WorkSlots } from '../../src/sandbox/work-slots.js'

t.test('never more than the limit at once, the rest in arrival order', async (t) => {
  const slots = new WorkSlots(2)
  let running = 0
  let peak = 0
  const started: number[] = []
  const jobs = Array.from({ length: 6 }, (_, i) =>
    slots.run(async () => {
      started.push(i)
      running++
      peak = Math.max(peak, running)
      await sleep(5)
      running--
      return i * 10
    })
  )
  t.same(await Promise.all(jobs), [0, 10, 20, 30, 40, 50])
  t.equal(peak, 2)
  t.same(started, [0, 1, 2, 3, 4, 5])
})

t.test('a failed job frees its slot', async (t) => {
  const slots = new WorkSlots(1)
  await t.rejects(slots.run(async () => Promise.reject(new Error('boom'))), /boom/)
  t.equal(await slots.run(async () => 'next'), 'next')
})

t.test('the limit must be a positive integer', async (t) => {
  t.throws(() => new WorkSlots(0), RangeError)
  t.throws(() => new WorkSlots(1.5), RangeError)
})
