import { readFileSync } from 'node:fs'
import { parseDocument } from 'yaml'
import type { z } from 'zod'
import { configSchema, crossCheck, type Config } from './schema.js'

export type Env = Readonly<Record<string, string | undefined>>

/** Every problem in a config file, each addressed by its path, e.g. `models[2].deployments[0].provider: …`. */
export class ConfigError extends Error {
  readonly problems: readonly string[]
  constructor(source: string, problems: readonly string[]) {
    super(`invalid configuration in ${source}:\n${problems.map((p) => `  - ${p}`).join('\n')}`)
    this.name = 'ConfigError'
    this.problems = problems
  }
}

export function formatPath(path: readonly PropertyKey[]): string {
  let out = ''
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`
    else out += out === '' ? String(part) : `.${String(part)}`
  }
  return out === '' ? '(root)' : out
}

// ${NAME} or ${NAME:-fallback}; secrets stay out of the file.
const ENV_REFERENCE = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g

/** Replaces `${ENV}` references in every string of the parsed document (not in its YAML source). */
function interpolate(value: unknown, env: Env, path: PropertyKey[], problems: string[]): unknown {
  if (typeof value === 'string') {
    return value.replace(ENV_REFERENCE, (_match, name: string, fallback: string | undefined) => {
      const found = env[name]
      if (found !== undefined && found !== '') return found
      if (fallback !== undefined) return fallback
      problems.push(`${formatPath(path)}: environment variable ${name} is not set`)
      return ''
    })
  }
  if (Array.isArray(value)) return value.map((item, i) => interpolate(item, env, [...path, i], problems))
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {}
    for (const [key, item] of Object.entries(value)) out[key] = interpolate(item, env, [...path, key], problems)
    return out
  }
  return value
}

function describeIssue(issue: z.core.$ZodIssue): string {
  return `${formatPath(issue.path)}: ${issue.message}`
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object') {
    for (const item of Object.values(value)) deepFreeze(item)
    Object.freeze(value)
  }
  return value
}

function applyEnvOverrides(raw: unknown, env: Env, problems: string[]): unknown {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) return raw
  const doc = raw as Record<string, unknown>
  const server = { ...((doc.server ?? {}) as Record<string, unknown>) }
  if (env.HOST) server.host = env.HOST
  if (env.PORT) {
    const port = /^[0-9]{1,5}$/.test(env.PORT) ? Number(env.PORT) : -1
    if (port < 0 || port > 65535) problems.push(`PORT: "${env.PORT}" is not a port number`)
    else server.port = port
  }
  if (env.LOG_LEVEL) server.logLevel = env.LOG_LEVEL
  const out: Record<string, unknown> = { ...doc, server }
  if (env.REDIS_URL) {
    // REDIS_URL replaces the whole target (a url, sentinels or a cluster); the key prefix stays.
    const { keyPrefix } = (doc.redis ?? {}) as Record<string, unknown>
    out.redis = keyPrefix === undefined ? { url: env.REDIS_URL } : { url: env.REDIS_URL, keyPrefix }
  }
  if (env.ADMIN_TOKEN) out.admin = { ...((doc.admin ?? {}) as Record<string, unknown>), token: env.ADMIN_TOKEN }
  return out
}

/** Parses, interpolates, validates and freezes a YAML config; throws ConfigError listing every problem. */
export function parseConfig(text: string, env: Env, source: string): Config {
  const document = parseDocument(text, { prettyErrors: true })
  if (document.errors.length > 0) {
    throw new ConfigError(source, document.errors.map((e) => `YAML: ${e.message.split('\n')[0]}`))
  }
  const problems: string[] = []
  const interpolated = interpolate(document.toJS(), env, [], problems)
  const withOverrides = applyEnvOverrides(interpolated, env, problems)
  const result = configSchema.safeParse(withOverrides)
  if (!result.success) problems.push(...result.error.issues.map(describeIssue))
  problems.push(...crossCheck(withOverrides).map((p) => `${formatPath(p.path)}: ${p.message}`))
  if (problems.length > 0 || !result.success) throw new ConfigError(source, problems)
  return deepFreeze(result.data)
}

export function loadConfig(path: string, env: Env): Config {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    throw new ConfigError(path, [`cannot read the file: ${(err as NodeJS.ErrnoException).code ?? String(err)}`])
  }
  return parseConfig(text, env, path)
}
