import { readFileSync } from 'node:fs'
import t from 'tap'
import { parse } from 'yaml'
import {
  actualMicroUsd,
  DEFAULT_PRICES,
  hasPrice,
  priceTableSchema,
  resolvePrices,
  worstCaseMicroUsd,
  type PriceTable
} from '../../src/billing/prices.js'
import { checkArbitrarySize, KNOWN_MODEL_NAMES, rulesFor, type Endpoint } from '../../src/openai/models.js'
import type { Fields } from '../../src/openai/validate.js'

/*
 * Exact micro-USD (µUSD) for each family, worked by hand in the comments: $X per 1M tokens is
 * X µUSD per token, and $0.0Y per image is Y0,000 µUSD.
 */

function json(values: Record<string, unknown>): Fields {
  return { source: 'json', get: (name) => (Object.hasOwn(values, name) ? values[name] : undefined) }
}

function form(values: Record<string, string>): Fields {
  return { source: 'form', get: (name) => (Object.hasOwn(values, name) ? values[name] : undefined) }
}

const prices = resolvePrices()
const OTTER = 'A cute baby sea otter' // 21 UTF-8 bytes
const IMAGE_REF = { image_url: 'https://example.com/a.png' }

function usage(text: number, image: number, output: number, outputDetails?: { image: number; text: number }): unknown {
  return {
    total_tokens: text + image + output,
    input_tokens: text + image,
    output_tokens: output,
    input_tokens_details: { text_tokens: text, image_tokens: image },
    ...(outputDetails === undefined
      ? {}
      : { output_tokens_details: { image_tokens: outputDetails.image, text_tokens: outputDetails.text } })
  }
}

t.test('DALL·E 2 is priced per image by size', async (t) => {
  // 3 × $0.018 = $0.054 (decimal arithmetic: 0.018 * 3 * 1e6 in floats is 54000.00000000001)
  t.equal(worstCaseMicroUsd('dall-e-2', 'generations', json({ n: 3, size: '512x512' }), prices), 54_000)
  // Variations form, n "2", no size: the dearest size, 2 × $0.02
  t.equal(worstCaseMicroUsd('dall-e-2', 'variations', form({ n: '2' }), prices), 40_000)
  t.equal(worstCaseMicroUsd('dall-e-2', 'edits', form({ prompt: 'x', size: '256x256' }), prices), 16_000)
  // An n that cannot be read is priced at the model's most, 10 × $0.02
  t.equal(worstCaseMicroUsd('dall-e-2', 'generations', json({ n: 'many' }), prices), 200_000)
  // Settled on the images returned: 3 × $0.016; null means the 4 requested
  const fields = json({ n: 4, size: '256x256' })
  t.equal(actualMicroUsd('dall-e-2', 'generations', fields, undefined, prices, 3), 48_000)
  t.equal(actualMicroUsd('dall-e-2', 'generations', fields, undefined, prices, null), 64_000)
  t.equal(actualMicroUsd('dall-e-2', 'generations', fields, undefined, prices, 0), 0)
})

t.test('DALL·E 3 is priced per image by size and quality; auto and absent are the dearest', async (t) => {
  t.equal(worstCaseMicroUsd('dall-e-3', 'generations', json({ size: '1792x1024', quality: 'hd' }), prices), 120_000)
  t.equal(worstCaseMicroUsd('dall-e-3', 'generations', json({ size: '1024x1792', quality: 'standard' }), prices), 80_000)
  t.equal(worstCaseMicroUsd('dall-e-3', 'generations', json({ size: '1024x1024', quality: 'standard' }), prices), 40_000)
  t.equal(worstCaseMicroUsd('dall-e-3', 'generations', json({ size: '1024x1024', quality: 'auto' }), prices), 80_000)
  t.equal(worstCaseMicroUsd('dall-e-3', 'generations', json({ quality: 'standard' }), prices), 80_000)
  t.equal(worstCaseMicroUsd('dall-e-3', 'generations', json({}), prices), 120_000)
  t.equal(worstCaseMicroUsd('dall-e-3', 'generations', json({ size: null, quality: null }), prices), 120_000)
  // Settlement: an absent size is OpenAI's default 1024x1024; the quality stays the dearest (hd)
  t.equal(actualMicroUsd('dall-e-3', 'generations', json({}), undefined, prices, 1), 80_000)
  t.equal(actualMicroUsd('dall-e-3', 'generations', json({ quality: 'standard' }), undefined, prices, 1), 40_000)
})

t.test('GPT image worst case: output at the image rate, prompt bytes at the text rate', async (t) => {
  // text: 21 bytes + 32 overhead = 53 × $5/M = 265; output: 4160 × $40/M = 166,400
  const fields = json({ prompt: OTTER, size: '1024x1024', quality: 'high' })
  t.equal(worstCaseMicroUsd('gpt-image-1', 'generations', fields, prices), 166_665)
  t.equal(worstCaseMicroUsd('gpt-image-1', 'generations', json({ prompt: OTTER, size: '1024x1024', quality: 'high', n: 2 }), prices), 333_330)
  // Auto size and quality: portrait high, 6240 × 40 = 249,600; text (5 + 32) × 5 = 185
  t.equal(worstCaseMicroUsd('gpt-image-1', 'generations', json({ prompt: 'otter', size: 'auto', quality: 'auto' }), prices), 249_785)
  t.equal(worstCaseMicroUsd('gpt-image-1', 'generations', json({ prompt: 'otter' }), prices), 249_785)
  // UTF-8 bytes, not characters: "é" is 2 bytes, so (2 + 32) × 5 = 170; 272 × 40 = 10,880
  t.equal(worstCaseMicroUsd('gpt-image-1', 'generations', json({ prompt: 'é', size: '1024x1024', quality: 'low' }), prices), 11_050)
})

t.test('streamed partial images add 100 image-output tokens each', async (t) => {
  // (272 + 2 × 100) × 40 = 18,880; text 185
  const streamed = { prompt: 'otter', size: '1024x1024', quality: 'low', partial_images: 2 }
  t.equal(worstCaseMicroUsd('gpt-image-1', 'generations', json({ ...streamed, stream: true }), prices), 19_065)
  t.equal(worstCaseMicroUsd('gpt-image-1', 'generations', form({ ...streamed, partial_images: '2', stream: 'true' }), prices), 19_065)
  // Not streamed: no partials; 272 × 40 + 185
  t.equal(worstCaseMicroUsd('gpt-image-1', 'generations', json({ ...streamed, stream: false }), prices), 11_065)
  // Streamed with an unreadable count: 3 partials, (272 + 300) × 40 + 185 = 23,065
  t.equal(worstCaseMicroUsd('gpt-image-1', 'generations', json({ ...streamed, partial_images: 'x', stream: true }), prices), 23_065)
})

t.test('edits add an allowance per input image', async (t) => {
  // JSON edit, 2 images, high fidelity, medium 1024x1024:
  // text (5 + 32 + 2 × 32) × 5 = 505; images 2 × 6821 × 10 = 136,420; output 1056 × 40 = 42,240
  const jsonEdit = json({ prompt: 'otter', images: [IMAGE_REF, IMAGE_REF], size: '1024x1024', quality: 'medium', input_fidelity: 'high' })
  t.equal(worstCaseMicroUsd('gpt-image-1', 'edits', jsonEdit, prices), 179_165)
  // Low fidelity and a mask (counted as a third image): text (37 + 96) × 5 = 665; 3 × 581 × 10 = 17,430; 42,240
  const masked = json({ prompt: 'otter', images: [IMAGE_REF, IMAGE_REF], mask: IMAGE_REF, size: '1024x1024', quality: 'medium' })
  t.equal(worstCaseMicroUsd('gpt-image-1', 'edits', masked, prices), 60_335)
  // Multipart: the count is not known at admission, so 16 images + a mask = 17:
  // text (5 + 32 + 17 × 32) × 5 = 2,905; images 17 × 581 × 8 = 79,016; output 272 × 32 = 8,704
  const multipart = form({ prompt: 'otter', size: '1024x1024', quality: 'low' })
  t.equal(worstCaseMicroUsd('gpt-image-1.5', 'edits', multipart, prices), 90_625)
  // 100 bytes of uploads hold at most 3 images (26 bytes each at least):
  // text (37 + 96) × 5 = 665; images 3 × 581 × 8 = 13,944; output 8,704
  t.equal(worstCaseMicroUsd('gpt-image-1.5', 'edits', multipart, prices, 100), 23_313)
  // Large uploads do not raise the count past 17
  t.equal(worstCaseMicroUsd('gpt-image-1.5', 'edits', multipart, prices, 50_000_000), 90_625)
})

t.test('worst case rounds up to the micro-USD', async (t) => {
  // mini, 1 JSON image, prompt "a": text (1 + 32 + 32) × $2/M = 130; image 581 × $2.5/M = 1,452.5;
  // output 625 × $8/M = 5,000; 6,582.5 rounds up to 6,583
  const fields = json({ prompt: 'a', images: [IMAGE_REF], size: '1024x1024', quality: 'low' })
  t.equal(worstCaseMicroUsd('gpt-image-1-mini', 'edits', fields, prices), 6_583)
  // $1e-7 an image is 0.1 µUSD: 3 of them are 0.3, charged as 1
  const tiny: PriceTable = { tiny: { perImage: { '1024x1024': 1e-7 } } }
  t.equal(worstCaseMicroUsd('tiny', 'generations', json({ n: 3 }), tiny), 1)
  t.equal(actualMicroUsd('tiny', 'generations', json({ n: 3 }), undefined, tiny, 3), 1)
  // Below a pico-USD, and many decimals: $0.0123456789 is 12,345.6789 µUSD, charged 12,346
  const odd: PriceTable = { odd: { perImage: { '1024x1024': 1.5e-13, '512x512': 0.0123456789 } } }
  t.equal(worstCaseMicroUsd('odd', 'generations', json({ size: '1024x1024' }), odd), 1)
  t.equal(worstCaseMicroUsd('odd', 'generations', json({ size: '512x512' }), odd), 12_346)
  t.equal(worstCaseMicroUsd('odd', 'generations', json({ size: '1024x1024', n: 0 }), odd), 1, 'n below 1 counts as 1')
})

t.test('gpt-image-2: an auto or unlisted size is priced at the dearest listed one', async (t) => {
  // 2880x2880 high: 23,719 × $30/M = 711,570; text (5 + 32) × 5 = 185
  t.equal(worstCaseMicroUsd('gpt-image-2', 'generations', json({ prompt: 'otter' }), prices), 711_755)
  t.equal(worstCaseMicroUsd('gpt-image-2', 'generations', json({ prompt: 'otter', size: '1792x1024', quality: 'high' }), prices), 711_755)
  // A listed size: 1024x1024 high is 7,024 × 30 = 210,720
  t.equal(worstCaseMicroUsd('gpt-image-2', 'generations', json({ prompt: 'otter', size: '1024x1024', quality: 'high' }), prices), 210_905)
  t.equal(
    worstCaseMicroUsd('gpt-image-2-2026-04-21', 'generations', json({ prompt: 'otter', size: '1024x1024', quality: 'high' }), prices),
    210_905
  )
})

t.test('settlement from a usage block', async (t) => {
  // 1.5 with output details: 50 × 5 + 194 × 8 + 4160 × 32 + 10 × 10 = 250 + 1,552 + 133,120 + 100
  const fields = json({ prompt: OTTER, size: '1024x1024', quality: 'high' })
  t.equal(actualMicroUsd('gpt-image-1.5', 'edits', fields, usage(50, 194, 4170, { image: 4160, text: 10 }), prices), 135_022)
  // Without output details (streamed usage): every output token at the image rate, 4170 × 32 = 133,440
  t.equal(actualMicroUsd('gpt-image-1.5', 'edits', fields, usage(50, 194, 4170), prices), 135_242)
  // gpt-image-1 has no text-output rate: its text output is priced as text input, 10 × 5 = 50
  t.equal(actualMicroUsd('gpt-image-1', 'generations', fields, usage(50, 0, 4170, { image: 4160, text: 10 }), prices), 166_700)
  // Input the details do not place is priced at the dearer input rate: 50 × 5 + 50 × 10
  const unplaced = { input_tokens: 100, output_tokens: 0, input_tokens_details: { text_tokens: 50, image_tokens: 0 } }
  t.equal(actualMicroUsd('gpt-image-1', 'generations', fields, unplaced, prices), 750)
  // Rounds up: mini, 3 × $2/M + 1 × $2.5/M = 8.5 µUSD, charged 9
  t.equal(actualMicroUsd('gpt-image-1-mini', 'generations', fields, usage(3, 1, 0), prices), 9)
  // imagesReturned does not matter when the usage block is there
  t.equal(actualMicroUsd('gpt-image-1.5', 'edits', fields, usage(50, 194, 4170), prices, 0), 135_242)
})

t.test('a missing or malformed usage block settles at the worst case', async (t) => {
  const fields = json({ prompt: OTTER, size: '1024x1024', quality: 'high' })
  const worst = worstCaseMicroUsd('gpt-image-1', 'generations', fields, prices)
  const broken: unknown[] = [
    undefined,
    null,
    'usage',
    [],
    {},
    { input_tokens: 10, output_tokens: 4160 },
    { input_tokens: 10, output_tokens: 4160, input_tokens_details: { text_tokens: 10 } },
    { input_tokens: -1, output_tokens: 4160, input_tokens_details: { text_tokens: 10, image_tokens: 0 } },
    { input_tokens: 10, output_tokens: 1.5, input_tokens_details: { text_tokens: 10, image_tokens: 0 } },
    { input_tokens: 10, output_tokens: '4160', input_tokens_details: { text_tokens: 10, image_tokens: 0 } },
    { input_tokens: 10, output_tokens: 4160, input_tokens_details: null }
  ]
  for (const block of broken) {
    t.equal(actualMicroUsd('gpt-image-1', 'generations', fields, block, prices), worst, JSON.stringify(block) ?? 'undefined')
  }
  // A malformed output_tokens_details is ignored, not trusted: 10 × 5 + 4160 × 40
  const oddDetails = { ...(usage(10, 0, 4160) as object), output_tokens_details: { image_tokens: 'x' } }
  t.equal(actualMicroUsd('gpt-image-1', 'generations', fields, oddDetails, prices), 166_450)
  // The fallback uses the upload bytes as the worst case did
  const multipart = form({ prompt: 'otter', size: '1024x1024', quality: 'low' })
  t.equal(actualMicroUsd('gpt-image-1.5', 'edits', multipart, null, prices, null, 100), 23_313)
})

t.test('a model without a price costs nothing', async (t) => {
  t.notOk(hasPrice('flux-pro', prices))
  t.notOk(hasPrice('toString', prices))
  t.notOk(hasPrice('__proto__', prices))
  t.equal(worstCaseMicroUsd('flux-pro', 'generations', json({ prompt: OTTER, n: 10 }), prices), 0)
  t.equal(actualMicroUsd('flux-pro', 'generations', json({ prompt: OTTER }), usage(10, 0, 4160), prices, 1), 0)
  t.equal(worstCaseMicroUsd('toString', 'generations', json({}), prices), 0)
})

t.test('every catalogue model has a default price, and the defaults pass the schema', async (t) => {
  for (const model of KNOWN_MODEL_NAMES) t.ok(hasPrice(model, DEFAULT_PRICES), model)
  t.strictSame(priceTableSchema.parse(DEFAULT_PRICES), DEFAULT_PRICES)
})

t.test('configured entries replace the defaults model by model', async (t) => {
  const configured = priceTableSchema.parse({
    'gpt-image-1': { perImage: { '1024x1024': 0.5 } },
    'my-model': { perImage: { '1024x1024': { fast: 0.001, best: 0.003 } } }
  })
  const resolved = resolvePrices(configured)
  // gpt-image-1 is now per image: $0.50, whatever the prompt
  t.equal(worstCaseMicroUsd('gpt-image-1', 'generations', json({ prompt: OTTER, size: '1024x1024' }), resolved), 500_000)
  // A model the catalogue does not know can be priced: 2 × $0.003 (auto quality is the dearest)
  t.ok(hasPrice('my-model', resolved))
  t.equal(worstCaseMicroUsd('my-model', 'generations', json({ n: 2 }), resolved), 6_000)
  t.equal(worstCaseMicroUsd('my-model', 'generations', json({ n: 2, quality: 'fast' }), resolved), 2_000)
  // Untouched models keep their defaults; the defaults themselves are not changed
  t.equal(worstCaseMicroUsd('dall-e-2', 'generations', json({ size: '512x512' }), resolved), 18_000)
  t.equal(worstCaseMicroUsd('gpt-image-1', 'generations', json({ prompt: OTTER, size: '1024x1024', quality: 'high' }), prices), 166_665)
  t.strictSame(resolvePrices(undefined), DEFAULT_PRICES)
})

t.test('the schema refuses negative prices and shapes it does not know', async (t) => {
  const tokens = {
    perMillionTokens: { textInput: 5, imageInput: 10, imageOutput: 40 },
    outputTokensPerImage: { '1024x1024': { low: 272 } }
  }
  t.ok(priceTableSchema.safeParse({ m: tokens }).success, 'a minimal token entry')
  const refused: Record<string, unknown> = {
    'a negative per-image price': { perImage: { '1024x1024': -0.01 } },
    'a negative quality price': { perImage: { '1024x1024': { hd: -1 } } },
    'a negative token rate': { ...tokens, perMillionTokens: { textInput: -5, imageInput: 10, imageOutput: 40 } },
    'a negative token count': { ...tokens, outputTokensPerImage: { '1024x1024': { low: -1 } } },
    'a fractional token count': { ...tokens, outputTokensPerImage: { '1024x1024': { low: 272.5 } } },
    'a missing rate': { ...tokens, perMillionTokens: { textInput: 5, imageInput: 10 } },
    'an unknown rate': { ...tokens, perMillionTokens: { textInput: 5, imageInput: 10, imageOutput: 40, audio: 1 } },
    'a price as a string': { perImage: { '1024x1024': '0.02' } },
    'an infinite price': { perImage: { '1024x1024': Infinity } },
    'NaN': { perImage: { '1024x1024': Number.NaN } },
    'an unknown entry key': { perImages: { '1024x1024': 0.02 } },
    'an extra key': { perImage: { '1024x1024': 0.02 }, currency: 'EUR' },
    'both kinds at once': { ...tokens, perImage: { '1024x1024': 0.02 } },
    'no sizes': { perImage: {} },
    'no qualities': { perImage: { '1024x1024': {} } },
    'an "auto" size': { perImage: { auto: 0.02 } },
    'a size that is not WxH': { perImage: { large: 0.02 } },
    'an "auto" quality': { perImage: { '1024x1024': { auto: 0.02 } } },
    'a token entry priced per image too deep': { ...tokens, outputTokensPerImage: { '1024x1024': 272 } },
    'a bad input allowance': { ...tokens, inputTokensPerImage: { low: 581 } },
    'a null entry': null,
    'a number entry': 0.02
  }
  for (const [name, entry] of Object.entries(refused)) {
    t.notOk(priceTableSchema.safeParse({ m: entry }).success, name)
  }
  t.notOk(priceTableSchema.safeParse({ '': { perImage: { '1024x1024': 0.02 } } }).success, 'an empty model name')
})

/* Token counts as OpenAI's image generation guide publishes them (gpt-image-1, 1.5, mini). */
const PUBLISHED_TOKENS: Record<string, Record<string, number>> = {
  '1024x1024': { low: 272, medium: 1056, high: 4160 },
  '1024x1536': { low: 408, medium: 1584, high: 6240 },
  '1536x1024': { low: 400, medium: 1568, high: 6208 }
}

/** gpt-image-2 output tokens by the community reconstruction of OpenAI's calculator. */
function gptImage2Tokens(quality: 'low' | 'medium' | 'high', width: number, height: number): number {
  const factor = { low: 16, medium: 48, high: 96 }[quality]
  const long = Math.max(width, height)
  const short = Math.min(width, height)
  const shortFactor = Math.floor((2 * factor * short + long) / (2 * long))
  return Math.ceil((factor * shortFactor * (2_000_000 + width * height)) / 4_000_000)
}

function plausibleOutputTokens(model: string, size: string, quality: 'low' | 'medium' | 'high'): number {
  if (model.startsWith('gpt-image-2')) {
    const [width, height] = size.split('x').map(Number)
    return gptImage2Tokens(quality, width as number, height as number)
  }
  return PUBLISHED_TOKENS[size]?.[quality] ?? 0
}

t.test('the formula reproduces the points of OpenAI’s gpt-image-2 calculator', async (t) => {
  t.equal(gptImage2Tokens('high', 1024, 1024), 7024)
  t.equal(gptImage2Tokens('high', 1536, 1024), 5488)
  t.equal(gptImage2Tokens('high', 1792, 1024), 5063)
  t.equal(gptImage2Tokens('high', 3584, 2048), 12329)
  t.equal(gptImage2Tokens('low', 960, 720), 130)
})

t.test('the worst case covers the actual cost for every size, quality and n', async (t) => {
  let checked = 0
  for (const [model, entry] of Object.entries(DEFAULT_PRICES)) {
    const nMax = rulesFor(model)?.nMax ?? 10
    if ('perImage' in entry) {
      for (const [size, bySize] of Object.entries(entry.perImage)) {
        const qualities = typeof bySize === 'number' ? [undefined] : Object.keys(bySize)
        for (const quality of qualities) {
          for (let n = 1; n <= nMax; n++) {
            const actual = actualMicroUsd(model, 'generations', json({ size, quality, n }), undefined, prices, n)
            t.ok(worstCaseMicroUsd(model, 'generations', json({ size, quality, n }), prices) >= actual, `${model} ${size} ${quality} ×${n}`)
            t.ok(worstCaseMicroUsd(model, 'generations', json({ n }), prices) >= actual, `${model} auto ×${n}`)
            checked++
          }
        }
      }
      continue
    }
    const sizes = new Set([...Object.keys(entry.outputTokensPerImage), ...(model.startsWith('gpt-image-2') ? [] : Object.keys(PUBLISHED_TOKENS))])
    for (const size of sizes) {
      for (const quality of ['low', 'medium', 'high'] as const) {
        for (let n = 1; n <= nMax; n++) {
          // A prompt's tokens are under a byte each, plus a few wrapper tokens; every image bills the input again.
          const output = plausibleOutputTokens(model, size, quality)
          const generation = usage(n * (Math.ceil(OTTER.length / 3) + 6), 0, n * output)
          const fields = json({ prompt: OTTER, size, quality, n })
          const actual = actualMicroUsd(model, 'generations', fields, generation, prices)
          t.ok(worstCaseMicroUsd(model, 'generations', fields, prices) >= actual, `${model} ${size} ${quality} ×${n}`)
          t.ok(worstCaseMicroUsd(model, 'generations', json({ prompt: OTTER, n }), prices) >= actual, `${model} auto ×${n}`)
          // An edit with 3 images of the largest observed input (gpt-image-1: 2 tiles, 323; gpt-image-2: 1,536 patches)
          const perImage = model.startsWith('gpt-image-2') ? 1536 : 323
          const edit = usage(n * (Math.ceil(OTTER.length / 3) + 6 + 3 * 32), n * 3 * perImage, n * output)
          const editFields = json({ prompt: OTTER, images: [IMAGE_REF, IMAGE_REF, IMAGE_REF], size, quality, n })
          t.ok(
            worstCaseMicroUsd(model, 'edits', editFields, prices) >= actualMicroUsd(model, 'edits', editFields, edit, prices),
            `${model} edit ${size} ${quality} ×${n}`
          )
          checked++
        }
      }
    }
  }
  t.ok(checked > 400, `${checked} cases`)
})

t.test('gpt-image-2: arbitrary sizes are covered too', async (t) => {
  let checked = 0
  for (let width = 512; width <= 3840; width += 128) {
    for (let height = 512; height <= 3840; height += 128) {
      const size = `${width}x${height}`
      if (checkArbitrarySize(size) !== null || width * height < 655_360) continue
      for (const quality of ['low', 'medium', 'high'] as const) {
        const fields = json({ prompt: OTTER, size, quality })
        const actual = actualMicroUsd('gpt-image-2', 'generations', fields, usage(13, 0, gptImage2Tokens(quality, width, height)), prices)
        if (worstCaseMicroUsd('gpt-image-2', 'generations', fields, prices) < actual) t.fail(`${size} ${quality}`)
        checked++
      }
    }
  }
  t.ok(checked > 500, `${checked} sizes and qualities`)
})

t.test('auto picks the dearest size and quality of each model', async (t) => {
  const endpoints: Endpoint[] = ['generations']
  for (const [model, entry] of Object.entries(DEFAULT_PRICES)) {
    for (const endpoint of endpoints) {
      let dearest = 0
      const table = 'perImage' in entry ? entry.perImage : entry.outputTokensPerImage
      for (const [size, bySize] of Object.entries(table)) {
        const qualities = typeof bySize === 'number' ? [undefined] : Object.keys(bySize)
        for (const quality of qualities) {
          dearest = Math.max(dearest, worstCaseMicroUsd(model, endpoint, json({ prompt: 'otter', size, quality }), prices))
        }
      }
      t.equal(worstCaseMicroUsd(model, endpoint, json({ prompt: 'otter', size: 'auto', quality: 'auto' }), prices), dearest, model)
    }
  }
})

t.test('the YAML example in docs/prices.md is a valid prices section', async (t) => {
  const doc = readFileSync(new URL('../../docs/prices.md', import.meta.url), 'utf8')
  const block = /```yaml\n([\s\S]*?)```/.exec(doc)
  if (block === null) throw new Error('docs/prices.md has no yaml block')
  const parsed = parse(block[1] as string) as { prices?: unknown }
  const result = priceTableSchema.safeParse(parsed.prices)
  t.ok(result.success, result.success ? 'valid' : JSON.stringify(result.error.issues))
})
