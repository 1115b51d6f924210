import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { buildApp } from './app.js'
import { loadConfig, type Env } from './config/load.js'
import { createLogger } from './logging.js'

/** Used when GATEWAY_CONFIG is not set: relays to OpenAI with OPENAI_API_KEY. */
export const EXAMPLE_CONFIG_PATH = join(dirname(fileURLToPath(import.meta.url)), '..', 'config', 'gateway.example.yaml')

/** Loads config, listens, and closes cleanly on SIGTERM/SIGINT. Nothing testable lives here. */
export async function startServer(env: Env): Promise<void> {
  const configPath = env.GATEWAY_CONFIG ?? EXAMPLE_CONFIG_PATH
  const config = loadConfig(configPath, env)
  const logger = createLogger(config.server.logLevel)
  const app = await buildApp(config, { logger })
  for (const provider of config.providers) {
    if (provider.apiKey === undefined) logger.warn({ provider: provider.id }, 'provider has no apiKey: upstream calls go unauthenticated')
  }
  let closing = false
  const close = (signal: string): void => {
    if (closing) return
    closing = true
    logger.info({ signal }, 'closing')
    app.close().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'close failed')
        process.exit(1)
      }
    )
  }
  process.once('SIGTERM', () => close('SIGTERM'))
  process.once('SIGINT', () => close('SIGINT'))
  await app.listen({ host: config.server.host, port: config.server.port })
  logger.info(
    { config: configPath, models: config.models.map((m) => m.name), providers: config.providers.map((p) => p.id) },
    'image-gateway ready'
  )
}
