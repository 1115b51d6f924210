import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { buildApp } from './app.js'
import { loadConfig, type Env } from './config/load.js'
import { LOCAL_PROVIDER_TYPES } from './config/schema.js'
import { looksLikeKey, newKey } from './keys/key-material.js'
import { MemoryKeyStore } from './keys/memory-store.js'
import { exitOnSignalsAndFatalErrors } from './lifecycle.js'
import { createLogger } from './logging.js'
import { safeError } from './errors/safe-error.js'

const CONFIG_DIRECTORY = join(dirname(fileURLToPath(import.meta.url)), '..', 'config')
/** Used when GATEWAY_CONFIG is not set: every model served by the sandbox, for a first run. */
export const DEFAULT_CONFIG_PATH = join(CONFIG_DIRECTORY, 'gateway.sandbox.yaml')
/** The starting point for a real deployment: relays to OpenAI with OPENAI_API_KEY. */
export const EXAMPLE_CONFIG_PATH = join(CONFIG_DIRECTORY, 'gateway.example.yaml')

/** Loads config, listens, and closes cleanly on SIGTERM/SIGINT (src/lifecycle.ts). Nothing testable lives here. */
export async function startServer(env: Env): Promise<void> {
  const configPath = env.GATEWAY_CONFIG ?? DEFAULT_CONFIG_PATH
  const config = loadConfig(configPath, env)
  const logger = createLogger(config.server.logLevel)
  // A rejection nobody handled is a bug of ours; one request's bug must not end every other request.
  process.on('unhandledRejection', (reason) => logger.error({ err: safeError(reason) }, 'unhandled rejection'))
  const app = await buildApp(config, { logger })
  const { backend } = app.keys
  logger.info({ store: backend.describe }, 'key store')
  if (backend.store instanceof MemoryKeyStore) await addDevelopmentKey(backend.store, env)
  for (const provider of config.providers) {
    if (provider.apiKey === undefined && !LOCAL_PROVIDER_TYPES.includes(provider.type)) logger.warn({ provider: provider.id }, 'provider has no apiKey: upstream calls go unauthenticated')
  }
  exitOnSignalsAndFatalErrors(app, logger, config.server.shutdownGraceMs)
  await app.listen({ host: config.server.host, port: config.server.port })
  logger.info(
    { config: configPath, models: config.models.map((m) => m.name), providers: config.providers.map((p) => p.id) },
    'image-gateway ready'
  )
}

/**
 * With the in-process store nothing outside this process can make a key, so one is made here:
 * GATEWAY_DEV_KEY if set, else a new one, printed once on stdout (not in the JSON log).
 */
async function addDevelopmentKey(store: MemoryKeyStore, env: Env): Promise<void> {
  const chosen = env.GATEWAY_DEV_KEY
  if (chosen !== undefined && chosen !== '') {
    if (!looksLikeKey(chosen)) throw new Error('GATEWAY_DEV_KEY must be 16-200 characters of A-Z a-z 0-9 _ . -')
    await store.importKey(chosen, { name: 'development' })
    return
  }
  const { key } = newKey()
  await store.importKey(key, { name: 'development' })
  process.stdout.write(`\nDevelopment key (in-process key store, valid until this process exits):\n\n  ${key}\n\n`)
}
