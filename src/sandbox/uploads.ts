import type { FastifyRequest } from 'fastify'
import { ImageProbe } from '../multipart/image-probe.js'
import type { ModelRules } from '../openai/models.js'
import { invalidRequest, missingParameter, SandboxError } from './errors.js'
import { InputImageError, inspectInput, type InputFacts, type InputRole } from './render.js'

/**
 * The images a request brings, read whole (sharp needs all the bytes anyway): the file parts of
 * a multipart form, or the data: URLs of a JSON edit. The sandbox never fetches a URL: a request
 * naming an http(s) URL or a file_id gets a 400.
 */

export interface InputImage {
  bytes: Buffer
  facts: InputFacts
}

export interface Upload {
  /** Text parts by name (the last one wins, as for any repeated field). */
  values: Map<string, string>
  /** `image` and `image[]` parts, in the order sent (openai-node names even one image `image[]`). */
  images: Buffer[]
  mask: Buffer | null
}

const IMAGE_PART_NAMES: ReadonlySet<string> = new Set(['image', 'image[]'])
const MASK_PART_NAMES: ReadonlySet<string> = new Set(['mask', 'mask[]'])

export async function readUpload(request: FastifyRequest): Promise<Upload> {
  const upload: Upload = { values: new Map(), images: [], mask: null }
  for await (const part of request.parts()) {
    if (part.type === 'field') {
      if (typeof part.value === 'string') upload.values.set(part.fieldname, part.value)
      continue
    }
    // Every file is read to its end, even one we ignore: the form's next parts come after it.
    const bytes = await part.toBuffer()
    if (IMAGE_PART_NAMES.has(part.fieldname)) upload.images.push(bytes)
    else if (MASK_PART_NAMES.has(part.fieldname)) upload.mask = bytes
  }
  return upload
}

interface ImageRef {
  image_url?: unknown
  file_id?: unknown
}

/** The bytes of a JSON edit's image reference (validateJsonEdit has checked its shape). */
export function imageRefBytes(ref: unknown, param: string): Buffer {
  const { image_url: url, file_id: fileId } = (ref ?? {}) as ImageRef
  if (fileId !== undefined) {
    throw invalidRequest('invalid_value', `Invalid '${param}.file_id': the sandbox has no Files API; send the image as a data: URL.`, `${param}.file_id`)
  }
  const urlParam = `${param}.image_url`
  if (typeof url !== 'string') throw missingParameter(urlParam)
  // RFC 2397: data:[<mediatype>][;base64],<data>. Images only come base64-encoded in practice.
  const match = /^data:([^,;]*)((?:;[^,;]*)*),/i.exec(url)
  if (match === null) {
    throw invalidRequest('invalid_value', `Invalid '${urlParam}': the sandbox never fetches URLs; send the image as a base64 data: URL.`, urlParam)
  }
  if (!/;base64$/i.test(match[2] ?? '')) {
    throw invalidRequest('invalid_value', `Invalid '${urlParam}': expected a base64 data: URL (data:image/png;base64,...).`, urlParam)
  }
  return Buffer.from(url.slice(match[0].length), 'base64')
}

function supportedFormats(formats: readonly string[]): string {
  return formats.map((format) => `'image/${format}'`).join(', ')
}

/**
 * Checks an upload is an image the model takes (by its bytes, as OpenAI checks the MIME type)
 * and that sharp can read its header.
 */
export async function checkImage(bytes: Buffer, param: string, role: InputRole, rules: ModelRules): Promise<InputImage> {
  const probe = new ImageProbe()
  probe.push(bytes)
  const { format } = probe.result()
  const formats = role === 'mask' ? ['png'] : rules.files.imageFormats
  if (format === null || !formats.some((allowed) => allowed === format)) {
    throw invalidRequest(
      'invalid_image_format',
      `Invalid file '${param}': unsupported image format. Supported file formats are ${supportedFormats(formats)}.`,
      param
    )
  }
  try {
    return { bytes, facts: await inspectInput(role, bytes) }
  } catch (err) {
    if (err instanceof InputImageError) {
      throw invalidRequest('invalid_image', `Invalid image file for '${param}': it could not be decoded.`, param)
    }
    throw err
  }
}

/** OpenAI's mask rules: the first image's size, and an alpha channel (its transparent pixels mark the edit). */
export function checkMask(mask: InputImage, image: InputImage, param: string): void {
  if (mask.facts.width !== image.facts.width || mask.facts.height !== image.facts.height) {
    throw new SandboxError(
      400,
      `Invalid '${param}': the mask is ${mask.facts.width}x${mask.facts.height} but the image is ${image.facts.width}x${image.facts.height}; they must match.`,
      { code: 'invalid_image_dimensions', param }
    )
  }
  if (!mask.facts.hasAlpha) {
    throw invalidRequest('invalid_image', `Invalid '${param}': the mask needs an alpha channel; its fully transparent pixels mark where to edit.`, param)
  }
}
