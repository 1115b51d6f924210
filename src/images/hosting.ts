import { randomBytes } from 'node:crypto'
import { Agent } from 'undici'
import { GatewayError } from '../errors/catalogue.js'
import type { HostedImages } from '../http/request-context.js'
import { ImageProbe } from '../multipart/image-probe.js'
import { fetchImage, type FetchLimits } from './fetch-image.js'
import type { LinkSigner } from './links.js'
import type { ImageExtension, ImageStore, StoreUsage } from './store.js'

export type ResponseFormat = 'url' | 'b64_json'

export interface HostingOptions {
  ttlMs: number
  fetch: FetchLimits
  /** An answer larger than this is not read whole to host its images: it fails (image_hosting_failed). */
  maxAnswerBytes: number
}

const GIF_SIGNATURE = Buffer.from('GIF8', 'latin1')
const FETCH_CONNECT_TIMEOUT_MS = 10_000

function extensionOf(bytes: Buffer): ImageExtension | null {
  if (bytes.subarray(0, 4).equals(GIF_SIGNATURE)) return 'gif'
  const probe = new ImageProbe()
  probe.push(bytes.subarray(0, 64))
  return probe.result().format
}

/** The image's extension; throws when the bytes are no image we serve. */
function imageOnly(bytes: Buffer): ImageExtension {
  const extension = extensionOf(bytes)
  if (extension === null) throw hostingFailed('it is not a PNG, JPEG, WebP or GIF image')
  return extension
}

function hostingFailed(why: string, cause?: unknown): GatewayError {
  return new GatewayError('image_hosting_failed', `The gateway could not host an image of the upstream's answer: ${why}.`, {
    cause,
    headers: { 'x-should-retry': 'false' }
  })
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
}

/**
 * Hosted image links (docs/images.md): answers' base64 images are stored and answered as signed,
 * expiring links to the gateway; images an upstream answers as URLs are fetched (from the answer,
 * never from a client) to be inlined as base64 or re-hosted.
 */
export class ImageHosting {
  private readonly dispatcher = new Agent({ connect: { timeout: FETCH_CONNECT_TIMEOUT_MS }, maxResponseSize: -1 })

  constructor(
    readonly store: ImageStore,
    private readonly signer: LinkSigner,
    readonly options: HostingOptions,
    private readonly now: () => number = Date.now
  ) {}

  /**
   * Changes the answer's `data` in place so that each image comes as `want` says (null: as the
   * upstream gave it), and with `rehost`, no URL of the upstream's own is left. All or nothing:
   * an image that cannot be hosted fails the answer.
   */
  async shape(answer: Record<string, unknown>, want: ResponseFormat | null, rehost: boolean, signal: AbortSignal): Promise<HostedImages> {
    const done: HostedImages = { stored: 0, storedBytes: 0, fetched: 0 }
    const data = Array.isArray(answer.data) ? answer.data.filter(isRecord) : []
    // The first image that fails stops the others: no fetch runs on, and nothing more is stored.
    const stop = new AbortController()
    const halted = AbortSignal.any([signal, stop.signal])
    await Promise.all(
      data.map(async (item) => {
        const { b64_json: b64, url } = item
        if (typeof b64 === 'string' && want === 'url') {
          const bytes = Buffer.from(b64, 'base64')
          delete item.b64_json
          item.url = await this.keep(bytes, done, halted)
        } else if (typeof url === 'string' && (want === 'b64_json' || rehost)) {
          const bytes = await fetchImage(url, this.dispatcher, this.options.fetch, halted)
          done.fetched++
          delete item.url
          // Only an image is passed on: an upstream's URL must not fetch anything else for a client.
          if (want === 'b64_json') {
            imageOnly(bytes)
            item.b64_json = bytes.toString('base64')
          } else {
            item.url = await this.keep(bytes, done, halted)
          }
        }
      })
    ).catch((err: unknown) => {
      stop.abort(err)
      throw err
    })
    return done
  }

  private async keep(bytes: Buffer, done: HostedImages, signal: AbortSignal): Promise<string> {
    const extension = imageOnly(bytes)
    if (signal.aborted) throw hostingFailed('another image of the answer failed')
    const name = `${randomBytes(16).toString('base64url')}.${extension}`
    // Whole seconds, as links carry them: a link never outlives its image.
    const expiresAt = Math.ceil((this.now() + this.options.ttlMs) / 1000) * 1000
    try {
      await this.store.put(name, bytes, expiresAt)
    } catch (err) {
      throw hostingFailed(`the ${this.store.kind} store failed`, err)
    }
    done.stored++
    done.storedBytes += bytes.length
    return this.signer.link(name, expiresAt)
  }

  usage(): Promise<StoreUsage> {
    return this.store.usage()
  }

  async close(): Promise<void> {
    await this.dispatcher.close()
    await this.store.close()
  }
}
