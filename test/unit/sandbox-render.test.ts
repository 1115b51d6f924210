import sharp from 'sharp'
import t from 'tap'
import { drawableText, textPath } from '../../src/sandbox/bitmap-font.js'
import { patternSvg } from '../../src/sandbox/pattern.js'
import {
  editCanvas,
  encodeCanvas,
  generateCanvas,
  generateImage,
  InputImageError,
  roughCanvas,
  varyCanvas,
  type Canvas,
  type Encoding
} from '../../src/sandbox/render.js'
import { makeJpeg, makePng } from '../helpers/images.js'

const png: Encoding = { format: 'png', compression: 100, transparent: false }
const square = { width: 512, height: 512 }

async function rgba(bytes: Buffer): Promise<Canvas> {
  const { data, info } = await sharp(bytes).ensureAlpha().raw().toBuffer({ resolveWithObject: true })
  return { pixels: data, width: info.width, height: info.height }
}

function pixel(canvas: Canvas, x: number, y: number): number[] {
  const at = (y * canvas.width + x) * 4
  return [...canvas.pixels.subarray(at, at + 4)]
}

/** Mean over RGB of |a - b| in the rectangle, 0-255. */
function meanDifference(a: Canvas, b: Canvas, box: { left: number; top: number; width: number; height: number }): number {
  let sum = 0
  for (let y = box.top; y < box.top + box.height; y++) {
    for (let x = box.left; x < box.left + box.width; x++) {
      const p = pixel(a, x, y)
      const q = pixel(b, x, y)
      for (let c = 0; c < 3; c++) sum += Math.abs((p[c] as number) - (q[c] as number))
    }
  }
  return sum / (box.width * box.height * 3)
}

/** Largest per-channel difference (RGBA) in the rectangle. */
function maxDifference(a: Canvas, b: Canvas, box: { left: number; top: number; width: number; height: number }): number {
  let max = 0
  for (let y = box.top; y < box.top + box.height; y++) {
    for (let x = box.left; x < box.left + box.width; x++) {
      const p = pixel(a, x, y)
      const q = pixel(b, x, y)
      for (let c = 0; c < 4; c++) max = Math.max(max, Math.abs((p[c] as number) - (q[c] as number)))
    }
  }
  return max
}

/** A PNG the size of `size`, opaque, with a transparent square [from, to) in both axes: alpha 0 marks the edit. */
async function squareHoleMask(size: number, from: number, to: number): Promise<Buffer> {
  const hole = `<svg xmlns="http://www.w3.org/2000/svg" width="${size}" height="${size}"><rect x="${from}" y="${from}" width="${to - from}" height="${to - from}" fill="#fff"/></svg>`
  return sharp({ create: { width: size, height: size, channels: 4, background: { r: 0, g: 0, b: 0, alpha: 1 } } })
    .composite([{ input: Buffer.from(hole), blend: 'dest-out' }])
    .png()
    .toBuffer()
}

t.test('generated images have the requested size and format', async (t) => {
  const cases = [
    { format: 'png', width: 1024, height: 1024 },
    { format: 'jpeg', width: 1536, height: 1024 },
    { format: 'webp', width: 1024, height: 1536 },
    { format: 'png', width: 256, height: 256 },
    { format: 'png', width: 2048, height: 1152 }
  ] as const
  for (const { format, width, height } of cases) {
    const bytes = await generateImage('a sea otter', { width, height }, 0, { format, compression: 80, transparent: false })
    const meta = await sharp(bytes).metadata()
    t.equal(meta.format, format, `${format} ${width}x${height}`)
    t.equal(meta.width, width)
    t.equal(meta.height, height)
    t.equal(meta.hasAlpha, false, 'an opaque background has no alpha channel')
  }
})

t.test('the same prompt, size and format give the same bytes; another prompt or index gives another image', async (t) => {
  const first = await generateImage('a lighthouse at dusk', square, 0, png)
  const again = await generateImage('a lighthouse at dusk', square, 0, png)
  t.ok(first.equals(again), 'deterministic')
  const otherPrompt = await generateImage('a lighthouse at dawn', square, 0, png)
  const otherIndex = await generateImage('a lighthouse at dusk', square, 1, png)
  const base = await rgba(first)
  const whole = { left: 0, top: 0, width: 512, height: 512 }
  t.ok(meanDifference(base, await rgba(otherPrompt), whole) > 10, 'a different prompt looks different')
  t.ok(meanDifference(base, await rgba(otherIndex), whole) > 5, 'the second image of a request differs from the first')
})

t.test('a transparent background gives PNG and WebP with transparent pixels; JPEG is flattened', async (t) => {
  for (const format of ['png', 'webp'] as const) {
    const bytes = await generateImage('floating shapes', square, 0, { format, compression: 100, transparent: true })
    t.equal((await sharp(bytes).metadata()).hasAlpha, true, `${format} has alpha`)
    const { min } = (await sharp(bytes).stats()).channels[3] ?? { min: 255 }
    t.equal(min, 0, `${format} has fully transparent pixels`)
  }
  const jpeg = await generateImage('floating shapes', square, 0, { format: 'jpeg', compression: 90, transparent: true })
  t.equal((await sharp(jpeg).metadata()).hasAlpha, false)
})

t.test('output_compression sets the JPEG and WebP quality', async (t) => {
  for (const format of ['jpeg', 'webp'] as const) {
    const best = await generateImage('a busy market', square, 0, { format, compression: 100, transparent: false })
    const worst = await generateImage('a busy market', square, 0, { format, compression: 0, transparent: false })
    t.ok(worst.length < best.length / 2, `${format}: compression 0 (${worst.length} B) is far smaller than 100 (${best.length} B)`)
  }
})

t.test('the prompt is drawn with the built-in bitmap font, never SVG text (no system fonts needed)', async (t) => {
  const svg = patternSvg('Hello, world', { width: 1024, height: 1024, variant: 0, transparent: false })
  t.notMatch(svg, /<text/)
  t.match(svg, /<path d="M/)
  t.equal(drawableText('  Café  crème — naïve 日本 42! '), 'CAFE CREME NAIVE 42!', 'accents folded, unknown characters dropped')
  t.equal(textPath('日本', 0, 0, 4), '', 'nothing to draw for characters without glyphs')
  t.match(textPath('I', 10, 20, 2), /^M12 20h6v2h-6z/, 'the top bar of I: columns 1-3 at 2 px per cell')
  // The caption band is a dark strip along the bottom with white glyph squares in it.
  const image = await rgba(await generateImage('WWWW WWWW', square, 0, png))
  const bottomRows = { left: 0, top: 440, width: 512, height: 72 }
  let white = 0
  for (let y = bottomRows.top; y < 512; y++) for (let x = 0; x < 512; x++) if (pixel(image, x, y).slice(0, 3).every((v) => v === 255)) white++
  t.ok(white > 500, `the caption's glyphs are there (${white} white pixels)`)
})

t.test('an edit changes the image inside the mask\'s transparent area only', async (t) => {
  const image = await generateImage('a quiet street', square, 0, png)
  const mask = await squareHoleMask(512, 128, 384)
  const edited = await editCanvas({ image, mask }, 'a red balloon', null, 0)
  t.equal(edited.width, 512)
  t.equal(edited.height, 512)
  const before = await rgba(image)
  const pattern = await generateCanvas('a red balloon', square, 0, false)
  const outside = [
    { left: 0, top: 0, width: 512, height: 120 },
    { left: 0, top: 392, width: 512, height: 120 },
    { left: 0, top: 120, width: 120, height: 272 }
  ]
  for (const box of outside) t.ok(maxDifference(edited, before, box) <= 1, `unchanged outside the mask (${JSON.stringify(box)})`)
  const inside = { left: 136, top: 136, width: 240, height: 240 }
  t.ok(maxDifference(edited, pattern, inside) <= 1, 'inside the mask: the prompt\'s picture')
  t.ok(meanDifference(edited, before, inside) > 10, 'inside the mask: different from the input')
})

t.test('without a mask, an edit fills the image\'s own transparent pixels', async (t) => {
  const size = 256
  // Opaque grey with a transparent left half.
  const image = await sharp({ create: { width: size, height: size, channels: 4, background: { r: 128, g: 128, b: 128, alpha: 1 } } })
    .composite([{ input: Buffer.from(`<svg xmlns="http://www.w3.org/2000/svg" width="${size}" height="${size}"><rect width="128" height="${size}" fill="#fff"/></svg>`), blend: 'dest-out' }])
    .png()
    .toBuffer()
  const edited = await editCanvas({ image, mask: null }, 'green hills', null, 0)
  t.same(pixel(edited, 200, 100), [128, 128, 128, 255], 'the opaque half is kept')
  t.equal(pixel(edited, 40, 100)[3], 255, 'the transparent half is filled')
  t.notSame(pixel(edited, 40, 100), [0, 0, 0, 255])
})

t.test('an edit of an image without alpha (JPEG) tints it all lightly', async (t) => {
  const image = makeJpeg({ width: 320, height: 200 })
  const edited = await editCanvas({ image, mask: null }, 'sunset glow', null, 0)
  const before = await rgba(image)
  const whole = { left: 0, top: 0, width: 320, height: 200 }
  const change = meanDifference(edited, before, whole)
  t.ok(change > 2 && change < 60, `a light tint (mean change ${change.toFixed(1)})`)
})

t.test('an edit is made at the requested size, or the input\'s size without one', async (t) => {
  const image = makePng({ width: 300, height: 200, alpha: true, seed: 3 })
  t.match(await editCanvas({ image, mask: null }, 'x', null, 0), { width: 300, height: 200 })
  const resized = await editCanvas({ image, mask: null }, 'x', { width: 1024, height: 1536 }, 0)
  t.match(resized, { width: 1024, height: 1536 })
  const encoded = await encodeCanvas(resized, { format: 'webp', compression: 90, transparent: false })
  t.match(await sharp(encoded).metadata(), { format: 'webp', width: 1024, height: 1536 })
})

t.test('undecodable inputs raise InputImageError naming the input', async (t) => {
  const broken = makePng({ width: 64, height: 64 }).subarray(0, 60)
  await t.rejects(editCanvas({ image: broken, mask: null }, 'x', null, 0), InputImageError)
  const good = makePng({ width: 64, height: 64 })
  await t.rejects(editCanvas({ image: good, mask: Buffer.from('not a png') }, 'x', null, 0), { name: 'InputImageError', role: 'mask' })
  await t.rejects(varyCanvas(Buffer.from('nope'), square, 0), { name: 'InputImageError', role: 'image' })
})

t.test('variations have the requested size, differ from the input and from each other', async (t) => {
  const image = await generateImage('a teapot', square, 0, png)
  const source = await rgba(image)
  const first = await varyCanvas(image, { width: 256, height: 256 }, 0)
  const second = await varyCanvas(image, { width: 256, height: 256 }, 1)
  t.match(first, { width: 256, height: 256 })
  const same = await varyCanvas(image, square, 0)
  const whole = { left: 0, top: 0, width: 512, height: 512 }
  t.ok(meanDifference(same, source, whole) > 10, 'visibly altered')
  t.ok(meanDifference(first, second, { left: 0, top: 0, width: 256, height: 256 }) > 10, 'variants differ')
  t.ok((await varyCanvas(image, square, 0)).pixels.equals(same.pixels), 'deterministic')
})

t.test('partial images are rougher versions of the final image, roughest first', async (t) => {
  const final = await generateCanvas('a field of sunflowers', square, 0, false)
  const partials = [await roughCanvas(final, 0, 3), await roughCanvas(final, 1, 3), await roughCanvas(final, 2, 3)]
  for (const partial of partials) t.match(partial, { width: 512, height: 512 })
  const whole = { left: 0, top: 0, width: 512, height: 512 }
  const distances = partials.map((partial) => meanDifference(partial, final, whole))
  t.ok(distances[0]! > distances[1]! && distances[1]! > distances[2]! && distances[2]! > 0, `each partial is closer to the final image: ${distances.map((d) => d.toFixed(2)).join(' > ')}`)
  t.ok(distances[2]! < 20, 'the last partial resembles the final image')
  // A mosaic of 16×16 blocks (1/32 of 512): every pixel of a block is the same.
  const block = pixel(partials[0]!, 16, 16).join()
  t.equal(pixel(partials[0]!, 31, 31).join(), block)
})
