import OpenAI from 'openai'
import t from 'tap'
import { json } from '../helpers/fake-upstream.js'
import { sendRaw } from '../helpers/http-client.js'
import { startStack } from '../helpers/stack.js'

t.test('/metrics counts requests, images, errors and rejections, with no key, prompt or made-up name', async (t) => {
  const { upstream, gateway } = await startStack(t, { behaviour: json(200, { created: 1, data: [{ b64_json: 'QQ==' }, { b64_json: 'Qg==' }] }) })
  const { key } = await gateway.store.create({ name: 'metered', rpm: 3 })
  const client = new OpenAI({ apiKey: key, baseURL: gateway.baseURL, maxRetries: 0 })
  const prompt = 'a-prompt-that-must-not-leak'
  await client.images.generate({ model: 'gpt-image-1', prompt, n: 2 })
  await t.rejects(client.images.generate({ model: 'made-up-model-xyz', prompt }), { status: 404, code: 'model_not_found' })
  upstream.behave(json(500, { error: { message: 'boom', type: 'server_error', param: null, code: null } }))
  await t.rejects(client.images.generate({ model: 'gpt-image-1', prompt }), { status: 500, message: /boom/ })
  await t.rejects(client.images.generate({ model: 'gpt-image-1', prompt }), { status: 429, code: 'rate_limit_exceeded' })

  const answer = await sendRaw(`${gateway.url}/metrics`, { method: 'GET' })
  t.equal(answer.status, 200)
  t.match(answer.headers['content-type'], /^text\/plain/)
  const text = answer.body.toString()
  const route = 'route="/v1/images/generations"'
  t.match(text, `image_gateway_requests_total{${route},model="gpt-image-1",deployment="up/gpt-image-1",status="200"} 1`)
  t.match(text, `image_gateway_requests_total{${route},model="gpt-image-1",deployment="up/gpt-image-1",status="500"} 1`)
  t.match(text, `image_gateway_requests_total{${route},model="none",deployment="none",status="404"} 1`, 'a made-up model is "none"')
  t.match(text, 'image_gateway_images_total{model="gpt-image-1"} 2')
  t.match(text, 'image_gateway_upstream_errors_total{deployment="up/gpt-image-1",kind="status_5xx"} 1')
  t.match(text, 'image_gateway_limit_rejections_total{limit="requests"} 1')
  t.match(text, /image_gateway_time_to_first_byte_seconds_count\{route="\/v1\/images\/generations",model="gpt-image-1"\} 2/)
  t.match(text, /image_gateway_key_cache_lookups\{result="hit"\} \d+/)
  t.match(text, /nodejs_eventloop_lag_seconds \d/)
  t.match(text, /image_gateway_bytes_total\{direction="in"\} [1-9]/)
  t.notMatch(text, 'made-up-model-xyz')
  t.notMatch(text, prompt)
  t.notMatch(text, key.slice(4, 20))
})
