import {
  completedEvent,
  errorEvent,
  gptImageMetadata,
  partialImageEvent,
  requestUsage,
  revisedPrompt,
  streamedImageUsage,
  type ImageItem,
  type ImagesResponse,
  type StreamKind
} from './answers.js'
import { toSandboxError } from './errors.js'
import type { ImageStore } from './image-store.js'
import { formatSize, type ImageParameters } from './parameters.js'
import { encodeCanvas, roughCanvas, type Canvas, type Encoding, type PixelSize } from './render.js'
import type { WorkSlots } from './work-slots.js'

/**
 * From "how to make image i" to what the client receives: a JSON ImagesResponse (URLs kept in the
 * image store, or base64) or, for `stream: true`, the events of spec §6.2.
 */

export interface DeliveryContext {
  slots: WorkSlots
  store: ImageStore
  /** `http://127.0.0.1:PORT`, for the URLs of url answers. */
  origin: string
}

export interface ImageJob {
  params: ImageParameters
  kind: StreamKind
  /** Every image of the answer has this size. */
  outputSize: PixelSize
  /** Images the request brought (edits), for the input side of `usage`. */
  inputImages: number
  /** Makes image `index` (0 to n-1); called inside a work slot. */
  make: (index: number) => Promise<Canvas>
}

function encodingOf(params: ImageParameters): Encoding {
  if (params.rules.family !== 'gpt-image') return { format: 'png', compression: 100, transparent: false }
  return { format: params.outputFormat, compression: params.compression, transparent: params.background === 'transparent' }
}

const CONTENT_TYPES = { png: 'image/png', jpeg: 'image/jpeg', webp: 'image/webp' } as const

function createdNow(): number {
  return Math.floor(Date.now() / 1000)
}

function indexes(n: number): number[] {
  return Array.from({ length: n }, (_, index) => index)
}

export async function jsonAnswer(context: DeliveryContext, job: ImageJob): Promise<ImagesResponse> {
  const { params, outputSize } = job
  const encoding = encodingOf(params)
  const images = await Promise.all(
    indexes(params.n).map((index) => context.slots.run(async () => encodeCanvas(await job.make(index), encoding)))
  )
  const created = createdNow()
  if (params.rules.family === 'gpt-image') {
    return {
      created,
      data: images.map((bytes) => ({ b64_json: bytes.toString('base64') })),
      ...gptImageMetadata(params, formatSize(outputSize)),
      usage: requestUsage(params, outputSize.width, outputSize.height, job.inputImages)
    }
  }
  const revised = params.rules.family === 'dall-e-3' ? { revised_prompt: revisedPrompt(params) } : {}
  const data = images.map((bytes): ImageItem => {
    if (params.responseFormat === 'b64_json') return { b64_json: bytes.toString('base64'), ...revised }
    const name = context.store.put(bytes, CONTENT_TYPES[encoding.format], encoding.format)
    return { url: `${context.origin}/v1/images/files/${name}`, ...revised }
  })
  return { created, data }
}

/**
 * The events of a streamed answer, image by image: its partial images, roughest first, then its
 * completed event. A failure once the stream has begun becomes an `error` event, which the SDKs
 * raise as an APIError.
 */
export async function* streamAnswer(context: DeliveryContext, job: ImageJob): AsyncGenerator<string> {
  const { params, kind, outputSize } = job
  const encoding = encodingOf(params)
  const created = createdNow()
  const metadata = gptImageMetadata(params, formatSize(outputSize))
  try {
    for (const index of indexes(params.n)) {
      const canvas = await context.slots.run(() => job.make(index))
      for (const step of indexes(params.partialImages)) {
        const partial = await context.slots.run(async () => encodeCanvas(await roughCanvas(canvas, step, params.partialImages), encoding))
        yield partialImageEvent(kind, created, partial.toString('base64'), metadata, step)
      }
      const final = await context.slots.run(() => encodeCanvas(canvas, encoding))
      const usage = streamedImageUsage(params, outputSize.width, outputSize.height, job.inputImages, index)
      yield completedEvent(kind, created, final.toString('base64'), metadata, usage)
    }
  } catch (err) {
    yield errorEvent(toSandboxError(err).toBody().error)
  }
}
