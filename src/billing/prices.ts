import { Buffer } from 'node:buffer'
import { z } from 'zod'
import { rulesFor, type Endpoint } from '../openai/models.js'
import type { Fields } from '../openai/validate.js'

/**
 * What each image model costs, and the two sums budgets need: the most a request can cost (held
 * before dispatch) and what its answer did cost (settled after). Prices are USD in config, as
 * OpenAI publishes them; results are integer micro-USD rounded up. Sources and the unconfirmed
 * figures are listed in docs/prices.md.
 */

// zod 4's number() already refuses NaN and ±Infinity.
const usd = z.number().nonnegative()
const tokenCount = z.number().int().nonnegative()

const sizeKey = z.string().regex(/^[1-9][0-9]*x[1-9][0-9]*$/, 'must be WIDTHxHEIGHT (an absent or "auto" size is priced at the dearest)')
const qualityKey = z
  .string()
  .min(1)
  .refine((q) => q !== 'auto', '"auto" is not a price: an auto quality is priced at the dearest listed one')

// An empty map would price a model at nothing while looking configured.
function nonEmpty<T extends z.ZodType>(map: z.ZodRecord<z.ZodString, T>) {
  return map.refine((value) => Object.keys(value).length > 0, 'must list at least one entry')
}

const perImageEntrySchema = z.strictObject({
  /** USD per image, by size, then (where the model has qualities) by quality. */
  perImage: nonEmpty(z.record(sizeKey, z.union([usd, nonEmpty(z.record(qualityKey, usd))])))
})

const perTokenEntrySchema = z.strictObject({
  perMillionTokens: z.strictObject({
    textInput: usd,
    imageInput: usd,
    imageOutput: usd,
    /** Text the model writes (output_tokens_details.text_tokens); without it, the text-input rate. */
    textOutput: usd.optional()
  }),
  /** Image tokens one output image costs, by size, then quality. */
  outputTokensPerImage: nonEmpty(z.record(sizeKey, nonEmpty(z.record(qualityKey, tokenCount)))),
  /** The most image-input tokens one input image can cost, by input_fidelity. */
  inputTokensPerImage: z.strictObject({ low: tokenCount, high: tokenCount }).optional(),
  /** Image-output tokens one streamed partial image costs. */
  partialImageTokens: tokenCount.optional()
})

export const priceEntrySchema = z.union([perImageEntrySchema, perTokenEntrySchema])

/** The `prices` config section: model name → how it is priced. */
export const priceTableSchema = z.record(z.string().min(1), priceEntrySchema)

export type PriceEntry = z.output<typeof priceEntrySchema>
export type PerImageEntry = z.output<typeof perImageEntrySchema>
export type PerTokenEntry = z.output<typeof perTokenEntrySchema>
export type PriceTable = z.output<typeof priceTableSchema>

/** Fallbacks for a configured token-priced entry that leaves these out (the gpt-image-1 figures). */
const DEFAULT_INPUT_TOKENS_PER_IMAGE = { low: 581, high: 6821 } as const
const DEFAULT_PARTIAL_IMAGE_TOKENS = 100

/*
 * The token-count bound on text: a BPE token covers at least one byte, so a prompt's UTF-8 length
 * bounds its token count. On top come wrapper tokens OpenAI adds (about 6 were observed per
 * request, 32 per input image on edits; neither is documented).
 */
const PROMPT_OVERHEAD_TOKENS = 32 // unconfirmed: 6 observed per request; 32 allowed
const TEXT_TOKENS_PER_INPUT_IMAGE = 32 // unconfirmed: observed on gpt-image-1 edits, not documented

/*
 * No image file is shorter than this (a minimal WebP is 26 bytes, PNG 67), so an upload of B bytes
 * holds at most B / 26 images. Input-image tokens depend on pixels (every input is resized), not
 * bytes, so bytes can bound only the count.
 */
const MIN_IMAGE_FILE_BYTES = 26
/** OpenAI's most images per edit, for a model the catalogue does not know. */
const FALLBACK_MAX_INPUT_IMAGES = 16

const GPT_IMAGE_1_OUTPUT_TOKENS = {
  '1024x1024': { low: 272, medium: 1056, high: 4160 },
  '1024x1536': { low: 408, medium: 1584, high: 6240 },
  '1536x1024': { low: 400, medium: 1568, high: 6208 }
}

/*
 * gpt-image-1-mini: OpenAI's per-image prices ($0.005/0.011/0.036 square, $0.006/0.015/0.052 other
 * sizes, at $8 per 1M) imply more tokens than the gpt-image-1 table a mini answer was observed to
 * report (4160 at high). We keep the higher, price-implied counts.
 */
const GPT_IMAGE_1_MINI_OUTPUT_TOKENS = {
  // unconfirmed: derived from rounded per-image prices; observed usage matches the smaller gpt-image-1 counts
  '1024x1024': { low: 625, medium: 1375, high: 4500 },
  '1024x1536': { low: 750, medium: 1875, high: 6500 },
  '1536x1024': { low: 750, medium: 1875, high: 6500 }
}

/*
 * gpt-image-2 prices any WxH, with counts from a formula OpenAI publishes only as a calculator.
 * These come from a community reconstruction of it that reproduces every point OpenAI's calculator
 * shows. 2880x2880 is the dearest size the limits allow, so an auto or unlisted size is priced at it.
 */
const GPT_IMAGE_2_OUTPUT_TOKENS = {
  // unconfirmed: community-derived formula, matches OpenAI's calculator at the points checked
  '1024x1024': { low: 196, medium: 1756, high: 7024 },
  '1024x1536': { low: 158, medium: 1372, high: 5488 },
  '1536x1024': { low: 158, medium: 1372, high: 5488 },
  '3840x2160': { low: 371, medium: 3336, high: 13342 },
  '2160x3840': { low: 371, medium: 3336, high: 13342 },
  '2880x2880': { low: 659, medium: 5930, high: 23719 }
}

const GPT_IMAGE_2: PerTokenEntry = {
  // unconfirmed: rates from secondary pages quoting OpenAI's pricing page, textOutput from one only
  perMillionTokens: { textInput: 5, imageInput: 8, imageOutput: 30, textOutput: 10 },
  outputTokensPerImage: GPT_IMAGE_2_OUTPUT_TOKENS,
  // unconfirmed: community measurement of a 1,536-patch budget per input image, which gpt-image-2
  // always reads at high fidelity; one token per patch assumed
  inputTokensPerImage: { low: 1536, high: 1536 },
  partialImageTokens: 100 // unconfirmed: the gpt-image-1 figure
}

const GPT_IMAGE_1_5: PerTokenEntry = {
  // unconfirmed: rates from secondary pages; $32 output reproduces OpenAI's per-image prices exactly
  perMillionTokens: { textInput: 5, imageInput: 8, imageOutput: 32, textOutput: 10 },
  // OpenAI's gpt-image-1.5 per-image prices are exactly these counts at $32 per 1M.
  outputTokensPerImage: GPT_IMAGE_1_OUTPUT_TOKENS,
  // unconfirmed: as gpt-image-1
  inputTokensPerImage: { low: 581, high: 6821 },
  partialImageTokens: 100 // unconfirmed: the gpt-image-1 figure
}

export const DEFAULT_PRICES: PriceTable = {
  'dall-e-2': {
    perImage: { '256x256': 0.016, '512x512': 0.018, '1024x1024': 0.02 }
  },
  'dall-e-3': {
    perImage: {
      '1024x1024': { standard: 0.04, hd: 0.08 },
      '1792x1024': { standard: 0.08, hd: 0.12 },
      '1024x1792': { standard: 0.08, hd: 0.12 }
    }
  },
  'gpt-image-1': {
    perMillionTokens: { textInput: 5, imageInput: 10, imageOutput: 40 },
    outputTokensPerImage: GPT_IMAGE_1_OUTPUT_TOKENS,
    // unconfirmed: low = 65 + 4 tiles of 129 (the most tiles an input is cut into); high adds
    // 6240, the extra observed for high input_fidelity (about 6208 on a landscape input)
    inputTokensPerImage: { low: 581, high: 6821 },
    partialImageTokens: 100 // unconfirmed: observed per preview image, not found in OpenAI's own pages
  },
  'gpt-image-1-mini': {
    perMillionTokens: { textInput: 2, imageInput: 2.5, imageOutput: 8 },
    outputTokensPerImage: GPT_IMAGE_1_MINI_OUTPUT_TOKENS,
    // mini has no high input_fidelity. unconfirmed: tile rule as gpt-image-1
    inputTokensPerImage: { low: 581, high: 581 },
    partialImageTokens: 100 // unconfirmed: the gpt-image-1 figure
  },
  'gpt-image-1.5': GPT_IMAGE_1_5,
  // unconfirmed: OpenAI lists the same per-image prices as gpt-image-1.5, token rates assumed equal
  'chatgpt-image-latest': GPT_IMAGE_1_5,
  'gpt-image-2': GPT_IMAGE_2,
  'gpt-image-2-2026-04-21': GPT_IMAGE_2
}

/** The defaults with configured entries in their place, model by model. */
export function resolvePrices(configured?: PriceTable): PriceTable {
  return { ...DEFAULT_PRICES, ...configured }
}

function entryOf(model: string, prices: PriceTable): PriceEntry | null {
  return Object.hasOwn(prices, model) ? (prices[model] ?? null) : null
}

/** A model without a price is not held against budgets. */
export function hasPrice(model: string, prices: PriceTable): boolean {
  return entryOf(model, prices) !== null
}

/*
 * Arithmetic is exact: USD figures become integer pico-USD (from their decimal form, so 0.016 is
 * exactly 16,000,000,000, with no float noise), token costs are kept in atto-USD (a token at R pico-USD per
 * million costs R atto-USD), and the sum is rounded up to micro-USD once, at the end.
 */
const PICO_PER_USD_DIGITS = 12
const ATTO_PER_PICO = 1_000_000n
const ATTO_PER_MICRO = 1_000_000_000_000n

/** Prices come from the table, a few dozen numbers: each is parsed once, not on every request. */
const picoByUsd = new Map<number, bigint>()

function usdToPico(value: number): bigint {
  let pico = picoByUsd.get(value)
  if (pico === undefined) {
    pico = parsePico(value)
    picoByUsd.set(value, pico)
  }
  return pico
}

function parsePico(value: number): bigint {
  const match = /^([0-9]+)(?:\.([0-9]+))?(?:e([+-]?[0-9]+))?$/.exec(String(value))
  if (match === null) throw new RangeError(`not a price in USD: ${value}`)
  const fraction = match[2] ?? ''
  const digits = BigInt(`${match[1]}${fraction}`)
  const shift = PICO_PER_USD_DIGITS - fraction.length + Number(match[3] ?? 0)
  if (shift >= 0) return digits * 10n ** BigInt(shift)
  // Below a pico-USD: round up, as every amount is.
  const divisor = 10n ** BigInt(-shift)
  return (digits + divisor - 1n) / divisor
}

function attoToMicroUsd(atto: bigint): number {
  const micro = (atto + ATTO_PER_MICRO - 1n) / ATTO_PER_MICRO
  return micro > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(micro)
}

function tokensAtto(tokens: number, usdPerMillion: number): bigint {
  return BigInt(tokens) * usdToPico(usdPerMillion)
}

// Reads are lenient: validation has already refused what OpenAI refuses, and a value that still
// cannot be read is priced at its dearest reading rather than thrown on.

function readText(fields: Fields, name: string): string | undefined {
  const value = fields.get(name)
  return typeof value === 'string' ? value : undefined
}

function readCount(fields: Fields, name: string): number | undefined {
  const value = fields.get(name)
  if (typeof value === 'number') return Number.isSafeInteger(value) ? value : undefined
  if (fields.source === 'form' && typeof value === 'string' && /^\s*[0-9]{1,9}\s*$/.test(value)) return Number(value)
  return undefined
}

function readFlag(fields: Fields, name: string): boolean {
  const value = fields.get(name)
  return value === true || (fields.source === 'form' && value === 'true')
}

/** Images requested: 1 when absent, as given when readable, the model's most when not. */
function requestedCount(model: string, fields: Fields): number {
  const value = fields.get('n')
  if (value === undefined || value === null) return 1
  const n = readCount(fields, 'n')
  return n === undefined ? (rulesFor(model)?.nMax ?? 10) : Math.max(1, n)
}

/** The value at `wanted`; when it is absent, auto or unlisted, every value, for the caller to take the dearest. */
function pick<T>(map: Readonly<Record<string, T>>, wanted: string | undefined): T[] {
  if (wanted !== undefined && Object.hasOwn(map, wanted)) return [map[wanted] as T]
  return Object.values(map)
}

function perImageUsdFor(entry: PerImageEntry, size: string | undefined, quality: string | undefined): number {
  let most = 0
  for (const bySize of pick(entry.perImage, size)) {
    const candidates = typeof bySize === 'number' ? [bySize] : pick(bySize, quality)
    for (const price of candidates) most = Math.max(most, price)
  }
  return most
}

function outputTokensFor(entry: PerTokenEntry, size: string | undefined, quality: string | undefined): number {
  let most = 0
  for (const bySize of pick(entry.outputTokensPerImage, size)) {
    for (const tokens of pick(bySize, quality)) most = Math.max(most, tokens)
  }
  return most
}

/** How many images an edit sends, as an upper bound. */
function inputImageCount(model: string, endpoint: Endpoint, fields: Fields, inputImageBytes: number | undefined): number {
  if (endpoint === 'generations') return 0
  if (endpoint === 'variations') return 1
  const images = fields.get('images')
  const mask = fields.get('mask')
  // JSON edits list their images; multipart ones are counted only after admission, so assume the most.
  let count =
    fields.source === 'json' && Array.isArray(images)
      ? images.length + (mask === undefined || mask === null ? 0 : 1)
      : (rulesFor(model)?.files.maxImages ?? FALLBACK_MAX_INPUT_IMAGES) + 1
  if (inputImageBytes !== undefined && Number.isFinite(inputImageBytes) && inputImageBytes >= 0) {
    count = Math.min(count, Math.max(1, Math.floor(inputImageBytes / MIN_IMAGE_FILE_BYTES)))
  }
  return count
}

function worstPerTokenAtto(
  model: string,
  endpoint: Endpoint,
  fields: Fields,
  entry: PerTokenEntry,
  n: number,
  inputImageBytes: number | undefined
): bigint {
  const rates = entry.perMillionTokens
  const images = inputImageCount(model, endpoint, fields, inputImageBytes)
  const fidelity = readText(fields, 'input_fidelity') === 'high' ? 'high' : 'low'
  const perInputImage = (entry.inputTokensPerImage ?? DEFAULT_INPUT_TOKENS_PER_IMAGE)[fidelity]
  const prompt = readText(fields, 'prompt') ?? ''
  const textTokens = Buffer.byteLength(prompt, 'utf8') + PROMPT_OVERHEAD_TOKENS + images * TEXT_TOKENS_PER_INPUT_IMAGE

  let outputTokens = outputTokensFor(entry, readText(fields, 'size'), readText(fields, 'quality'))
  if (readFlag(fields, 'stream')) {
    // OpenAI takes 0-3 partial images; one it cannot read is counted as 3.
    const partials = Math.min(readCount(fields, 'partial_images') ?? 3, 3)
    outputTokens += Math.max(0, partials) * (entry.partialImageTokens ?? DEFAULT_PARTIAL_IMAGE_TOKENS)
  }

  // unconfirmed: n > 1 was observed (gpt-image-2) to bill the input again for every image, as n calls would.
  const perImage =
    tokensAtto(textTokens, rates.textInput) +
    tokensAtto(images * perInputImage, rates.imageInput) +
    tokensAtto(outputTokens, rates.imageOutput)
  return BigInt(n) * perImage
}

/**
 * The most a request can cost, in micro-USD: n images at the dearest size and quality the request
 * allows, and for token-priced models the prompt and input images at their upper bounds.
 * `inputImageBytes` (the image and mask parts' total, when known) can only lower the image count.
 * A model without a price costs 0.
 */
export function worstCaseMicroUsd(
  model: string,
  endpoint: Endpoint,
  fields: Fields,
  prices: PriceTable,
  inputImageBytes?: number
): number {
  const entry = entryOf(model, prices)
  if (entry === null) return 0
  const n = requestedCount(model, fields)
  if ('perImage' in entry) {
    const usdEach = perImageUsdFor(entry, readText(fields, 'size'), readText(fields, 'quality'))
    return attoToMicroUsd(BigInt(n) * usdToPico(usdEach) * ATTO_PER_PICO)
  }
  return attoToMicroUsd(worstPerTokenAtto(model, endpoint, fields, entry, n, inputImageBytes))
}

interface Usage {
  inputTokens: number
  textInputTokens: number
  imageInputTokens: number
  outputTokens: number
  output: { imageTokens: number; textTokens: number } | null
}

function isTokenCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0
}

function record(value: unknown): Record<string, unknown> | null {
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : null
}

/** An ImageGenUsage/ImagesUsage block, or null when any part we price from is missing or malformed. */
function readUsage(usage: unknown): Usage | null {
  const top = record(usage)
  const inputDetails = record(top?.input_tokens_details)
  if (top === null || inputDetails === null) return null
  const { input_tokens: inputTokens, output_tokens: outputTokens } = top
  const { text_tokens: textInputTokens, image_tokens: imageInputTokens } = inputDetails
  if (!isTokenCount(inputTokens) || !isTokenCount(outputTokens)) return null
  if (!isTokenCount(textInputTokens) || !isTokenCount(imageInputTokens)) return null
  // output_tokens_details is optional (gpt-image-1.5 and later, not in streamed usage); a malformed one is ignored.
  const outputDetails = record(top.output_tokens_details)
  const imageTokens = outputDetails?.image_tokens
  const textTokens = outputDetails?.text_tokens
  const output = isTokenCount(imageTokens) && isTokenCount(textTokens) ? { imageTokens, textTokens } : null
  return { inputTokens, textInputTokens, imageInputTokens, outputTokens, output }
}

function usageAtto(entry: PerTokenEntry, usage: Usage): bigint {
  const rates = entry.perMillionTokens
  // unconfirmed: no text-output rate is published for some models; their text output is priced as text input.
  const textOutputRate = rates.textOutput ?? rates.textInput
  // Tokens a total counts but its details do not place are priced at the dearer of their possible rates.
  const unplacedInput = Math.max(0, usage.inputTokens - usage.textInputTokens - usage.imageInputTokens)
  let atto =
    tokensAtto(usage.textInputTokens, rates.textInput) +
    tokensAtto(usage.imageInputTokens, rates.imageInput) +
    tokensAtto(unplacedInput, Math.max(rates.textInput, rates.imageInput))
  const dearerOutputRate = Math.max(rates.imageOutput, textOutputRate)
  if (usage.output === null) {
    atto += tokensAtto(usage.outputTokens, dearerOutputRate)
  } else {
    const unplacedOutput = Math.max(0, usage.outputTokens - usage.output.imageTokens - usage.output.textTokens)
    atto +=
      tokensAtto(usage.output.imageTokens, rates.imageOutput) +
      tokensAtto(usage.output.textTokens, textOutputRate) +
      tokensAtto(unplacedOutput, dearerOutputRate)
  }
  return atto
}

/**
 * What an answer cost, in micro-USD. Token-priced models: from the answer's `usage` block, or the
 * worst case when it is missing or malformed. Per-image models: the price of the requested size and
 * quality (an absent size is OpenAI's default 1024x1024 where listed; an absent or auto quality the
 * dearest) times the images returned (`imagesReturned`; null means the n requested).
 */
export function actualMicroUsd(
  model: string,
  endpoint: Endpoint,
  fields: Fields,
  usage: unknown,
  prices: PriceTable,
  imagesReturned: number | null = null,
  inputImageBytes?: number
): number {
  const entry = entryOf(model, prices)
  if (entry === null) return 0
  if ('perImage' in entry) {
    const images = imagesReturned !== null && isTokenCount(imagesReturned) ? imagesReturned : requestedCount(model, fields)
    // DALL·E's size enums have no "auto": an absent size is 1024x1024 in every spec version. Its
    // default quality moved from "standard" to "auto" (unconfirmed meaning), so that stays dearest.
    const size = readText(fields, 'size') ?? (Object.hasOwn(entry.perImage, '1024x1024') ? '1024x1024' : undefined)
    const usdEach = perImageUsdFor(entry, size, readText(fields, 'quality'))
    return attoToMicroUsd(BigInt(images) * usdToPico(usdEach) * ATTO_PER_PICO)
  }
  const read = readUsage(usage)
  if (read === null) return worstCaseMicroUsd(model, endpoint, fields, prices, inputImageBytes)
  return attoToMicroUsd(usageAtto(entry, read))
}
