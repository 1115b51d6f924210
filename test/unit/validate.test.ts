import t, { type Test } from 'tap'
import { GatewayError, type ErrorCode } from '../../src/errors/catalogue.js'
import { checkArbitrarySize, defaultModel, rulesFor, type Endpoint, type ModelRules } from '../../src/openai/models.js'
import { countChars, validateFields, validateJsonEdit, type Fields } from '../../src/openai/validate.js'

/*
 * The model matrix of ../shared/openai-images-spec.md §2-§5, rule by rule: each refusal with its
 * exact code, status and param, and the values right at each limit accepted.
 */

function json(values: Record<string, unknown>): Fields {
  return { source: 'json', get: (name) => (Object.hasOwn(values, name) ? values[name] : undefined) }
}

/** Multipart text parts arrive as strings: the SDKs send 2 as "2" and true as "true". */
function form(values: Record<string, string>): Fields {
  return { source: 'form', get: (name) => (Object.hasOwn(values, name) ? values[name] : undefined) }
}

function rules(model: string): ModelRules {
  const found = rulesFor(model)
  if (found === null) throw new Error(`no rules for ${model}`)
  return found
}

function thrown(fn: () => void): unknown {
  try {
    fn()
  } catch (err) {
    return err
  }
  return null
}

interface Expected {
  code: ErrorCode
  param: string
  status?: number
}

function refuses(t: Test, fn: () => void, expected: Expected, what: string): void {
  const err = thrown(fn)
  if (!(err instanceof GatewayError)) {
    t.fail(`${what}: expected GatewayError ${expected.code}, got ${err === null ? 'no error' : String(err)}`)
    return
  }
  t.same(
    { code: err.code, status: err.status, type: err.type, param: err.param },
    { code: expected.code, status: expected.status ?? 400, type: 'invalid_request_error', param: expected.param },
    `${what}: ${expected.code} on ${expected.param}`
  )
}

function accepts(t: Test, fn: () => void, what: string): void {
  const err = thrown(fn)
  t.equal(err === null ? null : `${String(err)} (param ${err instanceof GatewayError ? err.param : '-'})`, null, what)
}

/** validateFields with the model's own rules. */
function check(endpoint: Endpoint, model: string, fields: Fields): () => void {
  return () => validateFields(endpoint, model, rules(model), fields)
}

const GPT_IMAGE_MODELS = ['gpt-image-1', 'gpt-image-1-mini', 'gpt-image-1.5', 'chatgpt-image-latest', 'gpt-image-2', 'gpt-image-2-2026-04-21']
const PROMPT = 'A cute baby sea otter'

t.test('countChars counts code points', async (t) => {
  t.equal(countChars(''), 0)
  t.equal(countChars('abc'), 3)
  t.equal(countChars('😀'), 1, 'an emoji (a surrogate pair) is one')
  t.equal(countChars('a😀b€日'), 5)
  t.equal(countChars('👩‍💻'), 3, 'a ZWJ sequence is three code points')
  t.equal(countChars('\u0065\u0301'), 2, 'a combining mark is its own code point')
  t.equal(countChars('\ud800'), 1, 'a lone high surrogate is one code point')
  t.equal(countChars('\udc00'), 1, 'a lone low surrogate is one code point')
  t.equal(countChars('\ud800\ud83d\ude00'), 2, 'a lone high surrogate before a pair')
  t.equal(countChars('\ud800'.repeat(5000)), 5000, 'lone high surrogates cannot make a long prompt count as short')
})

t.test('prompt: required, and at most 1000 / 4000 / 32000 code points', async (t) => {
  for (const endpoint of ['generations', 'edits'] as const) {
    refuses(t, check(endpoint, 'dall-e-2', json({})), { code: 'missing_required_parameter', param: 'prompt' }, `${endpoint} without a prompt`)
    refuses(t, check(endpoint, 'gpt-image-1', json({ prompt: null })), { code: 'missing_required_parameter', param: 'prompt' }, `${endpoint} prompt null`)
    refuses(t, check(endpoint, 'gpt-image-1', form({})), { code: 'missing_required_parameter', param: 'prompt' }, `${endpoint} form without a prompt`)
  }
  refuses(t, check('generations', 'gpt-image-1', json({ prompt: 42 })), { code: 'invalid_type', param: 'prompt' }, 'a number prompt')
  accepts(t, check('variations', 'dall-e-2', form({})), 'variations take no prompt')
  accepts(t, check('generations', 'gpt-image-1', json({ prompt: '' })), 'an empty prompt is left to the upstream')

  const limits: [string, Endpoint, number][] = [
    ['dall-e-2', 'generations', 1000],
    ['dall-e-2', 'edits', 1000],
    ['dall-e-3', 'generations', 4000],
    ...GPT_IMAGE_MODELS.flatMap((model): [string, Endpoint, number][] => [
      [model, 'generations', 32000],
      [model, 'edits', 32000]
    ])
  ]
  for (const [model, endpoint, limit] of limits) {
    accepts(t, check(endpoint, model, json({ prompt: 'a'.repeat(limit) })), `${model} ${endpoint}: exactly ${limit}`)
    accepts(t, check(endpoint, model, json({ prompt: '😀'.repeat(limit) })), `${model} ${endpoint}: ${limit} emoji (${limit * 2} UTF-16 units)`)
    refuses(
      t,
      check(endpoint, model, json({ prompt: 'a'.repeat(limit + 1) })),
      { code: 'string_above_max_length', param: 'prompt' },
      `${model} ${endpoint}: ${limit + 1}`
    )
    refuses(
      t,
      check(endpoint, model, form({ prompt: `${'😀'.repeat(limit)}x` })),
      { code: 'string_above_max_length', param: 'prompt' },
      `${model} ${endpoint}: ${limit} emoji and one more, in a form`
    )
  }
  // JSON.parse('"\\ud800"') yields a lone surrogate: it is one code point, not zero.
  refuses(
    t,
    check('generations', 'dall-e-2', json({ prompt: '\ud800'.repeat(1001) })),
    { code: 'string_above_max_length', param: 'prompt' },
    'dall-e-2: 1001 lone high surrogates'
  )
  const err = thrown(check('generations', 'dall-e-2', json({ prompt: 'a'.repeat(1001) })))
  t.equal(
    (err as Error).message,
    "Invalid 'prompt': string too long. Expected a string with maximum length 1000, but got a string with length 1001 instead.",
    "OpenAI's wording"
  )
})

t.test('n', async (t) => {
  for (const model of ['dall-e-2', ...GPT_IMAGE_MODELS]) {
    accepts(t, check('generations', model, json({ prompt: PROMPT, n: 1 })), `${model} n=1`)
    accepts(t, check('generations', model, json({ prompt: PROMPT, n: 10 })), `${model} n=10`)
    refuses(t, check('generations', model, json({ prompt: PROMPT, n: 0 })), { code: 'integer_below_min_value', param: 'n' }, `${model} n=0`)
    refuses(t, check('generations', model, json({ prompt: PROMPT, n: -3 })), { code: 'integer_below_min_value', param: 'n' }, `${model} n=-3`)
    refuses(t, check('generations', model, json({ prompt: PROMPT, n: 11 })), { code: 'integer_above_max_value', param: 'n' }, `${model} n=11`)
  }
  accepts(t, check('generations', 'dall-e-3', json({ prompt: PROMPT, n: 1 })), 'dall-e-3 n=1')
  refuses(t, check('generations', 'dall-e-3', json({ prompt: PROMPT, n: 2 })), { code: 'integer_above_max_value', param: 'n' }, 'dall-e-3 n=2')
  refuses(t, check('generations', 'dall-e-3', form({ prompt: PROMPT, n: '2' })), { code: 'integer_above_max_value', param: 'n' }, 'dall-e-3 n="2" in a form')
  refuses(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, n: '2' })), { code: 'invalid_type', param: 'n' }, 'n as a string in JSON')
  refuses(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, n: 2.5 })), { code: 'invalid_type', param: 'n' }, 'n=2.5')
  refuses(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, n: true })), { code: 'invalid_type', param: 'n' }, 'n=true')
  accepts(t, check('edits', 'gpt-image-1', form({ prompt: PROMPT, n: '2' })), 'n="2" in a form')
  accepts(t, check('variations', 'dall-e-2', form({ n: '10' })), 'variations n="10"')
  refuses(t, check('variations', 'dall-e-2', form({ n: '11' })), { code: 'integer_above_max_value', param: 'n' }, 'variations n="11"')
  refuses(t, check('edits', 'gpt-image-1', form({ prompt: PROMPT, n: 'two' })), { code: 'invalid_type', param: 'n' }, 'n="two" in a form')
  refuses(t, check('edits', 'gpt-image-1', form({ prompt: PROMPT, n: '0' })), { code: 'integer_below_min_value', param: 'n' }, 'n="0" in a form')
  accepts(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, n: null })), 'n null is absent')
  const err = thrown(check('generations', 'dall-e-3', json({ prompt: PROMPT, n: 2 })))
  t.equal(
    (err as Error).message,
    "Invalid 'n': integer above maximum value. Expected a value <= 1, but got 2 instead.",
    "OpenAI's wording"
  )
})

t.test('size per family', async (t) => {
  const cases: [string, Endpoint, string[], string[]][] = [
    ['dall-e-2', 'generations', ['256x256', '512x512', '1024x1024'], ['1792x1024', '1536x1024', 'auto', '1024X1024', ' 256x256']],
    ['dall-e-2', 'variations', ['256x256', '1024x1024'], ['1792x1024', '2048x1152']],
    ['dall-e-3', 'generations', ['1024x1024', '1792x1024', '1024x1792'], ['256x256', '512x512', '1536x1024', 'auto']],
    ['gpt-image-1', 'generations', ['auto', '1024x1024', '1536x1024', '1024x1536'], ['256x256', '1792x1024', '2048x1152']],
    ['gpt-image-1-mini', 'edits', ['auto', '1536x1024'], ['512x512', '2048x1152']],
    ['gpt-image-1.5', 'edits', ['auto', '1024x1536'], ['1024x1792', '2048x1152']],
    ['gpt-image-2', 'generations', ['auto', '1024x1024', '1536x1024', '2048x1152', '3840x2160', '2160x3840', '1280x3840'], ['1000x1000', '4000x1000', '4096x2160', 'big', '0x0']],
    ['gpt-image-2-2026-04-21', 'edits', ['2048x1152', '1024x1024'], ['1000x1000', '4096x2160']]
  ]
  for (const [model, endpoint, ok, bad] of cases) {
    const prompt = endpoint === 'variations' ? {} : { prompt: PROMPT }
    for (const size of ok) accepts(t, check(endpoint, model, json({ ...prompt, size })), `${model} ${endpoint} ${size}`)
    for (const size of bad) {
      refuses(t, check(endpoint, model, json({ ...prompt, size })), { code: 'invalid_value', param: 'size' }, `${model} ${endpoint} ${size}`)
    }
  }
  refuses(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, size: 1024 })), { code: 'invalid_type', param: 'size' }, 'a number size')
  t.equal(
    (thrown(check('generations', 'dall-e-2', json({ prompt: PROMPT, size: '1792x1024' }))) as Error).message,
    "Invalid value: '1792x1024'. Supported values are: '256x256', '512x512', and '1024x1024'."
  )
})

t.test('checkArbitrarySize (gpt-image-2)', async (t) => {
  t.equal(checkArbitrarySize('2048x1152'), null)
  t.equal(checkArbitrarySize('3840x2160'), null, 'the largest size')
  t.equal(checkArbitrarySize('1280x3840'), null, 'exactly 1:3')
  t.equal(checkArbitrarySize('1000x1000'), 'both edges must be multiples of 16')
  t.equal(checkArbitrarySize('1024x1000'), 'both edges must be multiples of 16')
  t.equal(checkArbitrarySize('4000x1000'), 'both edges must be multiples of 16', 'the edge rule is checked first')
  t.equal(checkArbitrarySize('4032x1008'), 'the aspect ratio must be between 1:3 and 3:1', '4:1')
  t.equal(checkArbitrarySize('1024x3088'), 'the aspect ratio must be between 1:3 and 3:1', 'just over 1:3')
  t.equal(checkArbitrarySize('4096x2160'), 'the largest size is 3840x2160')
  t.equal(checkArbitrarySize('3856x2160'), 'the largest size is 3840x2160', 'one step wider than the largest')
  t.equal(checkArbitrarySize('3840x2176'), 'the largest size is 3840x2160', 'one step taller than the largest')
  for (const size of ['auto', '1024', '1024x', 'x1024', '01024x1024', '1024x1024x1', '-16x16', '1024 x 1024', '']) {
    t.equal(checkArbitrarySize(size), 'must be "auto" or WIDTHxHEIGHT', JSON.stringify(size))
  }
  t.equal(
    (thrown(check('generations', 'gpt-image-2', json({ prompt: PROMPT, size: '4096x2160' }))) as Error).message,
    "Invalid value: '4096x2160'. The size the largest size is 3840x2160."
  )
})

t.test('quality per family', async (t) => {
  const cases: [string, Endpoint, string[], string[]][] = [
    ['dall-e-2', 'generations', ['standard'], ['hd', 'high', 'low', 'medium']],
    ['dall-e-3', 'generations', ['standard', 'hd'], ['high', 'low', 'medium']],
    ...GPT_IMAGE_MODELS.map((model): [string, Endpoint, string[], string[]] => [model, 'generations', ['low', 'medium', 'high', 'auto'], ['standard', 'hd', 'HIGH']])
  ]
  for (const [model, endpoint, ok, bad] of cases) {
    for (const quality of ok) accepts(t, check(endpoint, model, json({ prompt: PROMPT, quality })), `${model} ${quality}`)
    for (const quality of bad) {
      refuses(t, check(endpoint, model, json({ prompt: PROMPT, quality })), { code: 'invalid_value', param: 'quality' }, `${model} ${quality}`)
    }
  }
  refuses(t, check('edits', 'gpt-image-1', form({ prompt: PROMPT, quality: 'standard' })), { code: 'invalid_value', param: 'quality' }, 'in a form')
})

t.test('style: only dall-e-3 checks it', async (t) => {
  accepts(t, check('generations', 'dall-e-3', json({ prompt: PROMPT, style: 'vivid' })), 'dall-e-3 vivid')
  accepts(t, check('generations', 'dall-e-3', json({ prompt: PROMPT, style: 'natural' })), 'dall-e-3 natural')
  refuses(t, check('generations', 'dall-e-3', json({ prompt: PROMPT, style: 'anime' })), { code: 'invalid_value', param: 'style' }, 'dall-e-3 anime')
  refuses(t, check('generations', 'dall-e-3', json({ prompt: PROMPT, style: 1 })), { code: 'invalid_type', param: 'style' }, 'dall-e-3 style 1')
  accepts(t, check('generations', 'dall-e-2', json({ prompt: PROMPT, style: 'anime' })), 'dall-e-2 ignores style')
  accepts(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, style: 'anime' })), 'gpt-image-1 ignores style')
})

t.test('response_format', async (t) => {
  for (const model of GPT_IMAGE_MODELS) {
    refuses(
      t,
      check('generations', model, json({ prompt: PROMPT, response_format: 'b64_json' })),
      { code: 'unknown_parameter', param: 'response_format' },
      `${model} with response_format b64_json`
    )
    refuses(
      t,
      check('edits', model, form({ prompt: PROMPT, response_format: 'url' })),
      { code: 'unknown_parameter', param: 'response_format' },
      `${model} edits with response_format url`
    )
  }
  accepts(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, response_format: null })), 'null is absent')
  for (const model of ['dall-e-2', 'dall-e-3']) {
    accepts(t, check('generations', model, json({ prompt: PROMPT, response_format: 'url' })), `${model} url`)
    accepts(t, check('generations', model, json({ prompt: PROMPT, response_format: 'b64_json' })), `${model} b64_json`)
    refuses(t, check('generations', model, json({ prompt: PROMPT, response_format: 'png' })), { code: 'invalid_value', param: 'response_format' }, `${model} png`)
  }
  accepts(t, check('variations', 'dall-e-2', form({ response_format: 'b64_json' })), 'variations b64_json')
})

t.test('stream', async (t) => {
  refuses(t, check('generations', 'dall-e-2', json({ prompt: PROMPT, stream: true })), { code: 'invalid_value', param: 'stream' }, 'dall-e-2 stream true')
  refuses(t, check('generations', 'dall-e-3', json({ prompt: PROMPT, stream: true })), { code: 'invalid_value', param: 'stream' }, 'dall-e-3 stream true')
  refuses(t, check('edits', 'dall-e-2', form({ prompt: PROMPT, stream: 'true' })), { code: 'invalid_value', param: 'stream' }, 'dall-e-2 edits stream "true"')
  accepts(t, check('generations', 'dall-e-2', json({ prompt: PROMPT, stream: false })), 'dall-e-2 stream false')
  for (const model of GPT_IMAGE_MODELS) {
    accepts(t, check('generations', model, json({ prompt: PROMPT, stream: true })), `${model} stream true`)
    accepts(t, check('edits', model, form({ prompt: PROMPT, stream: 'true' })), `${model} stream "true" in a form`)
  }
  accepts(t, check('edits', 'gpt-image-1', form({ prompt: PROMPT, stream: 'false' })), 'stream "false" in a form')
  refuses(t, check('edits', 'gpt-image-1', form({ prompt: PROMPT, stream: 'yes' })), { code: 'invalid_type', param: 'stream' }, 'stream "yes" in a form')
  refuses(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, stream: 'true' })), { code: 'invalid_type', param: 'stream' }, 'stream "true" in JSON')
  refuses(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, stream: 1 })), { code: 'invalid_type', param: 'stream' }, 'stream 1 in JSON')
})

t.test('partial_images 0..3 and output_compression 0..100', async (t) => {
  for (const value of [0, 1, 3]) {
    accepts(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, stream: true, partial_images: value })), `partial_images ${value}`)
  }
  accepts(t, check('edits', 'gpt-image-1', form({ prompt: PROMPT, stream: 'true', partial_images: '3' })), 'partial_images "3" in a form')
  refuses(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, partial_images: -1 })), { code: 'integer_below_min_value', param: 'partial_images' }, 'partial_images -1')
  refuses(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, partial_images: 4 })), { code: 'integer_above_max_value', param: 'partial_images' }, 'partial_images 4')
  refuses(t, check('edits', 'gpt-image-1', form({ prompt: PROMPT, partial_images: '4' })), { code: 'integer_above_max_value', param: 'partial_images' }, 'partial_images "4"')
  refuses(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, partial_images: '2' })), { code: 'invalid_type', param: 'partial_images' }, 'partial_images "2" in JSON')
  for (const value of [0, 50, 100]) {
    accepts(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, output_format: 'jpeg', output_compression: value })), `output_compression ${value}`)
  }
  refuses(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, output_compression: -1 })), { code: 'integer_below_min_value', param: 'output_compression' }, 'output_compression -1')
  refuses(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, output_compression: 101 })), { code: 'integer_above_max_value', param: 'output_compression' }, 'output_compression 101')
  refuses(t, check('edits', 'gpt-image-1.5', form({ prompt: PROMPT, output_compression: '101' })), { code: 'integer_above_max_value', param: 'output_compression' }, 'output_compression "101"')
  refuses(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, output_compression: 99.5 })), { code: 'invalid_type', param: 'output_compression' }, 'output_compression 99.5')
})

t.test('output_format, background, moderation', async (t) => {
  for (const format of ['png', 'jpeg', 'webp']) {
    accepts(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, output_format: format })), `output_format ${format}`)
  }
  refuses(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, output_format: 'gif' })), { code: 'invalid_value', param: 'output_format' }, 'output_format gif')
  refuses(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, output_format: 'jpg' })), { code: 'invalid_value', param: 'output_format' }, 'output_format jpg')
  refuses(
    t,
    check('generations', 'gpt-image-1', json({ prompt: PROMPT, background: 'transparent', output_format: 'jpeg' })),
    { code: 'invalid_value', param: 'background' },
    'transparent + jpeg'
  )
  refuses(
    t,
    check('edits', 'gpt-image-2', form({ prompt: PROMPT, background: 'transparent', output_format: 'jpeg' })),
    { code: 'invalid_value', param: 'background' },
    'transparent + jpeg in a form'
  )
  accepts(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, background: 'transparent', output_format: 'png' })), 'transparent + png')
  accepts(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, background: 'transparent', output_format: 'webp' })), 'transparent + webp')
  accepts(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, background: 'transparent' })), 'transparent, default format png')
  accepts(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, background: 'opaque', output_format: 'jpeg' })), 'opaque + jpeg')
  refuses(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, background: 'clear' })), { code: 'invalid_value', param: 'background' }, 'background clear')
  accepts(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, moderation: 'low' })), 'moderation low')
  refuses(t, check('generations', 'gpt-image-1', json({ prompt: PROMPT, moderation: 'high' })), { code: 'invalid_value', param: 'moderation' }, 'moderation high')
})

t.test('input_fidelity (edits)', async (t) => {
  refuses(
    t,
    check('edits', 'gpt-image-1-mini', form({ prompt: PROMPT, input_fidelity: 'high' })),
    { code: 'invalid_value', param: 'input_fidelity' },
    'gpt-image-1-mini does not take it'
  )
  refuses(
    t,
    check('edits', 'gpt-image-1-mini', json({ prompt: PROMPT, input_fidelity: 'low' })),
    { code: 'invalid_value', param: 'input_fidelity' },
    'gpt-image-1-mini, even low'
  )
  for (const model of ['gpt-image-1', 'gpt-image-1.5', 'gpt-image-2']) {
    accepts(t, check('edits', model, form({ prompt: PROMPT, input_fidelity: 'high' })), `${model} high`)
    accepts(t, check('edits', model, form({ prompt: PROMPT, input_fidelity: 'low' })), `${model} low`)
    refuses(t, check('edits', model, form({ prompt: PROMPT, input_fidelity: 'medium' })), { code: 'invalid_value', param: 'input_fidelity' }, `${model} medium`)
  }
  accepts(t, check('edits', 'gpt-image-1-mini', json({ prompt: PROMPT, input_fidelity: null })), 'null is absent')
})

t.test('endpoints each model serves', async (t) => {
  refuses(t, check('edits', 'dall-e-3', form({ prompt: PROMPT })), { code: 'invalid_value', param: 'model' }, 'dall-e-3 edits')
  refuses(t, check('variations', 'dall-e-3', form({})), { code: 'invalid_value', param: 'model' }, 'dall-e-3 variations')
  for (const model of GPT_IMAGE_MODELS) {
    refuses(t, check('variations', model, form({})), { code: 'invalid_value', param: 'model' }, `${model} variations`)
  }
  accepts(t, check('edits', 'dall-e-2', form({ prompt: PROMPT })), 'dall-e-2 edits')
  accepts(t, check('variations', 'dall-e-2', form({})), 'dall-e-2 variations')
  t.equal(
    (thrown(check('edits', 'dall-e-3', form({ prompt: PROMPT }))) as Error).message,
    "The model 'dall-e-3' does not support image edits."
  )
})

t.test('null is absent; unknown fields pass', async (t) => {
  const nulls = {
    n: null,
    size: null,
    quality: null,
    response_format: null,
    output_format: null,
    output_compression: null,
    background: null,
    moderation: null,
    stream: null,
    partial_images: null,
    style: null,
    input_fidelity: null,
    user: null
  }
  for (const model of ['dall-e-2', 'dall-e-3', 'gpt-image-1', 'gpt-image-1-mini', 'gpt-image-2']) {
    accepts(t, check('generations', model, json({ prompt: PROMPT, ...nulls })), `${model}: every optional field null`)
    accepts(
      t,
      check('generations', model, json({ prompt: PROMPT, user: 'u-1', metadata: { a: 1 }, future_param: [1, 2], seed: 'x' })),
      `${model}: unknown fields`
    )
  }
})

t.test('a model not in the catalogue (no rules)', async (t) => {
  const anything = {
    prompt: 'x'.repeat(100_000),
    n: 50,
    size: '7x7',
    quality: 'ultra',
    response_format: 'b64_json',
    output_format: 'gif',
    output_compression: 500,
    background: 'transparent',
    moderation: 'none',
    stream: 'yes',
    partial_images: 9,
    style: 'anime',
    input_fidelity: 'max'
  }
  for (const endpoint of ['generations', 'edits'] as const) {
    accepts(t, () => validateFields(endpoint, 'my-model', null, json(anything)), `${endpoint}: anything goes`)
    accepts(t, () => validateFields(endpoint, 'my-model', null, form({ prompt: 'p', n: '3', stream: 'maybe' })), `${endpoint}: form`)
    refuses(t, () => validateFields(endpoint, 'my-model', null, json({ ...anything, prompt: undefined })), { code: 'missing_required_parameter', param: 'prompt' }, `${endpoint}: no prompt`)
    refuses(t, () => validateFields(endpoint, 'my-model', null, json({ ...anything, prompt: null })), { code: 'missing_required_parameter', param: 'prompt' }, `${endpoint}: prompt null`)
  }
  accepts(t, () => validateFields('variations', 'my-model', null, form({})), 'variations: nothing at all')
})

const IMAGE = { image_url: 'https://example.com/a.png' }

function jsonEdit(model: string, fields: Record<string, unknown>): () => void {
  return () => validateJsonEdit(model, rulesFor(model), json(fields))
}

t.test('JSON edits', async (t) => {
  accepts(t, jsonEdit('gpt-image-1.5', { prompt: PROMPT, images: [IMAGE] }), 'one image URL')
  accepts(t, jsonEdit('gpt-image-1', { prompt: PROMPT, images: [{ file_id: 'file-abc' }, { image_url: 'data:image/png;base64,iVBORw0KGgo=' }, { image_url: 'HTTP://EXAMPLE.COM/x.png' }] }), 'file_id, data: and HTTP URLs')
  accepts(t, jsonEdit('gpt-image-1', { prompt: PROMPT, images: Array.from({ length: 16 }, () => IMAGE) }), '16 images')
  accepts(t, jsonEdit('gpt-image-1', { prompt: PROMPT, images: [IMAGE], mask: { file_id: 'file-mask' } }), 'a mask')
  accepts(t, jsonEdit('gpt-image-1', { prompt: PROMPT, images: [IMAGE], mask: null }), 'mask null is absent')

  refuses(t, jsonEdit('gpt-image-1', { prompt: PROMPT }), { code: 'missing_required_parameter', param: 'images' }, 'images missing')
  refuses(t, jsonEdit('gpt-image-1', { prompt: PROMPT, images: null }), { code: 'missing_required_parameter', param: 'images' }, 'images null')
  refuses(t, jsonEdit('gpt-image-1', { prompt: PROMPT, images: IMAGE }), { code: 'invalid_type', param: 'images' }, 'images not an array')
  refuses(t, jsonEdit('gpt-image-1', { prompt: PROMPT, images: 'https://example.com/a.png' }), { code: 'invalid_type', param: 'images' }, 'images a string')
  refuses(t, jsonEdit('gpt-image-1', { prompt: PROMPT, images: [] }), { code: 'invalid_value', param: 'images' }, 'images empty')
  refuses(t, jsonEdit('gpt-image-1', { prompt: PROMPT, images: Array.from({ length: 17 }, () => IMAGE) }), { code: 'too_many_images', param: 'images' }, '17 images')
  refuses(t, jsonEdit('gpt-image-1', { prompt: PROMPT, images: [IMAGE, 'https://example.com/b.png'] }), { code: 'invalid_type', param: 'images[1]' }, 'an item not an object')
  refuses(t, jsonEdit('gpt-image-1', { prompt: PROMPT, images: [[IMAGE]] }), { code: 'invalid_type', param: 'images[0]' }, 'an item that is an array')
  refuses(
    t,
    jsonEdit('gpt-image-1', { prompt: PROMPT, images: [IMAGE, { image_url: 'https://example.com/b.png', file_id: 'file-1' }] }),
    { code: 'invalid_value', param: 'images[1]' },
    'an item with both image_url and file_id'
  )
  refuses(t, jsonEdit('gpt-image-1', { prompt: PROMPT, images: [{}] }), { code: 'invalid_value', param: 'images[0]' }, 'an item with neither')
  refuses(
    t,
    jsonEdit('gpt-image-1', { prompt: PROMPT, images: [{ image_url: 'https://example.com/a.png', detail: 'high' }] }),
    { code: 'unknown_parameter', param: 'images[0].detail' },
    'an unknown key in an item'
  )
  for (const url of ['ftp://example.com/a.png', 'file:///etc/passwd', 'example.com/a.png', '/a.png', 'javascript:alert(1)']) {
    refuses(t, jsonEdit('gpt-image-1', { prompt: PROMPT, images: [{ image_url: url }] }), { code: 'invalid_value', param: 'images[0].image_url' }, `image_url ${url}`)
  }
  refuses(t, jsonEdit('gpt-image-1', { prompt: PROMPT, images: [{ file_id: 12 }] }), { code: 'invalid_type', param: 'images[0].file_id' }, 'file_id a number')
  refuses(t, jsonEdit('gpt-image-1', { prompt: PROMPT, images: [IMAGE], mask: 'file-mask' }), { code: 'invalid_type', param: 'mask' }, 'mask a string')
  refuses(t, jsonEdit('gpt-image-1', { prompt: PROMPT, images: [IMAGE], mask: { image_url: 'ftp://x/m.png' } }), { code: 'invalid_value', param: 'mask.image_url' }, 'mask image_url ftp')
  refuses(
    t,
    jsonEdit('gpt-image-1', { prompt: PROMPT, images: [IMAGE], mask: { file_id: 'f', image_url: 'https://x/m.png' } }),
    { code: 'invalid_value', param: 'mask' },
    'mask with both'
  )
  refuses(t, jsonEdit('gpt-image-1', { prompt: PROMPT, images: [IMAGE], mask: { url: 'https://x/m.png' } }), { code: 'unknown_parameter', param: 'mask.url' }, 'mask unknown key')

  refuses(t, jsonEdit('dall-e-2', { prompt: PROMPT, images: [IMAGE] }), { code: 'invalid_value', param: 'model' }, 'dall-e-2 with the JSON form')
  refuses(t, jsonEdit('dall-e-3', { prompt: PROMPT, images: [IMAGE] }), { code: 'invalid_value', param: 'model' }, 'dall-e-3 with the JSON form')
  accepts(t, () => validateJsonEdit('my-model', null, json({ prompt: PROMPT, images: Array.from({ length: 40 }, () => IMAGE) })), 'a model with no rules: no image cap')
  t.equal((thrown(jsonEdit('gpt-image-1', { prompt: PROMPT, images: Array.from({ length: 17 }, () => IMAGE) })) as Error).message, 'Too many images: gpt-image-1 takes at most 16.')
})

t.test('defaultModel', async (t) => {
  const none = (): boolean => false
  const only = (...params: string[]) => (name: string): boolean => params.includes(name)
  t.equal(defaultModel('generations', none), 'dall-e-2', 'generations with no GPT-only parameter')
  for (const param of ['quality', 'size', 'n', 'response_format', 'style', 'user', 'prompt']) {
    t.equal(defaultModel('generations', only(param)), 'dall-e-2', `generations with ${param}`)
  }
  for (const param of ['output_format', 'output_compression', 'background', 'moderation', 'stream', 'partial_images']) {
    t.equal(defaultModel('generations', only(param)), 'gpt-image-1.5', `generations with ${param}`)
    t.equal(defaultModel('edits', only(param)), 'gpt-image-1.5', `edits with ${param}`)
    t.equal(defaultModel('variations', only(param)), 'dall-e-2', `variations with ${param}`)
  }
  t.equal(defaultModel('edits', none), 'gpt-image-1.5', 'edits')
  t.equal(defaultModel('variations', none), 'dall-e-2', 'variations')
})
