import { DEFAULT_PRICES, type PerTokenEntry } from '../billing/prices.js'
import { countChars } from '../openai/validate.js'
import type { ImageParameters } from './parameters.js'

/**
 * The shapes OpenAI answers with (spec §6): the ImagesResponse JSON body, the streamed events,
 * and the `usage` GPT image models report. Pure: the images arrive already encoded.
 */

export interface ImageUsage {
  total_tokens: number
  input_tokens: number
  output_tokens: number
  input_tokens_details: { text_tokens: number; image_tokens: number }
  /** In JSON answers only: the streamed events' ImagesUsage has no output details (spec §6.2). */
  output_tokens_details?: { image_tokens: number; text_tokens: number }
}

/** One element of `data`: a URL or the image itself, and dall-e-3's revised prompt. */
export type ImageItem = ({ url: string } | { b64_json: string }) & { revised_prompt?: string }

export interface ImagesResponse {
  created: number
  data: ImageItem[]
  background?: 'transparent' | 'opaque'
  output_format?: string
  size?: string
  quality?: string
  usage?: ImageUsage
}

export type StreamKind = 'image_generation' | 'image_edit'

/** The token figures of a model OpenAI does not have (and of gpt-image-1). */
const STAND_IN_PRICES = 'gpt-image-1'
const DEFAULT_PARTIAL_IMAGE_TOKENS = 100
/** OpenAI's rule of thumb: about four characters of English per token. */
const CHARS_PER_TEXT_TOKEN = 4
const REFERENCE_SIZE = '1024x1024'
const REFERENCE_PIXELS = 1024 * 1024

function tokenEntry(model: string): PerTokenEntry {
  const own = Object.hasOwn(DEFAULT_PRICES, model) ? DEFAULT_PRICES[model] : undefined
  if (own !== undefined && 'perMillionTokens' in own) return own
  const standIn = DEFAULT_PRICES[STAND_IN_PRICES]
  if (standIn === undefined || !('perMillionTokens' in standIn)) throw new Error(`no token prices for ${STAND_IN_PRICES}`)
  return standIn
}

/**
 * Image tokens of one output image: the price table's figure for the size and quality, or, for a
 * size the table does not list (gpt-image-2's free sizes), its 1024x1024 figure scaled by area.
 */
export function outputTokensPerImage(model: string, width: number, height: number, quality: string): number {
  const table = tokenEntry(model).outputTokensPerImage
  const listed = table[`${width}x${height}`]?.[quality]
  if (listed !== undefined) return listed
  const reference = table[REFERENCE_SIZE]?.[quality] ?? table[REFERENCE_SIZE]?.high ?? 0
  return Math.max(1, Math.round((reference * width * height) / REFERENCE_PIXELS))
}

export function textTokens(prompt: string): number {
  return Math.max(1, Math.ceil(countChars(prompt) / CHARS_PER_TEXT_TOKEN))
}

interface UsageParts {
  textTokens: number
  imageInputTokens: number
  imageOutputTokens: number
}

function usageOf(parts: UsageParts, withOutputDetails: boolean): ImageUsage {
  const input = parts.textTokens + parts.imageInputTokens
  return {
    total_tokens: input + parts.imageOutputTokens,
    input_tokens: input,
    output_tokens: parts.imageOutputTokens,
    input_tokens_details: { text_tokens: parts.textTokens, image_tokens: parts.imageInputTokens },
    ...(withOutputDetails ? { output_tokens_details: { image_tokens: parts.imageOutputTokens, text_tokens: 0 } } : {})
  }
}

function inputParts(params: ImageParameters, inputImages: number): Pick<UsageParts, 'textTokens' | 'imageInputTokens'> {
  const perInputImage = tokenEntry(params.model).inputTokensPerImage?.[params.inputFidelity] ?? 0
  return { textTokens: textTokens(params.prompt), imageInputTokens: inputImages * perInputImage }
}

/** A JSON answer's usage: the prompt and input images once, then every output image. */
export function requestUsage(params: ImageParameters, width: number, height: number, inputImages: number): ImageUsage {
  const perImage = outputTokensPerImage(params.model, width, height, params.quality)
  return usageOf({ ...inputParts(params, inputImages), imageOutputTokens: params.n * perImage }, true)
}

/**
 * The usage on the `completed` event of image `index`. The gateway sums the usage of all completed
 * events (billing/usage-tap.ts), so the input is counted on the first only; each image adds its
 * own output tokens and those of its partial images.
 */
export function streamedImageUsage(params: ImageParameters, width: number, height: number, inputImages: number, index: number): ImageUsage {
  const input = index === 0 ? inputParts(params, inputImages) : { textTokens: 0, imageInputTokens: 0 }
  const partialTokens = tokenEntry(params.model).partialImageTokens ?? DEFAULT_PARTIAL_IMAGE_TOKENS
  const imageOutputTokens = outputTokensPerImage(params.model, width, height, params.quality) + params.partialImages * partialTokens
  return usageOf({ ...input, imageOutputTokens }, false)
}

/** dall-e-3's rewording of the prompt: deterministic, and visibly a rewording. */
export function revisedPrompt(params: ImageParameters): string {
  const subject = params.prompt.trim().replace(/[\s.!?]+$/u, '')
  const manner = params.style === 'natural' ? 'natural, true-to-life' : 'vivid, dramatic'
  const detail = params.quality === 'hd' ? ' with fine detail throughout' : ''
  return `A ${manner} image of ${subject === '' ? 'an abstract scene' : subject}, composed of soft colour gradients and overlapping geometric shapes${detail}.`
}

/** The metadata GPT image models put beside the images, in JSON answers and every event. */
interface GptImageMetadata {
  background: 'transparent' | 'opaque'
  output_format: string
  size: string
  quality: string
}

export function gptImageMetadata(params: ImageParameters, size: string): GptImageMetadata {
  return { background: params.background, output_format: params.outputFormat, size, quality: params.quality }
}

/** One SSE event, named and with the same name in `data.type` (spec §6.2). */
export function sseEvent(name: string, data: Readonly<Record<string, unknown>>): string {
  return `event: ${name}\ndata: ${JSON.stringify({ type: name, ...data })}\n\n`
}

export function partialImageEvent(kind: StreamKind, created: number, b64: string, metadata: GptImageMetadata, index: number): string {
  return sseEvent(`${kind}.partial_image`, { b64_json: b64, created_at: created, ...metadata, partial_image_index: index })
}

export function completedEvent(kind: StreamKind, created: number, b64: string, metadata: GptImageMetadata, usage: ImageUsage): string {
  return sseEvent(`${kind}.completed`, { b64_json: b64, created_at: created, ...metadata, usage })
}

/** A failure after the stream began: the SDKs raise an APIError for any event whose data has `error`. */
export function errorEvent(error: { message: string; type: string; param: string | null; code: string | null }): string {
  return sseEvent('error', { error })
}
