import { GatewayError } from '../errors/catalogue.js'
import { checkArbitrarySize, type Endpoint, type ModelRules } from './models.js'

/**
 * A request's non-file fields, from either form of body: JSON values as parsed, or multipart text
 * parts as strings (the SDKs send numbers as "2" and booleans as "true"). `null` counts as absent,
 * as every optional field is nullable in OpenAI's schema.
 */
export interface Fields {
  readonly source: 'json' | 'form'
  get(name: string): unknown
}

function quoteList(values: readonly string[]): string {
  const quoted = values.map((v) => `'${v}'`)
  return quoted.length <= 1 ? quoted.join('') : `${quoted.slice(0, -1).join(', ')}, and ${quoted.at(-1)}`
}

function describeType(value: unknown): string {
  if (Array.isArray(value)) return 'an array'
  if (value === null) return 'null'
  if (typeof value === 'object') return 'an object'
  if (typeof value === 'number') return Number.isInteger(value) ? 'an integer' : 'a decimal'
  if (typeof value === 'boolean') return 'a boolean'
  return 'a string'
}

function invalidType(param: string, expected: string, value: unknown): GatewayError {
  return new GatewayError(
    'invalid_type',
    `Invalid type for '${param}': expected ${expected}, but got ${describeType(value)} instead.`,
    { param }
  )
}

function invalidValue(param: string, value: string, supported: readonly string[]): GatewayError {
  return new GatewayError(
    'invalid_value',
    `Invalid value: '${value}'. Supported values are: ${quoteList(supported)}.`,
    { param }
  )
}

function present(fields: Fields, name: string): unknown {
  const value = fields.get(name)
  return value === null ? undefined : value
}

function readString(fields: Fields, name: string): string | undefined {
  const value = present(fields, name)
  if (value === undefined) return undefined
  if (typeof value !== 'string') throw invalidType(name, 'a string', value)
  return value
}

function readInteger(fields: Fields, name: string): number | undefined {
  const value = present(fields, name)
  if (value === undefined) return undefined
  if (fields.source === 'form' && typeof value === 'string' && /^-?[0-9]{1,9}$/.test(value.trim())) {
    return Number(value.trim())
  }
  if (typeof value === 'number' && Number.isInteger(value)) return value
  throw invalidType(name, 'an integer', value)
}

function readBoolean(fields: Fields, name: string): boolean | undefined {
  const value = present(fields, name)
  if (value === undefined) return undefined
  if (typeof value === 'boolean') return value
  if (fields.source === 'form' && (value === 'true' || value === 'false')) return value === 'true'
  throw invalidType(name, 'a boolean', value)
}

function checkRange(name: string, value: number | undefined, min: number, max: number): void {
  if (value === undefined) return
  if (value < min) {
    throw new GatewayError(
      'integer_below_min_value',
      `Invalid '${name}': integer below minimum value. Expected a value >= ${min}, but got ${value} instead.`,
      { param: name }
    )
  }
  if (value > max) {
    throw new GatewayError(
      'integer_above_max_value',
      `Invalid '${name}': integer above maximum value. Expected a value <= ${max}, but got ${value} instead.`,
      { param: name }
    )
  }
}

function checkEnum(fields: Fields, name: string, supported: readonly string[]): string | undefined {
  const value = readString(fields, name)
  if (value !== undefined && !supported.includes(value)) throw invalidValue(name, value, supported)
  return value
}

/** Characters as people count them: a code point, not a UTF-16 unit. */
export function countChars(text: string): number {
  let count = text.length
  for (let i = 0; i < text.length - 1; i++) {
    const unit = text.charCodeAt(i)
    if (unit < 0xd800 || unit > 0xdbff) continue
    // Only a well-formed pair is one character; a lone surrogate (JSON allows "\ud800") counts as one.
    const next = text.charCodeAt(i + 1)
    if (next >= 0xdc00 && next <= 0xdfff) {
      count--
      i++
    }
  }
  return count
}

function checkPrompt(endpoint: Endpoint, rules: ModelRules | null, fields: Fields): void {
  if (endpoint === 'variations') return
  const prompt = readString(fields, 'prompt')
  if (prompt === undefined) {
    throw new GatewayError('missing_required_parameter', "Missing required parameter: 'prompt'.", { param: 'prompt' })
  }
  if (rules === null) return
  const length = countChars(prompt)
  if (length > rules.promptMaxChars) {
    throw new GatewayError(
      'string_above_max_length',
      `Invalid 'prompt': string too long. Expected a string with maximum length ${rules.promptMaxChars}, but got a string with length ${length} instead.`,
      { param: 'prompt' }
    )
  }
}

function checkSize(rules: ModelRules, fields: Fields): void {
  const size = readString(fields, 'size')
  if (size === undefined || rules.sizes.includes(size)) return
  if (rules.arbitrarySizes) {
    const problem = checkArbitrarySize(size)
    if (problem === null) return
    throw new GatewayError('invalid_value', `Invalid value: '${size}'. The size ${problem}.`, { param: 'size' })
  }
  throw invalidValue('size', size, rules.sizes)
}

function checkGptImageOnly(endpoint: Endpoint, model: string, rules: ModelRules, fields: Fields): void {
  if (!rules.responseFormat && present(fields, 'response_format') !== undefined) {
    throw new GatewayError('unknown_parameter', "Unknown parameter: 'response_format'.", { param: 'response_format' })
  }
  checkEnum(fields, 'response_format', ['url', 'b64_json'])
  const outputFormat = checkEnum(fields, 'output_format', ['png', 'jpeg', 'webp'])
  checkRange('output_compression', readInteger(fields, 'output_compression'), 0, 100)
  const background = checkEnum(fields, 'background', ['transparent', 'opaque', 'auto'])
  if (background === 'transparent' && outputFormat === 'jpeg') {
    throw new GatewayError(
      'invalid_value',
      "Invalid value: 'transparent'. A transparent background needs output_format 'png' or 'webp'.",
      { param: 'background' }
    )
  }
  checkEnum(fields, 'moderation', ['low', 'auto'])
  readBoolean(fields, 'stream')
  checkRange('partial_images', readInteger(fields, 'partial_images'), 0, 3)
  if (endpoint === 'edits' && present(fields, 'input_fidelity') !== undefined) {
    if (!rules.inputFidelity) {
      throw new GatewayError('invalid_value', `input_fidelity is not supported for ${model}.`, {
        param: 'input_fidelity'
      })
    }
    checkEnum(fields, 'input_fidelity', ['high', 'low'])
  }
}

function checkDallE(model: string, rules: ModelRules, fields: Fields): void {
  checkEnum(fields, 'response_format', ['url', 'b64_json'])
  if (readBoolean(fields, 'stream') === true) {
    throw new GatewayError('invalid_value', `Streaming is not supported for ${model}.`, { param: 'stream' })
  }
  if (rules.family === 'dall-e-3') checkEnum(fields, 'style', ['vivid', 'natural'])
}

/**
 * Checks what OpenAI would refuse for this model, before any upstream is called. Fields the model's
 * rules do not mention pass untouched; with no rules (a model we do not know) only the shape every
 * image endpoint shares is checked.
 */
export function validateFields(endpoint: Endpoint, model: string, rules: ModelRules | null, fields: Fields): void {
  checkPrompt(endpoint, rules, fields)
  const n = readInteger(fields, 'n')
  if (rules === null) {
    checkRange('n', n, 1, Number.MAX_SAFE_INTEGER)
    return
  }
  if (!rules.endpoints.includes(endpoint)) {
    throw new GatewayError('invalid_value', `The model '${model}' does not support image ${endpoint}.`, {
      param: 'model'
    })
  }
  checkRange('n', n, 1, rules.nMax)
  checkSize(rules, fields)
  checkEnum(fields, 'quality', rules.qualities)
  if (rules.family === 'gpt-image') checkGptImageOnly(endpoint, model, rules, fields)
  else checkDallE(model, rules, fields)
}

/** The `model` field as the client sent it (undefined when absent), with its type checked. */
export function readModel(fields: Fields): string | undefined {
  return readString(fields, 'model')
}

/** A JSON edit's image reference: exactly one of `image_url` (http(s) or data: URL) or `file_id`. */
function checkImageRef(param: string, ref: unknown): void {
  if (ref === null || typeof ref !== 'object' || Array.isArray(ref)) throw invalidType(param, 'an object', ref)
  const keys = Object.keys(ref)
  const unknown = keys.find((k) => k !== 'image_url' && k !== 'file_id')
  if (unknown !== undefined) {
    throw new GatewayError('unknown_parameter', `Unknown parameter: '${param}.${unknown}'.`, { param: `${param}.${unknown}` })
  }
  if (keys.length !== 1) {
    throw new GatewayError('invalid_value', `Invalid '${param}': give exactly one of 'image_url' or 'file_id'.`, { param })
  }
  const record = ref as Record<string, unknown>
  const key = keys[0] as string
  const value = record[key]
  if (typeof value !== 'string') throw invalidType(`${param}.${key}`, 'a string', value)
  if (key === 'image_url') {
    if (!/^(https?:\/\/|data:)/i.test(value)) {
      throw new GatewayError('invalid_value', `Invalid '${param}.image_url': expected an http(s) URL or a data: URL.`, {
        param: `${param}.image_url`
      })
    }
    if (value.length > MAX_IMAGE_URL_CHARS) {
      throw new GatewayError(
        'string_above_max_length',
        `Invalid '${param}.image_url': string too long. Expected a string with maximum length ${MAX_IMAGE_URL_CHARS}, but got a string with length ${value.length} instead.`,
        { param: `${param}.image_url` }
      )
    }
  }
}

const MAX_IMAGE_URL_CHARS = 20_971_520

/**
 * The JSON form of edits (spec §4.2), GPT image models only. The gateway never fetches the URLs it
 * carries: they go to the upstream as sent.
 */
export function validateJsonEdit(model: string, rules: ModelRules | null, fields: Fields): void {
  if (rules !== null && rules.family !== 'gpt-image') {
    throw new GatewayError(
      'invalid_value',
      `${model} edits take multipart/form-data; the JSON form of edits is for GPT image models.`,
      { param: 'model' }
    )
  }
  const images = present(fields, 'images')
  if (images === undefined) {
    throw new GatewayError('missing_required_parameter', "Missing required parameter: 'images'.", { param: 'images' })
  }
  if (!Array.isArray(images)) throw invalidType('images', 'an array', images)
  const maxImages = rules?.files.maxImages ?? Number.MAX_SAFE_INTEGER
  if (images.length === 0) {
    throw new GatewayError('invalid_value', "Invalid 'images': expected at least one image.", { param: 'images' })
  }
  if (images.length > maxImages) {
    throw new GatewayError('too_many_images', `Too many images: ${model} takes at most ${maxImages}.`, { param: 'images' })
  }
  images.forEach((ref, i) => checkImageRef(`images[${i}]`, ref))
  const mask = present(fields, 'mask')
  if (mask !== undefined) checkImageRef('mask', mask)
}
