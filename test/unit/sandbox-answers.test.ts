import t from 'tap'
import {
  completedEvent,
  errorEvent,
  outputTokensPerImage,
  partialImageEvent,
  requestUsage,
  revisedPrompt,
  streamedImageUsage,
  textTokens
} from '../../src/sandbox/answers.js'
import { jsonFields, readParameters, type ImageParameters } from '../../src/sandbox/parameters.js'

function params(body: Record<string, unknown>, endpoint: 'generations' | 'edits' = 'generations'): ImageParameters {
  return readParameters(endpoint, jsonFields(body))
}

t.test('parameters resolve every default, never auto', async (t) => {
  const gpt = params({ model: 'gpt-image-1', prompt: 'x', quality: 'auto', size: 'auto', background: 'auto' })
  t.match(gpt, { n: 1, size: null, quality: 'high', background: 'opaque', outputFormat: 'png', compression: 100, stream: false, partialImages: 0 })
  t.match(params({ prompt: 'x' }), { model: 'dall-e-2', responseFormat: 'url', quality: 'standard' }, "OpenAI's generations default")
  t.match(params({ prompt: 'x', output_format: 'webp' }), { model: 'gpt-image-1.5' }, 'a GPT-only parameter moves the default')
  t.match(params({ model: 'my-own-model', prompt: 'x' }), { model: 'my-own-model', rules: { family: 'gpt-image' } }, 'unknown models act as gpt-image-1')
  t.match(params({ model: 'gpt-image-1', prompt: 'x', stream: true, partial_images: 2 }), { stream: true, partialImages: 2 })
  t.match(params({ model: 'gpt-image-1', prompt: 'x', partial_images: 2 }), { stream: false, partialImages: 0 }, 'partials only when streaming')
  t.match(params({ model: 'gpt-image-2', prompt: 'x', size: '2048x1152' }), { size: { width: 2048, height: 1152 } })
  t.throws(() => params({ model: 'gpt-image-1', prompt: 'x', response_format: 'url' }), { code: 'unknown_parameter', param: 'response_format' })
  t.throws(() => params({ model: 'dall-e-3', prompt: 'x', size: '512x512' }), { code: 'invalid_value', param: 'size' })
  t.throws(() => params({ model: 'dall-e-2' }), { code: 'missing_required_parameter', param: 'prompt' })
})

t.test('usage: text ≈ characters / 4, output tokens from the price tables', async (t) => {
  t.equal(textTokens('a'), 1)
  t.equal(textTokens('a sea otter in a bowler hat'), 7)
  t.equal(outputTokensPerImage('gpt-image-1', 1024, 1024, 'high'), 4160)
  t.equal(outputTokensPerImage('gpt-image-1', 1536, 1024, 'low'), 400)
  t.equal(outputTokensPerImage('gpt-image-1-mini', 1024, 1536, 'medium'), 1875)
  t.equal(outputTokensPerImage('unknown-model', 1024, 1024, 'medium'), 1056, 'unknown models count as gpt-image-1')
  t.equal(outputTokensPerImage('gpt-image-2', 2048, 1024, 'high'), 2 * 7024, 'unlisted sizes: the 1024x1024 figure scaled by area')
  const usage = requestUsage(params({ model: 'gpt-image-1', prompt: 'a sea otter in a bowler hat', n: 3, quality: 'low' }), 1024, 1024, 0)
  t.same(usage, {
    total_tokens: 7 + 3 * 272,
    input_tokens: 7,
    output_tokens: 3 * 272,
    input_tokens_details: { text_tokens: 7, image_tokens: 0 },
    output_tokens_details: { image_tokens: 3 * 272, text_tokens: 0 }
  })
  const edit = requestUsage(params({ model: 'gpt-image-1', prompt: 'abcd', input_fidelity: 'high' }, 'edits'), 1024, 1024, 2)
  t.match(edit, { input_tokens: 1 + 2 * 6821, input_tokens_details: { text_tokens: 1, image_tokens: 2 * 6821 } })
})

t.test('streamed usage: input on the first completed event only, so the sum is the whole request plus partials', async (t) => {
  const p = params({ model: 'gpt-image-1', prompt: 'twelve chars', n: 2, stream: true, partial_images: 2, quality: 'medium' }, 'edits')
  const first = streamedImageUsage(p, 1024, 1024, 1, 0)
  const second = streamedImageUsage(p, 1024, 1024, 1, 1)
  t.same(first, {
    total_tokens: 3 + 581 + 1056 + 200,
    input_tokens: 3 + 581,
    output_tokens: 1056 + 200,
    input_tokens_details: { text_tokens: 3, image_tokens: 581 }
  })
  t.match(second, { input_tokens: 0, output_tokens: 1056 + 200 })
  t.notOk('output_tokens_details' in first, 'events carry ImagesUsage, without output details')
})

t.test('dall-e-3 revised prompts are deterministic rewordings', async (t) => {
  const vivid = revisedPrompt(params({ model: 'dall-e-3', prompt: '  a cat on a mat. ' }))
  t.equal(vivid, 'A vivid, dramatic image of a cat on a mat, composed of soft colour gradients and overlapping geometric shapes.')
  t.match(revisedPrompt(params({ model: 'dall-e-3', prompt: 'x', style: 'natural', quality: 'hd' })), /^A natural, true-to-life image of x, .* with fine detail throughout\.$/)
})

t.test('events are named and carry their name in data.type', async (t) => {
  const metadata = { background: 'opaque' as const, output_format: 'png', size: '1024x1024', quality: 'low' }
  const partial = partialImageEvent('image_edit', 5, 'AAA', metadata, 1)
  t.equal(
    partial,
    'event: image_edit.partial_image\ndata: {"type":"image_edit.partial_image","b64_json":"AAA","created_at":5,"background":"opaque","output_format":"png","size":"1024x1024","quality":"low","partial_image_index":1}\n\n'
  )
  const usage = { total_tokens: 2, input_tokens: 1, output_tokens: 1, input_tokens_details: { text_tokens: 1, image_tokens: 0 } }
  t.match(completedEvent('image_generation', 5, 'BBB', metadata, usage), /^event: image_generation\.completed\ndata: \{"type":"image_generation\.completed",.*"usage":\{"total_tokens":2,/)
  t.equal(
    errorEvent({ message: 'm', type: 'server_error', param: null, code: null }),
    'event: error\ndata: {"type":"error","error":{"message":"m","type":"server_error","param":null,"code":null}}\n\n'
  )
})
