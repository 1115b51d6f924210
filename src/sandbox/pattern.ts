import { createHash } from 'node:crypto'
import { drawableText, GLYPH_ADVANCE_CELLS, GLYPH_HEIGHT_CELLS, textPath } from './bitmap-font.js'
import { seededRandom, type Rng } from './seeded-random.js'

/**
 * The picture a prompt stands for, as SVG for sharp (librsvg) to rasterise: a palette and a
 * gradient from the prompt's hash, shapes from the hash of the prompt and the image's index (so
 * the n images of one request share a look but differ), and the prompt's first words in a bitmap
 * font. Everything comes from SHA-256 and integer arithmetic, so the same prompt gives the same
 * SVG on every machine.
 */

export interface PatternOptions {
  width: number
  height: number
  /** The image's index within its request. */
  variant: number
  /** No background fill: the shapes and caption stand on transparent pixels. */
  transparent: boolean
}

/** Seeded from the hash, so the same prompt draws the same picture. */
function rngFrom(digest: Buffer): Rng {
  return seededRandom(digest.readUInt32BE(0))
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest()
}

/** HSL (degrees, percent, percent) as #rrggbb: librsvg reads hex everywhere, whatever its version. */
function hslHex(hueDegrees: number, saturationPercent: number, lightnessPercent: number): string {
  const h = (((hueDegrees % 360) + 360) % 360) / 360
  const s = saturationPercent / 100
  const l = lightnessPercent / 100
  const q = l < 0.5 ? l * (1 + s) : l + s - l * s
  const p = 2 * l - q
  const channel = (t: number): string => {
    const k = t < 0 ? t + 1 : t > 1 ? t - 1 : t
    const v = k < 1 / 6 ? p + (q - p) * 6 * k : k < 1 / 2 ? q : k < 2 / 3 ? p + (q - p) * (2 / 3 - k) * 6 : p
    return Math.round(v * 255).toString(16).padStart(2, '0')
  }
  return `#${channel(h + 1 / 3)}${channel(h)}${channel(h - 1 / 3)}`
}

interface Palette {
  backgroundFrom: string
  backgroundTo: string
  /** Gradient direction in degrees. */
  angle: number
  shapes: readonly string[]
}

function paletteOf(promptDigest: Buffer): Palette {
  const hue = promptDigest.readUInt16BE(4) % 360
  // An analogous pair and its complement: varied, yet clearly one palette per prompt.
  const shapeHues = [hue + 25, hue + 180, hue + 205, hue - 35]
  return {
    backgroundFrom: hslHex(hue, 55, 18),
    backgroundTo: hslHex(hue + 40, 65, 52),
    angle: (promptDigest.readUInt8(6) * 360) / 256,
    shapes: shapeHues.map((h, i) => hslHex(h, 60 + 8 * i, 45 + 8 * i))
  }
}

function round1(value: number): string {
  return (Math.round(value * 10) / 10).toString()
}

function shapesSvg(rng: Rng, palette: Palette, width: number, height: number): string {
  const span = Math.min(width, height)
  const count = 8 + Math.floor(rng() * 8)
  const parts: string[] = []
  for (let i = 0; i < count; i++) {
    const colour = palette.shapes[Math.floor(rng() * palette.shapes.length)] ?? '#888888'
    const cx = rng() * width
    const cy = rng() * height
    const r = span * (0.05 + rng() * 0.2)
    const opacity = round1(0.45 + rng() * 0.45)
    const kind = Math.floor(rng() * 4)
    if (kind === 0) {
      parts.push(`<circle cx="${round1(cx)}" cy="${round1(cy)}" r="${round1(r)}" fill="${colour}" fill-opacity="${opacity}"/>`)
    } else if (kind === 1) {
      const rotation = round1(rng() * 90)
      parts.push(
        `<rect x="${round1(cx - r)}" y="${round1(cy - r / 2)}" width="${round1(2 * r)}" height="${round1(r)}" fill="${colour}" fill-opacity="${opacity}" transform="rotate(${rotation} ${round1(cx)} ${round1(cy)})"/>`
      )
    } else if (kind === 2) {
      const turn = rng() * 2 * Math.PI
      const points = [0, 1, 2]
        .map((k) => {
          const a = turn + (k * 2 * Math.PI) / 3
          return `${round1(cx + r * Math.cos(a))},${round1(cy + r * Math.sin(a))}`
        })
        .join(' ')
      parts.push(`<polygon points="${points}" fill="${colour}" fill-opacity="${opacity}"/>`)
    } else {
      const stroke = round1(Math.max(2, r * 0.18))
      parts.push(
        `<circle cx="${round1(cx)}" cy="${round1(cy)}" r="${round1(r)}" fill="none" stroke="${colour}" stroke-width="${stroke}" stroke-opacity="${opacity}"/>`
      )
    }
  }
  return parts.join('')
}

/** The prompt's first words that fit on at most two lines of `maxChars`. */
function captionLines(prompt: string, maxChars: number): string[] {
  const lines: string[] = []
  let line = ''
  for (const word of drawableText(prompt).split(' ')) {
    if (word === '') continue
    const candidate = line === '' ? word : `${line} ${word}`
    if (candidate.length <= maxChars) {
      line = candidate
      continue
    }
    if (line !== '') lines.push(line)
    if (lines.length === 2) return lines
    // A word longer than a line is cut rather than dropped, so a one-word prompt still shows.
    line = word.slice(0, maxChars)
  }
  if (line !== '' && lines.length < 2) lines.push(line)
  return lines
}

function captionSvg(prompt: string, width: number, height: number): string {
  // One font cell per 128 px of the short edge: the caption keeps its proportions at any size.
  const cellPx = Math.max(1, Math.round(Math.min(width, height) / 128))
  const marginPx = 2 * cellPx
  const maxChars = Math.floor((width - 2 * marginPx + cellPx) / (GLYPH_ADVANCE_CELLS * cellPx))
  const lines = maxChars > 0 ? captionLines(prompt, maxChars) : []
  if (lines.length === 0) return ''
  const lineHeightPx = (GLYPH_HEIGHT_CELLS + 3) * cellPx
  const bandHeightPx = lines.length * lineHeightPx + 2 * marginPx - 3 * cellPx
  const bandTop = height - bandHeightPx
  const path = lines.map((text, i) => textPath(text, marginPx, bandTop + marginPx + i * lineHeightPx, cellPx)).join('')
  return (
    `<rect x="0" y="${bandTop}" width="${width}" height="${bandHeightPx}" fill="#000000" fill-opacity="0.45"/>` +
    `<path d="${path}" fill="#ffffff" shape-rendering="crispEdges"/>`
  )
}

export function patternSvg(prompt: string, options: PatternOptions): string {
  const { width, height, variant, transparent } = options
  const palette = paletteOf(sha256(prompt))
  const rng = rngFrom(sha256(`${variant}\u0000${prompt}`))
  const radians = (palette.angle * Math.PI) / 180
  const dx = 0.5 * Math.cos(radians)
  const dy = 0.5 * Math.sin(radians)
  const background = transparent
    ? ''
    : `<defs><linearGradient id="bg" x1="${round1(0.5 - dx)}" y1="${round1(0.5 - dy)}" x2="${round1(0.5 + dx)}" y2="${round1(0.5 + dy)}">` +
      `<stop offset="0" stop-color="${palette.backgroundFrom}"/><stop offset="1" stop-color="${palette.backgroundTo}"/>` +
      `</linearGradient></defs><rect width="${width}" height="${height}" fill="url(#bg)"/>`
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">` +
    background +
    shapesSvg(rng, palette, width, height) +
    captionSvg(prompt, width, height) +
    '</svg>'
  )
}
