import t from 'tap'
import { configSchema, type ProviderConfig } from '../../src/config/schema.js'
import { AZURE_DEFAULT_API_VERSION, azureAdapter } from '../../src/providers/azure.js'
import { normaliseErrorBody } from '../../src/upstream/error-body.js'

/* The Azure adapter: deployment-scoped URLs, the api-key header, and Azure's error bodies in OpenAI's envelope. */

const KEY = 'azure-resource-key-0001'

/** An azure provider as the real config schema makes it, so the test follows schema changes. */
function azure(overrides: Record<string, unknown> = {}): ProviderConfig {
  const config = configSchema.parse({
    providers: [{ id: 'az', type: 'azure', baseUrl: 'https://res.openai.azure.com', apiKey: KEY, ...overrides }],
    models: [{ name: 'gpt-image-1', deployments: [{ provider: 'az', model: 'images-eu' }] }]
  })
  const provider = config.providers[0]
  if (provider === undefined) throw new Error('the schema dropped the provider')
  return provider
}

const json = (value: unknown): Buffer => Buffer.from(JSON.stringify(value))

t.test('generations and edits go to the deployment route with the default api-version', async (t) => {
  t.equal(AZURE_DEFAULT_API_VERSION, '2025-04-01-preview')
  const config = azure()
  t.same(azureAdapter.target(config, 'generations', 'images-eu'), {
    origin: 'https://res.openai.azure.com',
    path: '/openai/deployments/images-eu/images/generations?api-version=2025-04-01-preview',
    headers: { 'api-key': KEY }
  })
  t.same(azureAdapter.target(config, 'edits', 'images-eu'), {
    origin: 'https://res.openai.azure.com',
    path: '/openai/deployments/images-eu/images/edits?api-version=2025-04-01-preview',
    headers: { 'api-key': KEY }
  })
})

t.test('a configured apiVersion replaces the default', async (t) => {
  const target = azureAdapter.target(azure({ apiVersion: '2024-10-21' }), 'generations', 'dalle3')
  t.equal(target?.path, '/openai/deployments/dalle3/images/generations?api-version=2024-10-21')
})

t.test('the deployment name is one encoded path segment', async (t) => {
  const target = azureAdapter.target(azure(), 'edits', 'my deployment/v1?x=1#frag')
  t.equal(target?.path, '/openai/deployments/my%20deployment%2Fv1%3Fx%3D1%23frag/images/edits?api-version=2025-04-01-preview')
})

t.test('baseUrl variants: trailing slash, trailing /openai, proxy prefixes, ports', async (t) => {
  const cases: [string, string, string][] = [
    ['https://res.openai.azure.com/', 'https://res.openai.azure.com', ''],
    ['https://res.openai.azure.com/openai', 'https://res.openai.azure.com', ''],
    ['https://res.openai.azure.com/openai/', 'https://res.openai.azure.com', ''],
    ['https://apim.example.com/team-a', 'https://apim.example.com', '/team-a'],
    ['https://apim.example.com/team-a/openai/', 'https://apim.example.com', '/team-a'],
    ['https://apim.example.com/azure-openai', 'https://apim.example.com', '/azure-openai'],
    ['http://localhost:8080', 'http://localhost:8080', '']
  ]
  for (const [baseUrl, origin, prefix] of cases) {
    const target = azureAdapter.target(azure({ baseUrl }), 'generations', 'images-eu')
    t.equal(target?.origin, origin, `${baseUrl}: origin`)
    t.equal(target?.path, `${prefix}/openai/deployments/images-eu/images/generations?api-version=2025-04-01-preview`, `${baseUrl}: path`)
  }
})

t.test('the key goes in api-key, never in authorization; configured headers are added', async (t) => {
  const target = azureAdapter.target(azure({ headers: { 'x-team': 'images', 'Api-Key': 'stale-hand-written-key' } }), 'generations', 'd')
  t.same(target?.headers, { 'x-team': 'images', 'api-key': KEY }, 'the configured key replaces a hand-written api-key header')
  t.notOk(Object.keys(target?.headers ?? {}).some((name) => name.toLowerCase() === 'authorization'), 'no authorization header')

  const keyless = azureAdapter.target(azure({ apiKey: '', headers: { 'api-key': 'from-headers-only' } }), 'edits', 'd')
  t.same(keyless?.headers, { 'api-key': 'from-headers-only' }, 'without apiKey, configured headers go as they are')
})

t.test('variations have no Azure route', async (t) => {
  t.equal(azureAdapter.target(azure(), 'variations', 'images-eu'), null)
})

t.test('secrets: the key and every configured header value long enough to be one', async (t) => {
  t.same(azureAdapter.secrets(azure({ headers: { 'x-proxy-key': 'proxy-secret-123', 'x-short': 'abc' } })), [KEY, 'proxy-secret-123'])
  t.same(azureAdapter.secrets(azure({ apiKey: '' })), [])
})

t.test('numeric-string codes become OpenAI codes where one exists', async (t) => {
  const limited = azureAdapter.normaliseError(
    json({ error: { code: '429', message: 'Requests to the ImageGeneration Operation under Azure OpenAI API version 2025-04-01-preview have exceeded call rate limit. Please retry after 6 seconds.' } }),
    429
  )
  t.same(limited, {
    error: {
      message: 'Requests to the ImageGeneration Operation under Azure OpenAI API version 2025-04-01-preview have exceeded call rate limit. Please retry after 6 seconds.',
      type: 'requests',
      param: null,
      code: 'rate_limit_exceeded'
    }
  })

  t.same(azureAdapter.normaliseError(json({ error: { code: '404', message: 'Resource not found' } }), 404), {
    error: { message: 'Resource not found', type: 'invalid_request_error', param: null, code: null }
  }, '404 is any unknown route: no code, as OpenAI\'s own unknown-route answer')

  t.same(azureAdapter.normaliseError(json({ error: { code: '500', message: 'Internal server error' } }), 500), {
    error: { message: 'Internal server error', type: 'server_error', param: null, code: null }
  }, 'a number with no equivalent: null code, type from the status')

  t.same(azureAdapter.normaliseError(json({ error: { code: '429', message: 'Quota', type: 'insufficient_quota' } }), 429), {
    error: { message: 'Quota', type: 'insufficient_quota', param: null, code: 'rate_limit_exceeded' }
  }, 'a type Azure gives is kept')
})

t.test('content_filter with innererror becomes content_policy_violation, details kept, status dropped', async (t) => {
  const innererror = {
    code: 'ResponsibleAIPolicyViolation',
    content_filter_result: { hate: { filtered: true, severity: 'high' }, jailbreak: { filtered: false, detected: false } }
  }
  const body = azureAdapter.normaliseError(
    json({
      error: {
        message: "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
        type: null,
        param: 'prompt',
        code: 'content_filter',
        status: 400,
        innererror
      }
    }),
    400
  )
  t.same(body, {
    error: {
      message: "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
      type: 'invalid_request_error',
      param: 'prompt',
      code: 'content_policy_violation',
      innererror
    }
  })
  t.notOk(body !== null && 'status' in body.error, 'no status key')
})

t.test('content_filter without a message gets one', async (t) => {
  const body = azureAdapter.normaliseError(
    json({ error: { code: 'content_filter', status: 400, param: 'prompt', innererror: { code: 'ResponsibleAIPolicyViolation', content_filter_result: {} } } }),
    400
  )
  t.match(body, { error: { message: /safety system/, type: 'invalid_request_error', param: 'prompt', code: 'content_policy_violation' } })
})

t.test('contentFilter (the Azure image doc\'s shape) becomes content_policy_violation', async (t) => {
  const body = azureAdapter.normaliseError(
    json({ created: 1698435368, error: { code: 'contentFilter', message: 'Your task failed as a result of our safety system.' } }),
    400
  )
  t.same(body, {
    error: { message: 'Your task failed as a result of our safety system.', type: 'invalid_request_error', param: null, code: 'content_policy_violation' }
  }, 'param stays null when Azure names none')
})

t.test('DALL-E 3\'s inner_error refusal, and a refusal known only by its inner code', async (t) => {
  const inner_error = { code: 'ResponsibleAIPolicyViolation', content_filter_results: { jailbreak: { detected: false, filtered: false } } }
  const dalle = azureAdapter.normaliseError(
    json({ error: { code: 'content_policy_violation', inner_error, message: 'Your request was rejected as a result of our safety system.', type: 'invalid_request_error' } }),
    400
  )
  t.same(dalle, {
    error: { code: 'content_policy_violation', inner_error, message: 'Your request was rejected as a result of our safety system.', type: 'invalid_request_error', param: null }
  })
  const innerOnly = azureAdapter.normaliseError(json({ error: { code: '400', message: 'Filtered.', inner_error } }), 400)
  t.match(innerOnly, { error: { code: 'content_policy_violation', type: 'invalid_request_error', inner_error } })
})

t.test('bodies already in OpenAI\'s shape pass as the generic normaliser makes them', async (t) => {
  const raw = json({
    error: { message: "Unknown parameter: 'response_format'.", type: 'invalid_request_error', param: 'response_format', code: 'unknown_parameter', extra: { a: 1 } }
  })
  t.same(azureAdapter.normaliseError(raw, 400), normaliseErrorBody(raw, 400))
  const thin = json({ error: { code: 'DeploymentNotFound', message: 'The API deployment for this resource does not exist.' } })
  t.same(azureAdapter.normaliseError(thin, 404), {
    error: { code: 'DeploymentNotFound', message: 'The API deployment for this resource does not exist.', type: 'invalid_request_error', param: null }
  }, 'a word code is kept; type filled from the status')
  t.same(azureAdapter.normaliseError(json({ error: { code: 'InternalServerError', message: 'Boom', status: 503 } }), 503), {
    error: { code: 'InternalServerError', message: 'Boom', type: 'server_error', param: null }
  }, 'status dropped here too')
})

t.test('no error envelope: null', async (t) => {
  t.equal(azureAdapter.normaliseError(Buffer.from('<html>502 Bad Gateway</html>'), 502), null, 'not JSON')
  t.equal(azureAdapter.normaliseError(Buffer.from(''), 500), null, 'empty')
  t.equal(azureAdapter.normaliseError(json({ message: 'no wrapper' }), 400), null, 'no error key')
  t.equal(azureAdapter.normaliseError(json({ error: 'a string' }), 400), null, 'error not an object')
  t.equal(azureAdapter.normaliseError(json({ error: { code: '429' } }), 429), null, 'a message that is missing (not a refusal)')
  t.equal(azureAdapter.normaliseError(json(null), 400), null, 'JSON null')
})
