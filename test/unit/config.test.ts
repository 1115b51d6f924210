import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import {
  DEFAULT_BODY_IDLE_TIMEOUT_MS,
  DEFAULT_CLIENT_HEADERS_TIMEOUT_MS,
  DEFAULT_CLIENT_REQUEST_TIMEOUT_MS,
  DEFAULT_MAX_IN_FLIGHT,
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_COOLDOWN_BASE_MS,
  DEFAULT_COOLDOWN_FAILURES,
  DEFAULT_COOLDOWN_MAX_MS,
  DEFAULT_HEADERS_TIMEOUT_MS,
  DEFAULT_HOLD_MEMORY_BYTES,
  DEFAULT_HOST,
  DEFAULT_IDEMPOTENCY_MAX_STORED_BYTES,
  DEFAULT_IDEMPOTENCY_TTL_MS,
  DEFAULT_IDEMPOTENCY_WAIT_MS,
  DEFAULT_IMAGE_ANSWER_BYTES,
  DEFAULT_IMAGE_DIRECTORY,
  DEFAULT_IMAGE_FETCH_BYTES,
  DEFAULT_IMAGE_FETCH_TIMEOUT_MS,
  DEFAULT_IMAGE_LINK_TTL_MS,
  DEFAULT_JSON_BODY_BYTES,
  DEFAULT_JSON_EDIT_BODY_BYTES,
  DEFAULT_KEEP_ALIVE_TIMEOUT_MS,
  DEFAULT_KEY_CACHE_TTL_MS,
  DEFAULT_KEY_NEGATIVE_CACHE_TTL_MS,
  DEFAULT_KEY_STALE_MS,
  DEFAULT_LEASE_MS,
  DEFAULT_MAX_ATTEMPTS,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_MAX_RETRY_WAIT_MS,
  DEFAULT_MAX_TOTAL_MS,
  DEFAULT_MULTIPART_BODY_BYTES,
  DEFAULT_PORT,
  DEFAULT_REPLAY_BODY_BYTES,
  DEFAULT_SHUTDOWN_GRACE_MS,
  DEFAULT_UPLOAD_IDLE_MS
} from '../../src/config/defaults.js'
import { ConfigError, loadConfig, parseConfig, type Env } from '../../src/config/load.js'
import { KNOWN_MODEL_NAMES } from '../../src/openai/models.js'

const examplePath = fileURLToPath(new URL('../../config/gateway.example.yaml', import.meta.url))

/** The problems a config is refused with; fails the test when it is accepted or throws anything else. */
function problemsOf(text: string, env: Env = {}): readonly string[] {
  try {
    parseConfig(text, env, 'test.yaml')
  } catch (err) {
    if (err instanceof ConfigError) return err.problems
    return [`not a ConfigError: ${String(err)}`]
  }
  return ['(accepted)']
}

const MINIMAL = `
providers:
  - id: p
    type: openai
    baseUrl: http://127.0.0.1:9000/v1
models:
  - name: gpt-image-1
    deployments:
      - provider: p
`

/** The server section's slow-client settings at their defaults. */
const SERVER_HARDENING = {
  headersTimeoutMs: DEFAULT_CLIENT_HEADERS_TIMEOUT_MS,
  keepAliveTimeoutMs: DEFAULT_KEEP_ALIVE_TIMEOUT_MS,
  requestTimeoutMs: DEFAULT_CLIENT_REQUEST_TIMEOUT_MS,
  maxInFlight: DEFAULT_MAX_IN_FLIGHT,
  trustProxy: false
}

const DEFAULT_TIMEOUTS = {
  connectMs: DEFAULT_CONNECT_TIMEOUT_MS,
  headersMs: DEFAULT_HEADERS_TIMEOUT_MS,
  bodyIdleMs: DEFAULT_BODY_IDLE_TIMEOUT_MS
}

t.test('the example config loads', async (t) => {
  const withoutKey = loadConfig(examplePath, {})
  t.equal(withoutKey.providers[0]?.apiKey, undefined, 'an unset OPENAI_API_KEY means no key (not "")')
  t.same(withoutKey.server, { host: '127.0.0.1', port: 8080, logLevel: 'info', shutdownGraceMs: DEFAULT_SHUTDOWN_GRACE_MS, ...SERVER_HARDENING })
  t.same(withoutKey.limits, {
    jsonBodyBytes: 1048576,
    jsonEditBodyBytes: 67108864,
    multipartBodyBytes: 839909376,
    holdMemoryBytes: 1048576,
    uploadIdleMs: 60000
  })
  t.same(withoutKey.providers, [
    {
      id: 'openai',
      type: 'openai',
      baseUrl: 'https://api.openai.com/v1',
      apiKey: undefined,
      headers: {},
      timeouts: { connectMs: 10000, headersMs: 360000, bodyIdleMs: 180000 },
      maxConnections: 256,
      rehostUrls: false
    }
  ])
  t.same(
    withoutKey.models.map((m) => m.name),
    ['gpt-image-1.5', 'gpt-image-1', 'gpt-image-1-mini', 'gpt-image-2', 'dall-e-3', 'dall-e-2', 'images-fast']
  )
  t.same(withoutKey.models[0]?.deployments, [{ provider: 'openai', model: 'gpt-image-1.5', weight: 1, priority: 0 }])
  t.same(withoutKey.models[6], {
    name: 'images-fast',
    rulesOf: 'gpt-image-1-mini',
    hostImages: false,
    deployments: [{ provider: 'openai', model: 'gpt-image-1-mini', weight: 1, priority: 0 }]
  })

  const withKey = loadConfig(examplePath, { OPENAI_API_KEY: 'sk-test-123' })
  t.equal(withKey.providers[0]?.apiKey, 'sk-test-123')
  t.equal(loadConfig(examplePath, { OPENAI_API_KEY: '' }).providers[0]?.apiKey, undefined, 'set but empty: no key')
})

t.test('defaults are filled in', async (t) => {
  const config = parseConfig(MINIMAL, {}, 'test.yaml')
  t.same(config, {
    server: { host: DEFAULT_HOST, port: DEFAULT_PORT, logLevel: 'info', shutdownGraceMs: DEFAULT_SHUTDOWN_GRACE_MS, ...SERVER_HARDENING },
    limits: {
      jsonBodyBytes: DEFAULT_JSON_BODY_BYTES,
      jsonEditBodyBytes: DEFAULT_JSON_EDIT_BODY_BYTES,
      multipartBodyBytes: DEFAULT_MULTIPART_BODY_BYTES,
      holdMemoryBytes: DEFAULT_HOLD_MEMORY_BYTES,
      uploadIdleMs: DEFAULT_UPLOAD_IDLE_MS
    },
    routing: {
      maxAttempts: DEFAULT_MAX_ATTEMPTS,
      maxTotalMs: DEFAULT_MAX_TOTAL_MS,
      replayBodyBytes: DEFAULT_REPLAY_BODY_BYTES,
      maxRetryWaitMs: DEFAULT_MAX_RETRY_WAIT_MS,
      cooldown: { failures: DEFAULT_COOLDOWN_FAILURES, baseMs: DEFAULT_COOLDOWN_BASE_MS, maxMs: DEFAULT_COOLDOWN_MAX_MS }
    },
    keys: {
      cacheTtlMs: DEFAULT_KEY_CACHE_TTL_MS,
      negativeCacheTtlMs: DEFAULT_KEY_NEGATIVE_CACHE_TTL_MS,
      staleMs: DEFAULT_KEY_STALE_MS,
      leaseMs: DEFAULT_LEASE_MS
    },
    idempotency: {
      enabled: true,
      ttlMs: DEFAULT_IDEMPOTENCY_TTL_MS,
      maxStoredBytes: DEFAULT_IDEMPOTENCY_MAX_STORED_BYTES,
      waitMs: DEFAULT_IDEMPOTENCY_WAIT_MS
    },
    admin: {},
    images: {
      ttlMs: DEFAULT_IMAGE_LINK_TTL_MS,
      store: 'directory',
      directory: DEFAULT_IMAGE_DIRECTORY,
      maxAnswerBytes: DEFAULT_IMAGE_ANSWER_BYTES,
      fetchMaxBytes: DEFAULT_IMAGE_FETCH_BYTES,
      fetchTimeoutMs: DEFAULT_IMAGE_FETCH_TIMEOUT_MS
    },
    providers: [
      {
        id: 'p',
        type: 'openai',
        baseUrl: 'http://127.0.0.1:9000/v1',
        headers: {},
        timeouts: DEFAULT_TIMEOUTS,
        maxConnections: DEFAULT_MAX_CONNECTIONS,
        rehostUrls: false
      }
    ],
    models: [{ name: 'gpt-image-1', hostImages: false, deployments: [{ provider: 'p', weight: 1, priority: 0 }] }]
  })
  t.equal(config.providers[0]?.apiKey, undefined)

  const partial = parseConfig(
    `server:\n  port: 9999\nlimits:\n  holdMemoryBytes: 10\n${MINIMAL.replace('baseUrl: http://127.0.0.1:9000/v1', 'baseUrl: http://127.0.0.1:9000/v1\n    timeouts:\n      connectMs: 5')}`,
    {},
    'test.yaml'
  )
  t.same(partial.server, { host: DEFAULT_HOST, port: 9999, logLevel: 'info', shutdownGraceMs: DEFAULT_SHUTDOWN_GRACE_MS, ...SERVER_HARDENING }, 'a partial server section')
  t.same(partial.limits, {
    jsonBodyBytes: DEFAULT_JSON_BODY_BYTES,
    jsonEditBodyBytes: DEFAULT_JSON_EDIT_BODY_BYTES,
    multipartBodyBytes: DEFAULT_MULTIPART_BODY_BYTES,
    holdMemoryBytes: 10,
    uploadIdleMs: DEFAULT_UPLOAD_IDLE_MS
  })
  t.same(partial.providers[0]?.timeouts, { ...DEFAULT_TIMEOUTS, connectMs: 5 }, 'a partial timeouts section')
})

t.test('${VAR} and ${VAR:-fallback}', async (t) => {
  const text = MINIMAL.replace(
    'baseUrl: http://127.0.0.1:9000/v1',
    [
      'baseUrl: http://${UPSTREAM_HOST:-127.0.0.1}:${UPSTREAM_PORT:-9000}/v1',
      '    apiKey: ${KEY}',
      '    organization: ${ORG:-org-default}',
      '    headers:',
      '      x-team: "team-${TEAM}-${TEAM}"',
      '      x-empty: "${NOTHING:-}"'
    ].join('\n')
  )
  const set = parseConfig(text, { UPSTREAM_HOST: 'upstream.internal', KEY: 'sk-1', ORG: 'org-9', TEAM: 'a' }, 'test.yaml')
  const provider = set.providers[0]
  t.equal(provider?.baseUrl, 'http://upstream.internal:9000/v1', 'one set, one falling back, in one string')
  t.equal(provider?.apiKey, 'sk-1')
  t.equal(provider?.organization, 'org-9')
  t.same(provider?.headers, { 'x-team': 'team-a-a', 'x-empty': '' })
  const fallback = parseConfig(text, { KEY: 'sk-1', TEAM: 'b' }, 'test.yaml')
  t.equal(fallback.providers[0]?.baseUrl, 'http://127.0.0.1:9000/v1')
  t.equal(fallback.providers[0]?.organization, 'org-default')
  t.equal(
    parseConfig(text, { KEY: 'sk-1', TEAM: 'b', ORG: '' }, 'test.yaml').providers[0]?.organization,
    'org-default',
    'an empty variable takes the fallback'
  )
})

t.test('a missing variable is reported by its path', async (t) => {
  const text = MINIMAL.replace(
    'baseUrl: http://127.0.0.1:9000/v1',
    'baseUrl: http://127.0.0.1:9000/v1\n    apiKey: ${OPENAI_API_KEY}\n    headers:\n      x-team: ${TEAM}'
  )
  t.same(problemsOf(text), [
    'providers[0].apiKey: environment variable OPENAI_API_KEY is not set',
    'providers[0].headers.x-team: environment variable TEAM is not set'
  ])
  t.same(problemsOf(text, { OPENAI_API_KEY: 'sk', TEAM: 't' }), ['(accepted)'])
})

t.test('an unknown provider in a deployment, by its exact path', async (t) => {
  // The example config with its third model (models[2], gpt-image-1-mini) pointed at a typo.
  const example = readFileSync(examplePath, 'utf8')
  const miniDeployment = '  - name: gpt-image-1-mini\n    deployments:\n      - provider: openai'
  t.ok(example.includes(miniDeployment), 'the example lists gpt-image-1-mini third')
  const text = example.replace(miniDeployment, miniDeployment.replace('provider: openai', 'provider: azur'))
  t.same(problemsOf(text), ['models[2].deployments[0].provider: unknown provider "azur"'])
})

t.test('an invalid file reports every problem with its path', async (t) => {
  const text = `
providers:
  - id: a
    type: azurre
    baseUrl: ftp://example.com/v1
  - id: a
    type: openai
    baseUrl: https://example.com/v1?key=1
    maxConection: 3
models:
  - name: m
    deployments: [{ provider: a }]
  - name: m
    rulesOf: dall-e-4
    deployments: [{ provider: a }]
  - name: z
    deployments: [{ provider: azur }]
`
  const expected = [
    'models[1].name: duplicate model name "m"',
    `models[1].rulesOf: unknown model "dall-e-4" (known: ${KNOWN_MODEL_NAMES.join(', ')})`,
    'models[2].deployments[0].provider: unknown provider "azur"',
    'providers[0].baseUrl: must be an http or https URL',
    'providers[0].type: unknown provider type "azurre" (known: openai, azure, sandbox)',
    'providers[1]: Unrecognized key: "maxConection"',
    'providers[1].baseUrl: must have no query or fragment',
    'providers[1].id: duplicate provider id "a"'
  ]
  t.same([...problemsOf(text)].sort(), expected.sort())
})

t.test('every problem is reported even when one of them is a wrong type or a missing field', async (t) => {
  // A type error (port as a string) or a missing required field must not hide the cross-checks
  // (provider references, duplicates), or a user fixes one problem only to be shown the next.
  const text = `
server:
  port: "8080x"
providers:
  - id: a
    type: openai
models:
  - name: m
    deployments: [{ provider: a }]
  - name: n
    deployments: [{ provider: a }]
  - name: o
    deployments: [{ provider: azur }]
`
  const expected = [
    'models[2].deployments[0].provider: unknown provider "azur"',
    'providers[0].baseUrl: required for a provider of type "openai"',
    'server.port: Invalid input: expected number, received string'
  ]
  t.same([...problemsOf(text)].sort(), expected.sort())
})

t.test('provider fields', async (t) => {
  const withProvider = (lines: string): string =>
    MINIMAL.replace('    baseUrl: http://127.0.0.1:9000/v1', lines)
  t.same(problemsOf(withProvider('    baseUrl: ftp://example.com/v1')), ['providers[0].baseUrl: must be an http or https URL'])
  t.same(problemsOf(withProvider('    baseUrl: https://example.com/v1#x')), [
    'providers[0].baseUrl: must have no query or fragment'
  ])
  t.same(problemsOf(withProvider('    baseUrl: http://localhost:8000')), ['(accepted)'])
  t.same(problemsOf(withProvider('    baseUrl: http://127.0.0.1/v1\n    type: openai')), [
    'YAML: Map keys must be unique at line 6, column 5:'
  ])
  t.same(problemsOf(MINIMAL.replace('type: openai', 'type: azurre')), [
    'providers[0].type: unknown provider type "azurre" (known: openai, azure, sandbox)'
  ])
  t.same(problemsOf(MINIMAL.replace('type: openai', 'type: azure')), ['(accepted)'])
  t.same(problemsOf(withProvider('    baseUrl: http://127.0.0.1/v1\n    apiVersion: 2025-04-01-preview')), [
    'providers[0].apiVersion: only azure providers take an apiVersion'
  ])
  t.same(problemsOf(MINIMAL.replace('type: openai', 'type: sandbox').replace('    baseUrl: http://127.0.0.1:9000/v1\n', '')), ['(accepted)'], 'a sandbox has no baseUrl')
  t.same(problemsOf(MINIMAL.replace('type: openai', 'type: azure').replace('    baseUrl: http://127.0.0.1:9000/v1\n', '')), [
    'providers[0].baseUrl: required for a provider of type "azure"'
  ])
  t.same(problemsOf(withProvider('    baseUrl: http://127.0.0.1/v1\n    maxConection: 5')), [
    'providers[0]: Unrecognized key: "maxConection"'
  ], 'a typo is refused, not ignored')
  const badHeader = problemsOf(withProvider('    baseUrl: http://127.0.0.1/v1\n    headers:\n      "x bad": v'))
  t.equal(badHeader.length, 1, 'a header name with a space is refused')
  t.ok(badHeader[0]?.startsWith('providers[0].headers.x bad: '), `by its path: ${badHeader[0]}`)
  t.same(problemsOf(withProvider('    baseUrl: http://127.0.0.1/v1\n    organization: "org\\r\\nX-Evil: 1"')), [
    'providers[0].organization: must not contain CR or LF'
  ])
})

t.test('a baseUrl that is not a URL at all is a ConfigError, not a crash', async (t) => {
  const problems = problemsOf(MINIMAL.replace('baseUrl: http://127.0.0.1:9000/v1', 'baseUrl: not a url'))
  t.equal(problems[0], 'providers[0].baseUrl: Invalid URL')
  t.ok(problems.length > 0 && problems.every((p) => p.startsWith('providers[0].baseUrl: ')), problems.join('; '))
})

t.test('duplicates and references', async (t) => {
  const twoProviders = `
providers:
  - { id: p, type: openai, baseUrl: "http://127.0.0.1:1/v1" }
  - { id: p, type: openai, baseUrl: "http://127.0.0.1:2/v1" }
models:
  - { name: m, deployments: [{ provider: p }] }
`
  t.same(problemsOf(twoProviders), ['providers[1].id: duplicate provider id "p"'])
  const twoModels = `${MINIMAL}  - name: gpt-image-1\n    deployments:\n      - provider: p\n`
  t.same(problemsOf(twoModels), ['models[1].name: duplicate model name "gpt-image-1"'])
  const alias = MINIMAL.replace('  - name: gpt-image-1\n', '  - name: fast\n    rulesOf: gpt-image-9\n')
  t.same(problemsOf(alias), [`models[0].rulesOf: unknown model "gpt-image-9" (known: ${KNOWN_MODEL_NAMES.join(', ')})`])
  t.same(problemsOf(MINIMAL.replace('  - name: gpt-image-1\n', '  - name: fast\n    rulesOf: gpt-image-1-mini\n')), ['(accepted)'])
})

t.test('YAML syntax errors', async (t) => {
  const problems = problemsOf('providers: [\n  - id: p\n')
  t.ok(problems.length > 0, 'reported')
  t.ok(problems.every((p) => p.startsWith('YAML: ')), problems.join('; '))
  t.match(problems[0], /line \d+, column \d+/, 'with a position')
  t.same(problemsOf('server: {}\nserver: {}\n'), ['YAML: Map keys must be unique at line 2, column 1:'])
  t.same(problemsOf(''), ['(root): Invalid input: expected object, received null'], 'an empty file')
})

t.test('HOST, PORT and LOG_LEVEL override the server section', async (t) => {
  const text = `server:\n  host: 10.0.0.1\n  port: 1234\n  logLevel: warn\n${MINIMAL}`
  t.same(parseConfig(text, {}, 'test.yaml').server, { host: '10.0.0.1', port: 1234, logLevel: 'warn', shutdownGraceMs: DEFAULT_SHUTDOWN_GRACE_MS, ...SERVER_HARDENING })
  t.same(parseConfig(text, { HOST: '0.0.0.0', PORT: '9090', LOG_LEVEL: 'debug' }, 'test.yaml').server, {
    host: '0.0.0.0',
    port: 9090,
    logLevel: 'debug',
    shutdownGraceMs: DEFAULT_SHUTDOWN_GRACE_MS,
    ...SERVER_HARDENING
  })
  t.same(parseConfig(MINIMAL, { PORT: '0' }, 'test.yaml').server.port, 0, 'port 0 (any free port)')
  t.same(parseConfig(text, { PORT: '', HOST: '', LOG_LEVEL: '' }, 'test.yaml').server, {
    host: '10.0.0.1',
    port: 1234,
    logLevel: 'warn',
    shutdownGraceMs: DEFAULT_SHUTDOWN_GRACE_MS,
    ...SERVER_HARDENING
  }, 'empty variables change nothing')
  for (const port of ['abc', '65536', '-1', '80.5']) {
    t.same(problemsOf(text, { PORT: port }), [`PORT: "${port}" is not a port number`], `PORT=${port}`)
  }
  t.same(problemsOf(MINIMAL, { LOG_LEVEL: 'loud' }), [
    'server.logLevel: Invalid option: expected one of "fatal"|"error"|"warn"|"info"|"debug"|"trace"|"silent"'
  ])
})

t.test('the result is deeply frozen', async (t) => {
  const config = loadConfig(examplePath, { OPENAI_API_KEY: 'sk' })
  const provider = config.providers[0]
  const model = config.models[0]
  const objects: [string, unknown][] = [
    ['config', config],
    ['server', config.server],
    ['limits', config.limits],
    ['providers', config.providers],
    ['providers[0]', provider],
    ['providers[0].headers', provider?.headers],
    ['providers[0].timeouts', provider?.timeouts],
    ['models', config.models],
    ['models[0]', model],
    ['models[0].deployments', model?.deployments],
    ['models[0].deployments[0]', model?.deployments[0]]
  ]
  for (const [path, value] of objects) {
    t.ok(typeof value === 'object' && value !== null && Object.isFrozen(value), `${path} is frozen`)
  }
  t.throws(() => {
    ;(config.server as { port: number }).port = 1
  }, TypeError)
  t.throws(() => {
    ;(config.models as unknown as unknown[]).push({})
  }, TypeError)
  t.equal(config.server.port, 8080)
})

t.test('loadConfig on a missing file', async (t) => {
  const missing = join(t.testdir(), 'nope.yaml')
  let caught: unknown = null
  try {
    loadConfig(missing, {})
  } catch (err) {
    caught = err
  }
  t.ok(caught instanceof ConfigError, 'a ConfigError')
  t.same((caught as ConfigError).problems, ['cannot read the file: ENOENT'])
  t.equal((caught as ConfigError).message, `invalid configuration in ${missing}:\n  - cannot read the file: ENOENT`)
})

t.test('redis: exactly one of url, sentinels or cluster; REDIS_URL replaces the target', async (t) => {
  const withRedis = (section: string): string => `${MINIMAL}redis:\n${section}`
  const sentinel = parseConfig(withRedis('  sentinels: [{ host: 127.0.0.1, port: 26379 }]\n  sentinelName: main\n'), {}, 't.yaml')
  t.match(sentinel.redis, { sentinels: [{ host: '127.0.0.1', port: 26379 }], sentinelName: 'main', keyPrefix: 'igw:' })
  t.same(problemsOf(withRedis('  sentinels: [{ host: 127.0.0.1, port: 26379 }]\n')), ['redis.sentinelName: required with sentinels'])
  t.same(problemsOf(withRedis('  url: redis://a:6379\n  cluster: [{ host: b, port: 7000 }]\n')), [
    'redis: give exactly one of url, sentinels (with sentinelName) or cluster'
  ])
  t.same(problemsOf(withRedis('  url: redis://a:6379\n  password: secret-pass\n')), ['redis.password: with url, put the credentials in the URL'])
  const overridden = parseConfig(withRedis('  cluster: [{ host: b, port: 7000 }]\n  keyPrefix: "gw2:"\n'), { REDIS_URL: 'redis://c:6380' }, 't.yaml')
  t.same(overridden.redis, { url: 'redis://c:6380', keyPrefix: 'gw2:' })
})

t.test('server: slow-client timeouts and trustProxy', async (t) => {
  const server = (section: string) => parseConfig(`server:\n${section}\n${MINIMAL}`, { PROXIES: '10.0.0.0/8, 127.0.0.1' }, 't.yaml').server
  t.match(server('  headersTimeoutMs: 5000\n  keepAliveTimeoutMs: 1000\n  requestTimeoutMs: 5000'), {
    headersTimeoutMs: 5000,
    keepAliveTimeoutMs: 1000,
    requestTimeoutMs: 5000
  })
  t.same(problemsOf(`server:\n  requestTimeoutMs: 1000\n${MINIMAL}`), ['server.requestTimeoutMs: must be 0 (off) or at least headersTimeoutMs'])
  t.same(problemsOf(`server:\n  headersTimeoutMs: 0\n${MINIMAL}`), ['server.headersTimeoutMs: Too small: expected number to be >0'])

  t.equal(server('  trustProxy: true').trustProxy, true)
  t.same(server('  trustProxy: [loopback, 10.0.0.0/8, "fd00::/8", 192.168.1.10]').trustProxy, ['loopback', '10.0.0.0/8', 'fd00::/8', '192.168.1.10'])
  t.same(server('  trustProxy: ${PROXIES}').trustProxy, ['10.0.0.0/8', '127.0.0.1'], 'a comma-separated string from the environment')
  t.equal(server('  trustProxy: ${UNSET:-false}').trustProxy, false, '"false" from the environment')
  t.equal(server('  trustProxy: []').trustProxy, false, 'an empty list trusts nobody')
  t.same(problemsOf(`server:\n  trustProxy: 1\n${MINIMAL}`), [
    "server.trustProxy: a hop count is not supported (fastify 5 would trust no proxy): list the proxies' addresses"
  ])
  t.same(problemsOf(`server:\n  trustProxy: [10.0.0.0/33, proxy.internal]\n${MINIMAL}`), [
    'server.trustProxy: "10.0.0.0/33" is not an IP address, a CIDR or one of loopback, linklocal, uniquelocal',
    'server.trustProxy: "proxy.internal" is not an IP address, a CIDR or one of loopback, linklocal, uniquelocal'
  ])
})
