import { randomBytes } from 'node:crypto'

/**
 * The images behind `url` answers, held in memory for `ttlMs` (OpenAI's URLs last 60 minutes)
 * and within `maxBytes` in all, the oldest dropped first. Expiry is lazy, checked on every put
 * and get, so no timer outlives the server. Every image gets the same lifetime, so insertion
 * order is also expiry order and both sweeps only look at the front of the map.
 */

export interface StoredImage {
  bytes: Buffer
  contentType: string
  expiresAtMs: number
}

export interface ImageStoreOptions {
  ttlMs: number
  maxBytes: number
  /** Milliseconds since the epoch; injectable for tests. */
  now?: () => number
}

export class ImageStore {
  readonly #images = new Map<string, StoredImage>()
  readonly #ttlMs: number
  readonly #maxBytes: number
  readonly #now: () => number
  #totalBytes = 0

  constructor(options: ImageStoreOptions) {
    this.#ttlMs = options.ttlMs
    this.#maxBytes = options.maxBytes
    this.#now = options.now ?? Date.now
  }

  get totalBytes(): number {
    return this.#totalBytes
  }

  get size(): number {
    return this.#images.size
  }

  /**
   * Keeps the image and returns its file name (`<32 hex>.<extension>`). An image larger than
   * `maxBytes` on its own is still kept, alone: the URL in the answer being sent must work.
   */
  put(bytes: Buffer, contentType: string, extension: string): string {
    this.#dropExpired()
    while (this.#images.size > 0 && this.#totalBytes + bytes.length > this.#maxBytes) this.#dropOldest()
    const name = `${randomBytes(16).toString('hex')}.${extension}`
    this.#images.set(name, { bytes, contentType, expiresAtMs: this.#now() + this.#ttlMs })
    this.#totalBytes += bytes.length
    return name
  }

  get(name: string): StoredImage | undefined {
    this.#dropExpired()
    return this.#images.get(name)
  }

  clear(): void {
    this.#images.clear()
    this.#totalBytes = 0
  }

  #dropExpired(): void {
    const now = this.#now()
    for (const [name, image] of this.#images) {
      if (image.expiresAtMs > now) return
      this.#delete(name, image)
    }
  }

  #dropOldest(): void {
    const oldest = this.#images.entries().next()
    if (oldest.done !== true) this.#delete(oldest.value[0], oldest.value[1])
  }

  #delete(name: string, image: StoredImage): void {
    this.#images.delete(name)
    this.#totalBytes -= image.bytes.length
  }
}
