import { defaultModel, rulesFor, type Endpoint, type ModelRules } from '../openai/models.js'
import { readModel, validateFields, type Fields } from '../openai/validate.js'
import type { OutputFormat, PixelSize } from './render.js'

/**
 * A request's parameters with every default applied, as the sandbox answers them. The checks are
 * the gateway's own (validateFields): the sandbox refuses what OpenAI would, in the same words.
 * A model OpenAI does not have is treated as gpt-image-1.
 */

export interface ImageParameters {
  model: string
  rules: ModelRules
  prompt: string
  n: number
  /** null: absent or "auto" (1024x1024, or an edit's input size). */
  size: PixelSize | null
  /** Resolved, never "auto": GPT image models report it; dall-e-3 words its revised prompt with it. */
  quality: string
  style: 'vivid' | 'natural'
  responseFormat: 'url' | 'b64_json'
  outputFormat: OutputFormat
  /** 0-100, OpenAI's default 100. */
  compression: number
  background: 'transparent' | 'opaque'
  stream: boolean
  /** 0 unless streaming. */
  partialImages: number
  inputFidelity: 'low' | 'high'
}

const STAND_IN_MODEL = 'gpt-image-1'

export function jsonFields(value: Readonly<Record<string, unknown>>): Fields {
  return { source: 'json', get: (name) => (Object.hasOwn(value, name) ? value[name] : undefined) }
}

export function formFields(values: ReadonlyMap<string, string>): Fields {
  return { source: 'form', get: (name) => values.get(name) }
}

/** Reads after validation: a value validateFields let through is well formed, or absent. */
function text(fields: Fields, name: string): string | undefined {
  const value = fields.get(name)
  return typeof value === 'string' ? value : undefined
}

function integer(fields: Fields, name: string): number | undefined {
  const value = fields.get(name)
  if (typeof value === 'number' && Number.isSafeInteger(value)) return value
  if (typeof value === 'string' && /^\s*-?[0-9]{1,9}\s*$/.test(value)) return Number(value)
  return undefined
}

function flag(fields: Fields, name: string): boolean {
  const value = fields.get(name)
  return value === true || value === 'true'
}

function oneOf<T extends string>(value: string | undefined, allowed: readonly T[], fallback: T): T {
  return allowed.find((candidate) => candidate === value) ?? fallback
}

/** The edges of a `WxH` size, or null for "auto" and absent. */
export function parseSize(size: string | undefined): PixelSize | null {
  const match = size === undefined ? null : /^([1-9][0-9]*)x([1-9][0-9]*)$/.exec(size)
  if (match === null) return null
  return { width: Number(match[1]), height: Number(match[2]) }
}

export function formatSize(size: PixelSize): string {
  return `${size.width}x${size.height}`
}

function resolveQuality(rules: ModelRules, quality: string | undefined): string {
  if (quality !== undefined && quality !== 'auto') return quality
  // Spec §3: auto "picks the model's best".
  return rules.family === 'gpt-image' ? 'high' : 'standard'
}

/**
 * The request's parameters for `endpoint`, validated as OpenAI validates them. Throws the
 * gateway's GatewayError (OpenAI's envelope, with `param`) on anything OpenAI would refuse.
 */
export function readParameters(endpoint: Endpoint, fields: Fields): ImageParameters {
  const model = readModel(fields) ?? defaultModel(endpoint, (name) => fields.get(name) != null)
  const rules = rulesFor(model) ?? (rulesFor(STAND_IN_MODEL) as ModelRules)
  validateFields(endpoint, model, rules, fields)
  const stream = rules.family === 'gpt-image' && flag(fields, 'stream')
  return {
    model,
    rules,
    prompt: text(fields, 'prompt') ?? '',
    n: integer(fields, 'n') ?? 1,
    size: parseSize(text(fields, 'size')),
    quality: resolveQuality(rules, text(fields, 'quality')),
    style: oneOf(text(fields, 'style'), ['vivid', 'natural'], 'vivid'),
    responseFormat: oneOf(text(fields, 'response_format'), ['url', 'b64_json'], 'url'),
    outputFormat: oneOf(text(fields, 'output_format'), ['png', 'jpeg', 'webp'], 'png'),
    compression: integer(fields, 'output_compression') ?? 100,
    background: text(fields, 'background') === 'transparent' ? 'transparent' : 'opaque',
    stream,
    partialImages: stream ? (integer(fields, 'partial_images') ?? 0) : 0,
    inputFidelity: text(fields, 'input_fidelity') === 'high' ? 'high' : 'low'
  }
}
