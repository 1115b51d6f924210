import { existsSync, readFileSync } from 'node:fs'
import { isAbsolute, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { parse } from 'yaml'
import { loadConfig, type Env } from '../../src/config/load.js'

/*
 * docker-compose.yml, the Dockerfile, docker/gateway.yaml and the README can drift apart without
 * any Docker engine noticing (none runs in CI). This reads them as text and checks that they
 * agree with each other and with what the gateway actually reads.
 */

const root = fileURLToPath(new URL('../../', import.meta.url))
const read = (path: string): string => readFileSync(resolve(root, path), 'utf8')

interface ComposeService {
  image?: string
  build?: string | { context?: string; dockerfile?: string }
  command?: string[] | string
  ports?: string[]
  environment?: Record<string, string>
  volumes?: string[]
  depends_on?: Record<string, { condition?: string }>
  healthcheck?: { test?: string[] }
  stop_grace_period?: string
}

const compose = parse(read('docker-compose.yml')) as { services: Record<string, ComposeService>; volumes?: Record<string, unknown> }
const services = compose.services
const gateway = services.gateway as ComposeService
const redis = services.redis as ComposeService

/** The Dockerfile's run stage: its ENV pairs and EXPOSEd ports (the last stage wins, as in the image). */
function dockerfile(): { env: Record<string, string>; exposed: number[]; healthcheck: string } {
  const text = read('Dockerfile')
  const lastStage = text.slice(text.lastIndexOf('\nFROM '))
  const env: Record<string, string> = {}
  for (const line of lastStage.split('\n').filter((l) => l.startsWith('ENV '))) {
    for (const [, name, value] of line.slice(4).matchAll(/([A-Z_][A-Z0-9_]*)=(\S+)/g)) env[name as string] = value as string
  }
  const exposed = [...lastStage.matchAll(/^EXPOSE\s+(\d+)/gm)].map((m) => Number(m[1]))
  const healthcheck = /HEALTHCHECK[\s\S]*?CMD[^\n]*/.exec(lastStage)?.[0] ?? ''
  return { env, exposed, healthcheck }
}

/** Compose's own interpolation of `${NAME}`, `${NAME:-default}` and `${NAME:?message}`, from `shell`. */
function interpolate(value: string, shell: Env): string {
  return value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}/g, (_m, name: string, op: string | undefined, arg: string) => {
    const found = shell[name]
    const set = op?.startsWith(':') ? found !== undefined && found !== '' : found !== undefined
    if (set) return found as string
    if (op?.endsWith('-')) return arg
    if (op?.endsWith('?')) throw new Error(`compose would refuse to start: ${name} ${arg}`)
    return ''
  })
}

/** "127.0.0.1:8080:8080" or "8080:8080" or "8080": host address, host port, container port. */
function parsePort(spec: string): { address: string | null; published: number; target: number } {
  const parts = spec.replace(/\/tcp$/, '').split(':')
  const target = Number(parts.at(-1))
  const published = parts.length >= 2 ? Number(parts.at(-2)) : target
  return { address: parts.length === 3 ? (parts[0] as string) : null, published, target }
}

/** The environment variables the gateway reads: the names used as `env.NAME` in the loader and the server. */
function variablesRead(): Set<string> {
  const names = new Set<string>()
  for (const file of ['src/config/load.ts', 'src/server.ts']) {
    for (const [, name] of read(file).matchAll(/\benv\.([A-Z_][A-Z0-9_]*)/g)) names.add(name as string)
  }
  return names
}

/** The mounts of a service as host path -> container path (bind mounts of files in this repository). */
function bindMounts(service: ComposeService): Map<string, string> {
  const mounts = new Map<string, string>()
  for (const volume of service.volumes ?? []) {
    const [source = '', target = ''] = volume.split(':')
    if (source.startsWith('.') || isAbsolute(source)) mounts.set(source, target)
  }
  return mounts
}

/** `${NAME}` references in the string values of a YAML document (comments aside): name -> has a fallback. */
function references(text: string): Map<string, boolean> {
  const found = new Map<string, boolean>()
  const walk = (value: unknown): void => {
    if (typeof value === 'string') {
      for (const [, name, fallback] of value.matchAll(/\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}/g)) {
        found.set(name as string, (found.get(name as string) ?? true) && fallback !== undefined)
      }
    } else if (value !== null && typeof value === 'object') Object.values(value).forEach(walk)
  }
  walk(parse(text))
  return found
}

const SHELL: Env = { OPENAI_API_KEY: 'sk-test-compose', ADMIN_TOKEN: 'admin-token-for-compose-test' }

t.test('two services: the gateway built from the Dockerfile, and Redis with a healthcheck and a volume', async (t) => {
  t.strictSame(Object.keys(services).sort(), ['gateway', 'redis'])
  const context = typeof gateway.build === 'string' ? gateway.build : (gateway.build?.context ?? '.')
  t.ok(existsSync(resolve(root, context, 'Dockerfile')), 'the gateway is built from the Dockerfile')
  t.match(redis.image, /^redis:7(\.|-|$)/, 'the official Redis 7 image')
  t.strictSame(redis.healthcheck?.test?.slice(0, 3), ['CMD', 'redis-cli', 'ping'])
  t.equal(gateway.depends_on?.redis?.condition, 'service_healthy', 'the gateway waits for a healthy Redis')
  const dataVolume = (redis.volumes ?? []).map((v) => v.split(':')).find(([, target]) => target === '/data')
  t.ok(dataVolume, 'Redis keeps /data on a volume')
  t.ok(dataVolume !== undefined && Object.hasOwn(compose.volumes ?? {}, dataVolume[0] as string), 'a named volume, declared')
  const command = Array.isArray(redis.command) ? redis.command.join(' ') : (redis.command ?? '')
  t.match(command, /--appendonly yes/, 'keys live in Redis only: it persists them')
  t.notMatch(command, /--port/, 'Redis listens on its default port, 6379')
})

t.test('the published port, the Dockerfile and the config agree', async (t) => {
  const image = dockerfile()
  const ports = (gateway.ports ?? []).map(parsePort)
  t.equal(ports.length, 1, 'one published port')
  const [port] = ports
  t.equal(port?.address, '127.0.0.1', 'published on loopback only')
  t.strictSame(image.exposed, [port?.target], 'the Dockerfile EXPOSEs the container port')
  t.equal(Number(image.env.PORT), port?.target, 'the Dockerfile sets PORT to it')
  t.equal(image.env.HOST, '0.0.0.0', 'the Dockerfile listens on every interface in the container')
  t.match(image.healthcheck, `127.0.0.1:${port?.target}/healthz`, 'the image HEALTHCHECK asks that port')
  t.equal(redis.ports, undefined, 'Redis is not published outside the compose network')
})

t.test('the gateway environment holds only variables the gateway reads, and everything its config needs', async (t) => {
  const environment = gateway.environment ?? {}
  const configFile = [...bindMounts(gateway).entries()].find(([, target]) => target === environment.GATEWAY_CONFIG)
  t.ok(configFile, 'GATEWAY_CONFIG names the mounted config file')
  const configText = read(configFile?.[0] ?? 'missing')
  const referenced = references(configText)
  t.ok(referenced.has('OPENAI_API_KEY'), 'the config takes the provider key from OPENAI_API_KEY')
  const known = new Set([...variablesRead(), ...referenced.keys()])
  for (const name of ['HOST', 'PORT', 'LOG_LEVEL', 'REDIS_URL', 'ADMIN_TOKEN', 'GATEWAY_CONFIG']) {
    t.ok(variablesRead().has(name), `the gateway reads ${name}`)
  }
  for (const name of Object.keys(environment)) t.ok(known.has(name), `${name} is read by the gateway or its config`)
  for (const [name, hasFallback] of referenced) {
    if (!hasFallback) t.ok(Object.hasOwn(environment, name), `${name}, required by the config, is set`)
  }
  t.ok(Object.hasOwn(environment, 'OPENAI_API_KEY'), 'OPENAI_API_KEY comes from the environment')
  t.ok(Object.hasOwn(environment, 'ADMIN_TOKEN'), 'ADMIN_TOKEN comes from the environment')
  t.equal(interpolate(environment.OPENAI_API_KEY ?? '', SHELL), SHELL.OPENAI_API_KEY, 'passed through from the shell')
  t.equal(interpolate(environment.ADMIN_TOKEN ?? '', SHELL), SHELL.ADMIN_TOKEN, 'passed through from the shell')
})

t.test('the mounted config loads with the container environment and uses the compose Redis', async (t) => {
  const image = dockerfile()
  const environment = gateway.environment ?? {}
  const [source] = [...bindMounts(gateway).entries()].find(([, target]) => target === environment.GATEWAY_CONFIG) ?? []
  const hostPath = resolve(root, source ?? 'missing')
  t.ok(existsSync(hostPath), `${source} exists`)
  // As in the container: the image's ENV, then the compose environment interpolated from the shell.
  const containerEnv: Env = {
    ...image.env,
    ...Object.fromEntries(Object.entries(environment).map(([name, value]) => [name, interpolate(String(value), SHELL)]))
  }
  const config = loadConfig(hostPath, containerEnv)
  const port = parsePort(gateway.ports?.[0] ?? '')
  t.equal(config.server.host, '0.0.0.0')
  t.equal(config.server.port, port.target, 'the gateway listens on the published container port')
  t.ok(config.redis?.url !== undefined, 'Redis by URL')
  const redisUrl = new URL(config.redis?.url ?? 'redis://missing')
  t.ok(Object.hasOwn(services, redisUrl.hostname), `the Redis host (${redisUrl.hostname}) is a compose service`)
  t.equal(redisUrl.port === '' ? 6379 : Number(redisUrl.port), 6379, 'on the port Redis listens on')
  // Without REDIS_URL in the environment the file's own url must point at the same service.
  const fileOnly = loadConfig(hostPath, { ...containerEnv, REDIS_URL: undefined })
  t.equal(fileOnly.redis?.url, config.redis?.url, 'docker/gateway.yaml names the same Redis')
  t.equal(config.admin.token, SHELL.ADMIN_TOKEN, 'the admin API is on with ADMIN_TOKEN')
  t.ok(config.providers.length > 0 && config.providers.every((p) => p.type === 'openai'), 'openai providers only')
  t.equal(config.providers[0]?.apiKey, SHELL.OPENAI_API_KEY, 'the provider key comes from OPENAI_API_KEY')
  const graceS = Number(/^(\d+)s$/.exec(gateway.stop_grace_period ?? '')?.[1] ?? 0)
  t.ok(graceS * 1000 > config.server.shutdownGraceMs, 'docker stop waits longer than the drain (stop_grace_period)')

  const withoutSecrets = loadConfig(hostPath, { ...containerEnv, ADMIN_TOKEN: '', OPENAI_API_KEY: '' })
  t.equal(withoutSecrets.admin.token, undefined, 'with no ADMIN_TOKEN the file still loads, admin API off')
})

t.test('the README and docker/README.md name the same services and port', async (t) => {
  const port = parsePort(gateway.ports?.[0] ?? '')
  const published = `${port.address}:${port.published}`
  const readme = read('README.md')
  const start = readme.indexOf('## Deployment')
  t.ok(start >= 0, 'the README has a Deployment section')
  const end = readme.indexOf('\n## ', start + 1)
  const section = readme.slice(start, end === -1 ? undefined : end)
  const dockerReadme = read('docker/README.md')
  for (const [name, text] of [
    ['README Deployment section', section],
    ['docker/README.md', dockerReadme]
  ] as const) {
    for (const service of Object.keys(services)) t.match(text, `\`${service}\``, `${name} names the ${service} service`)
    t.match(text, published, `${name} gives the published address ${published}`)
  }
  t.match(section, 'docs/deployment.md', 'the README points to docs/deployment.md')
  t.ok(existsSync(resolve(root, 'docs/deployment.md')), 'docs/deployment.md exists')
})
