import sharp, { type Sharp } from 'sharp'
import { patternSvg } from './pattern.js'

/**
 * The sandbox's image making, with no HTTP in it: a prompt's picture, an edit, a variation, the
 * rougher previews of a streamed image, and the encoding of each. Work happens on raw RGBA
 * "canvases" so that one rendering can be encoded several ways (a streamed image's partials and
 * its final form) without decoding it again. All pixel work is sharp's, off the event loop.
 */

export type OutputFormat = 'png' | 'jpeg' | 'webp'

export interface PixelSize {
  width: number
  height: number
}

/** Unpremultiplied RGBA, row by row. */
export interface Canvas extends PixelSize {
  pixels: Buffer
}

export interface Encoding {
  format: OutputFormat
  /** OpenAI's output_compression (0-100, 100 the best), used as the JPEG/WebP quality. */
  compression: number
  /** Keep the alpha channel (PNG and WebP); otherwise transparent pixels are laid on white. */
  transparent: boolean
}

/** Which input a decoding failure is about, so the caller can name it as the bad parameter. */
export type InputRole = 'image' | 'mask'

/** An uploaded image that sharp could not decode (truncated, corrupt, or too many pixels). */
export class InputImageError extends Error {
  readonly role: InputRole

  constructor(role: InputRole, cause: unknown) {
    super(`the ${role} could not be decoded`, { cause })
    this.name = 'InputImageError'
    this.role = role
  }
}

/** An upload bigger than this is refused before decoding (a small PNG can inflate to gigabytes). */
const MAX_INPUT_PIXELS = 8192 * 8192
const RGBA = 4
/** Without a mask or transparent pixels, the edit shows the pattern at about a quarter strength. */
const WHOLE_IMAGE_TINT_ALPHA = 64
/** WebP's default effort (4) doubles the encoding time for a barely smaller file. */
const WEBP_EFFORT = 2

function fromCanvas(canvas: Canvas): Sharp {
  return sharp(canvas.pixels, { raw: { width: canvas.width, height: canvas.height, channels: RGBA } })
}

async function toCanvas(image: Sharp): Promise<Canvas> {
  const { data, info } = await image.ensureAlpha().raw().toBuffer({ resolveWithObject: true })
  return { pixels: data, width: info.width, height: info.height }
}

function fromInput(bytes: Buffer): Sharp {
  return sharp(bytes, { limitInputPixels: MAX_INPUT_PIXELS })
}

/** Runs a pipeline over an uploaded image, blaming the upload when it cannot be decoded. */
async function decodeInput<T>(role: InputRole, work: () => Promise<T>): Promise<T> {
  try {
    return await work()
  } catch (err) {
    throw new InputImageError(role, err)
  }
}

/** The prompt's picture (see pattern.ts); `variant` is the image's index within its request. */
export async function generateCanvas(prompt: string, size: PixelSize, variant: number, transparent: boolean): Promise<Canvas> {
  const svg = patternSvg(prompt, { ...size, variant, transparent })
  return toCanvas(sharp(Buffer.from(svg, 'utf8')))
}

export interface EditInput {
  image: Buffer
  /** Alpha 0 marks where to edit (OpenAI's rule); without it, the image's own transparent pixels do. */
  mask: Buffer | null
}

/** How much of the prompt's picture goes on each pixel: 255 replaces it, 0 keeps the image. */
async function editStrength(input: EditInput, image: Canvas, hasAlpha: boolean): Promise<Buffer> {
  const { width, height } = image
  if (input.mask !== null) {
    const mask = input.mask
    return decodeInput('mask', () =>
      fromInput(mask).resize(width, height, { fit: 'cover' }).ensureAlpha().extractChannel('alpha').negate().raw().toBuffer()
    )
  }
  if (hasAlpha) return fromCanvas(image).extractChannel('alpha').negate().raw().toBuffer()
  return Buffer.alloc(width * height, WHOLE_IMAGE_TINT_ALPHA)
}

/**
 * The image with the prompt's picture laid inside the mask's transparent area (or the image's
 * own, or lightly over all of it when it has no alpha), at `size` or, with none, the image's size.
 */
export async function editCanvas(input: EditInput, prompt: string, size: PixelSize | null, variant: number): Promise<Canvas> {
  const { image, hasAlpha } = await decodeInput('image', async () => {
    const decoded = fromInput(input.image)
    const { hasAlpha: alpha } = await decoded.metadata()
    const resized = size === null ? decoded : decoded.resize(size.width, size.height, { fit: 'cover' })
    return { image: await toCanvas(resized), hasAlpha: alpha }
  })
  const strength = await editStrength(input, image, hasAlpha)
  const svg = patternSvg(prompt, { width: image.width, height: image.height, variant, transparent: false })
  // Two pipelines: within one, sharp drops the alpha after joining channels, whatever the call order.
  const patternRgb = await sharp(Buffer.from(svg, 'utf8')).removeAlpha().raw().toBuffer()
  const pattern = await sharp(patternRgb, { raw: { width: image.width, height: image.height, channels: 3 } })
    .joinChannel(strength, { raw: { width: image.width, height: image.height, channels: 1 } })
    .raw()
    .toBuffer()
  return toCanvas(
    fromCanvas(image).composite([
      { input: pattern, raw: { width: image.width, height: image.height, channels: RGBA }, blend: 'over' }
    ])
  )
}

/**
 * A visibly altered copy of the image, different for each `variant`: a crop of 4-10% off
 * alternating sides, a mirror on odd variants, a hue rotation and a saturation change.
 */
export async function varyCanvas(image: Buffer, size: PixelSize, variant: number): Promise<Canvas> {
  return decodeInput('image', async () => {
    const decoded = fromInput(image)
    const { width, height } = await decoded.metadata()
    const marginFraction = 0.04 + 0.03 * (variant % 3)
    const cropWidth = Math.max(1, Math.round(width * (1 - marginFraction)))
    const cropHeight = Math.max(1, Math.round(height * (1 - marginFraction)))
    const fromRight = variant % 2 === 1
    const fromBottom = Math.floor(variant / 2) % 2 === 1
    return toCanvas(
      decoded
        .extract({
          left: fromRight ? width - cropWidth : 0,
          top: fromBottom ? height - cropHeight : 0,
          width: cropWidth,
          height: cropHeight
        })
        .resize(size.width, size.height, { fit: 'fill' })
        .flop(variant % 2 === 1)
        .modulate({ hue: (40 + 53 * variant) % 360, saturation: variant % 2 === 0 ? 1.25 : 0.8 })
    )
  })
}

/**
 * The `step`-th of `steps` streamed previews: the image shrunk then blown back up as a mosaic,
 * roughest first (1/32 of the size for the first of three), each step twice as fine as the one
 * before. Nearest-neighbour blocks, not a blur: a blurred 1024×1024 PNG is larger than the sharp
 * final image, and a load test streaming three partials would pay for it three times.
 */
export async function roughCanvas(canvas: Canvas, step: number, steps: number): Promise<Canvas> {
  const shrink = 2 ** (steps - step + 2)
  const small = await fromCanvas(canvas)
    .resize(Math.max(1, Math.round(canvas.width / shrink)), Math.max(1, Math.round(canvas.height / shrink)), { fit: 'fill' })
    .raw()
    .toBuffer({ resolveWithObject: true })
  const smallCanvas: Canvas = { pixels: small.data, width: small.info.width, height: small.info.height }
  return toCanvas(fromCanvas(smallCanvas).resize(canvas.width, canvas.height, { fit: 'fill', kernel: 'nearest' }))
}

export async function encodeCanvas(canvas: Canvas, encoding: Encoding): Promise<Buffer> {
  let image = fromCanvas(canvas)
  // JPEG has no alpha; an opaque answer from a transparent source shows white where it was clear.
  image = encoding.transparent && encoding.format !== 'jpeg' ? image : image.flatten({ background: '#ffffff' })
  const quality = Math.min(100, Math.max(1, Math.round(encoding.compression)))
  switch (encoding.format) {
    case 'png':
      return image.png().toBuffer()
    case 'jpeg':
      return image.jpeg({ quality }).toBuffer()
    case 'webp':
      return image.webp({ quality, alphaQuality: 100, effort: WEBP_EFFORT }).toBuffer()
  }
}

/** generateCanvas then encodeCanvas, for callers that need only the file. */
export async function generateImage(prompt: string, size: PixelSize, variant: number, encoding: Encoding): Promise<Buffer> {
  return encodeCanvas(await generateCanvas(prompt, size, variant, encoding.transparent), encoding)
}

export interface InputFacts extends PixelSize {
  hasAlpha: boolean
}

/** An upload's size and alpha, read from its header; throws InputImageError when sharp cannot read it. */
export async function inspectInput(role: InputRole, bytes: Buffer): Promise<InputFacts> {
  return decodeInput(role, async () => {
    const { width, height, hasAlpha } = await fromInput(bytes).metadata()
    return { width, height, hasAlpha }
  })
}
