#!/usr/bin/env node
import { runKeysCommand } from './cli/keys-command.js'
import { ConfigError, loadConfig } from './config/load.js'
import { createBackend } from './keys/backend.js'
import { whenReady } from './redis/client.js'
import { DEFAULT_CONFIG_PATH, startServer } from './server.js'

const USAGE = `usage: image-gateway [serve | check-config | keys ...]
  serve          start the gateway (the default); config from GATEWAY_CONFIG
  check-config   validate the config file and exit
  keys           create, list, show, update, revoke keys and show their usage (needs Redis);
                 'image-gateway keys --help' for details`

async function keys(args: string[]): Promise<number> {
  const config = loadConfig(process.env.GATEWAY_CONFIG ?? DEFAULT_CONFIG_PATH, process.env)
  if (config.redis === undefined) {
    console.error(
      'keys: the gateway has no Redis configured (REDIS_URL or redis.url), and keys made here would vanish with this process.\n' +
        'Configure Redis, or use the admin API (/admin/keys) of the running gateway.'
    )
    return 2
  }
  const backend = createBackend(config)
  try {
    if (backend.shared !== null) await whenReady(backend.shared.redis, 3_000).catch(() => undefined)
    return await runKeysCommand(args, backend.store, { log: (line) => console.log(line), error: (line) => console.error(line) })
  } finally {
    await backend.store.close()
  }
}

async function main(args: string[]): Promise<number> {
  const command = args[0] ?? 'serve'
  if (command === 'serve') {
    await startServer(process.env)
    return -1
  }
  if (command === 'check-config') {
    const path = process.env.GATEWAY_CONFIG ?? DEFAULT_CONFIG_PATH
    loadConfig(path, process.env)
    console.log(`${path}: valid`)
    return 0
  }
  if (command === 'keys') return keys(args.slice(1))
  console.error(USAGE)
  return command === '--help' || command === '-h' ? 0 : 2
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exit(code)
  },
  (err: unknown) => {
    if (err instanceof ConfigError) console.error(err.message)
    else console.error(err)
    process.exit(1)
  }
)
