import { GatewayError } from '../errors/catalogue.js'
import type { Endpoint, ModelRules } from '../openai/models.js'
import { validateFields, type Fields } from '../openai/validate.js'
import { ImageProbe } from './image-probe.js'
import type { PartInfo, ScannerEvents } from './scanner.js'

/** A text part is held whole to be read; a 32,000-character prompt is at most 128 KB of UTF-8. */
export const MAX_FIELD_BYTES = 256 * 1024
/** OpenAI takes 16 images, a mask and a dozen fields; anything near this is abuse. */
export const MAX_PARTS = 100
/**
 * All text parts together, since each is held whole: a longest prompt and a dozen short values
 * fit four times over, while MAX_PARTS fields of MAX_FIELD_BYTES would hold 25 MiB per request
 * (reliability.md case 12: 40 text fields just under the per-field cap).
 */
export const MAX_TEXT_BYTES = 1024 * 1024

const IMAGE_FIELDS = new Set(['image', 'image[]'])
const MASK_FIELD = 'mask'

export interface FileFacts {
  field: string
  filename: string
  contentType: string | null
  size: number
  probe: ImageProbe
  ended: boolean
  /** Its type and dimensions passed the routed model's rules (only its size is still watched). */
  judged: boolean
}

interface Routed {
  model: string
  rules: ModelRules | null
}

type Current =
  | { kind: 'field'; name: string; chunks: Buffer[]; size: number; start: number }
  | { kind: 'file'; facts: FileFacts }
  | { kind: 'other' }

/** Where the `model` field's value sits in the body, so an alias can be swapped for the upstream name. */
export interface ValueRange {
  start: number
  end: number
}

/**
 * Learns a form's fields and files from the scanner's events, and refuses what the routed model
 * would refuse as soon as it can tell (a file's first bytes, its running size, the part count), so
 * the relay can stop the upload before the upstream sees the form's closing boundary.
 */
export class FormInspector implements ScannerEvents, Fields {
  readonly source = 'form' as const
  readonly texts = new Map<string, string>()
  readonly files: FileFacts[] = []
  modelRange: ValueRange | null = null
  formEnded = false
  /** Where the closing delimiter starts, once the form has ended. */
  closeOffset = -1
  private readonly endpoint: Endpoint
  private readonly onModel: () => void
  private current: Current = { kind: 'other' }
  private parts = 0
  private textBytes = 0
  private routed: Routed | null = null

  constructor(endpoint: Endpoint, onModel: () => void) {
    this.endpoint = endpoint
    this.onModel = onModel
  }

  get(name: string): unknown {
    return this.texts.get(name)
  }

  get images(): FileFacts[] {
    return this.files.filter((f) => IMAGE_FIELDS.has(f.field))
  }

  partStart(part: PartInfo): void {
    if (++this.parts > MAX_PARTS) {
      throw new GatewayError('request_too_large', `The form has more than ${MAX_PARTS} parts.`)
    }
    if (part.filename === null) {
      if (IMAGE_FIELDS.has(part.name) || part.name === MASK_FIELD) {
        throw new GatewayError(
          'invalid_type',
          `Invalid type for '${part.name}': expected a file, but got a string instead.`,
          { param: part.name }
        )
      }
      if (!part.name.endsWith('[]') && this.texts.has(part.name)) {
        throw new GatewayError(
          'invalid_value',
          `Invalid parameter: '${part.name}'. This parameter already has a different value in your parameters.`,
          { param: part.name }
        )
      }
      this.current = { kind: 'field', name: part.name, chunks: [], size: 0, start: -1 }
      return
    }
    if (!IMAGE_FIELDS.has(part.name) && part.name !== MASK_FIELD) {
      this.current = { kind: 'other' }
      return
    }
    const facts: FileFacts = {
      field: part.name,
      filename: part.filename,
      contentType: part.contentType,
      size: 0,
      probe: new ImageProbe(),
      ended: false,
      judged: false
    }
    this.files.push(facts)
    this.current = { kind: 'file', facts }
    this.checkFileSet()
  }

  partData(data: Buffer, offset: number): void {
    const current = this.current
    if (current.kind === 'field') {
      if (current.start === -1) current.start = offset
      current.size += data.length
      if (current.size > MAX_FIELD_BYTES) {
        throw new GatewayError(
          'string_above_max_length',
          `Invalid '${current.name}': the value is over ${MAX_FIELD_BYTES} bytes.`,
          { param: current.name }
        )
      }
      this.textBytes += data.length
      if (this.textBytes > MAX_TEXT_BYTES) {
        throw new GatewayError('request_too_large', `The form's text fields are over ${MAX_TEXT_BYTES} bytes in all.`)
      }
      current.chunks.push(Buffer.from(data))
    } else if (current.kind === 'file') {
      const facts = current.facts
      facts.size += data.length
      if (!facts.probe.done) facts.probe.push(data)
      this.checkFile(facts)
    }
  }

  partEnd(): void {
    const current = this.current
    this.current = { kind: 'other' }
    if (current.kind === 'field') {
      this.texts.set(current.name, Buffer.concat(current.chunks).toString('utf8'))
      if (current.name === 'model') {
        const start = current.start === -1 ? -1 : current.start
        this.modelRange = start === -1 ? null : { start, end: start + current.size }
        this.onModel()
      }
    } else if (current.kind === 'file') {
      current.facts.ended = true
      this.checkFile(current.facts)
    }
  }

  formEnd(closeOffset: number): void {
    this.formEnded = true
    this.closeOffset = closeOffset
    if (this.routed !== null) this.checkComplete()
  }

  /** The model is decided: check everything seen so far against its rules (and the whole form if it ended). */
  route(model: string, rules: ModelRules | null): void {
    this.routed = { model, rules }
    this.checkFileSet()
    for (const facts of this.files) this.checkFile(facts)
    if (this.formEnded) this.checkComplete()
  }

  private checkComplete(): void {
    const routed = this.routed
    if (routed === null) return
    validateFields(this.endpoint, routed.model, routed.rules, this)
    if (this.endpoint !== 'generations' && this.images.length === 0) {
      throw new GatewayError('missing_required_parameter', "Missing required parameter: 'image'.", { param: 'image' })
    }
  }

  private checkFileSet(): void {
    const rules = this.routed?.rules
    if (rules === undefined || rules === null) return
    const images = this.images
    const fields = new Set(images.map((f) => f.field))
    if (fields.size > 1) {
      throw new GatewayError('invalid_value', "Send the images under either 'image' or 'image[]', not both.", {
        param: 'image'
      })
    }
    const maxImages = this.endpoint === 'variations' ? 1 : rules.files.maxImages
    if (images.length > maxImages) {
      throw new GatewayError(
        'too_many_images',
        `Too many images: ${this.routed?.model} takes at most ${maxImages} for image ${this.endpoint}.`,
        { param: 'image' }
      )
    }
    if (this.files.filter((f) => f.field === MASK_FIELD).length > 1) {
      throw new GatewayError('invalid_value', "Send at most one 'mask'.", { param: MASK_FIELD })
    }
  }

  private checkFile(facts: FileFacts): void {
    const routed = this.routed
    if (routed === null || routed.rules === null) return
    const files = routed.rules.files
    const isMask = facts.field === MASK_FIELD
    const param = isMask ? MASK_FIELD : 'image'
    const maxBytes = isMask ? files.maskMaxBytes : files.imageMaxBytes
    if (facts.size >= maxBytes) {
      throw new GatewayError(
        'image_too_large',
        `Invalid file '${param}': ${routed.model} takes files under ${formatMiB(maxBytes)}.`,
        { param }
      )
    }
    if (facts.judged || (!facts.probe.done && !facts.ended)) return
    const probed = facts.probe.result()
    const formats: readonly string[] = isMask ? ['png'] : files.imageFormats
    if (probed.format === null || !formats.includes(probed.format)) {
      const wanted = formats.map((f) => f.toUpperCase()).join(', ')
      throw new GatewayError(
        'invalid_image_format',
        `Invalid file '${param}': ${routed.model} takes ${wanted} ${isMask ? 'masks' : 'images'}; this file is ${probed.format === null ? 'not an image of those kinds' : probed.format.toUpperCase()}.`,
        { param }
      )
    }
    this.checkDimensions(facts, routed)
    facts.judged = true
  }

  private checkDimensions(facts: FileFacts, routed: Routed): void {
    const { width, height } = facts.probe.result()
    if (width === null || height === null) return
    const isMask = facts.field === MASK_FIELD
    if (!isMask && routed.rules?.files.squareImage && width !== height) {
      throw new GatewayError(
        'invalid_image_dimensions',
        `Invalid file 'image': ${routed.model} takes square images; this one is ${width}x${height}.`,
        { param: 'image' }
      )
    }
    const mask = this.files.find((f) => f.field === MASK_FIELD)
    const first = this.images[0]
    if (mask === undefined || first === undefined) return
    const m = mask.probe.result()
    const f = first.probe.result()
    if (m.width === null || m.height === null || f.width === null || f.height === null) return
    if (m.width !== f.width || m.height !== f.height) {
      throw new GatewayError(
        'invalid_image_dimensions',
        `Invalid file 'mask': the mask is ${m.width}x${m.height} but the image is ${f.width}x${f.height}; they must be the same size.`,
        { param: MASK_FIELD }
      )
    }
  }
}

function formatMiB(bytes: number): string {
  return `${bytes / (1024 * 1024)} MB`
}
