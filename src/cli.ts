#!/usr/bin/env node
import { loadConfig, ConfigError } from './config/load.js'
import { EXAMPLE_CONFIG_PATH, startServer } from './server.js'

const USAGE = `usage: image-gateway [serve | check-config]
  serve          start the gateway (the default); config from GATEWAY_CONFIG
  check-config   validate the config file and exit`

async function main(args: string[]): Promise<number> {
  const command = args[0] ?? 'serve'
  if (command === 'serve') {
    await startServer(process.env)
    return -1
  }
  if (command === 'check-config') {
    const path = process.env.GATEWAY_CONFIG ?? EXAMPLE_CONFIG_PATH
    loadConfig(path, process.env)
    console.log(`${path}: valid`)
    return 0
  }
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
