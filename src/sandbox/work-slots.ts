/**
 * At most `limit` image jobs at once, the rest waiting in arrival order. sharp runs on libuv's
 * thread pool (4 threads by default), which the gateway's own file I/O shares, and each 1024×1024
 * job holds a few MB of pixels: a load test sending 200 requests must queue here rather than
 * starve the pool or hold 200 canvases.
 */
export class WorkSlots {
  readonly #limit: number
  #running = 0
  readonly #waiting: (() => void)[] = []

  constructor(limit: number) {
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`limit must be a positive integer, got ${limit}`)
    this.#limit = limit
  }

  async run<T>(job: () => Promise<T>): Promise<T> {
    if (this.#running >= this.#limit) await new Promise<void>((resolve) => this.#waiting.push(resolve))
    else this.#running++
    try {
      return await job()
    } finally {
      // The slot passes straight to the next waiter, so #running never drops and rises again in between.
      const next = this.#waiting.shift()
      if (next === undefined) this.#running--
      else next()
    }
  }
}
