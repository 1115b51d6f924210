import { execFile, spawn } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import t from 'tap'
import sharp from 'sharp'
import { loadConfig } from '../../src/config/load.js'
import { KNOWN_MODEL_NAMES } from '../../src/openai/models.js'
import { DEFAULT_CONFIG_PATH } from '../../src/server.js'

const run = promisify(execFile)
const root = fileURLToPath(new URL('../..', import.meta.url))
const readme = await readFile(join(root, 'README.md'), 'utf8')

/** The fenced block after a `<!-- first-run:NAME -->` marker in the README. */
function readmeBlock(name: string): string {
  const match = new RegExp(`<!-- first-run:${name} -->\\s*\`\`\`\\w*\\n([\\s\\S]*?)\`\`\``).exec(readme)
  if (match?.[1] === undefined) throw new Error(`README has no first-run:${name} block`)
  return match[1]
}

t.test('the default config routes every known OpenAI image model to the sandbox', async (t) => {
  const config = loadConfig(DEFAULT_CONFIG_PATH, {})
  t.same(config.providers.map((p) => p.type), ['sandbox'])
  t.same(config.models.map((m) => m.name).sort(), [...KNOWN_MODEL_NAMES].sort())
  t.equal(config.redis, undefined, 'no Redis: the in-process key store')
  t.match(config.server, { host: '127.0.0.1', port: 8080 })
})

t.test("a new user's first run: no config, the README's curl and SDK calls as pasted", async (t) => {
  // The gateway as `npm start` runs it, from source, with no GATEWAY_CONFIG and no key chosen;
  // PORT=0 so the test can run anywhere (the README's 8080 is swapped for the real port below).
  const loader = process.execArgv.filter((arg) => arg.includes('@tapjs/typescript'))
  const env: NodeJS.ProcessEnv = { ...process.env, PORT: '0' }
  for (const name of ['GATEWAY_CONFIG', 'GATEWAY_DEV_KEY', 'REDIS_URL', 'ADMIN_TOKEN', 'HOST', 'LOG_LEVEL']) delete env[name]
  const child = spawn(process.execPath, [...loader, join(root, 'src/cli.ts')], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] })
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL')
  })
  let output = ''
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')))
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')))
  const deadline = Date.now() + 30_000
  while (!/image-gateway ready/.test(output) && Date.now() < deadline && child.exitCode === null) {
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  const key = /Development key[^\n]*\n\n\s+(\S+)/.exec(output)?.[1]
  const port = /Server listening at http:\/\/127\.0\.0\.1:(\d+)/.exec(output)?.[1]
  if (key === undefined || port === undefined) {
    t.fail(`the gateway did not start: ${output}`)
    return
  }
  t.match(output, /in-process key store/)
  t.notMatch(output, /"level":[45]0/, 'no warning or error at startup')
  const asPasted = (text: string): string => text.replaceAll('127.0.0.1:8080', `127.0.0.1:${port}`).replaceAll('igw-dev-key-change-me', key)

  const directory = await mkdtemp(join(root, '.first-run-'))
  t.teardown(() => rm(directory, { recursive: true, force: true }))

  await run('sh', ['-c', asPasted(readmeBlock('curl'))], { cwd: directory })
  const lighthouse = await sharp(join(directory, 'lighthouse.png')).metadata()
  t.match(lighthouse, { format: 'png', width: 1024, height: 1024 }, 'curl wrote a 1024x1024 PNG')

  // The SDK snippet runs in a folder inside the project, where `openai` resolves.
  await writeFile(join(directory, 'first-image.mjs'), asPasted(readmeBlock('sdk')))
  const sdk = await run(process.execPath, ['first-image.mjs'], { cwd: directory })
  t.match(sdk.stdout, /otter\.png/)
  const otter = await sharp(join(directory, 'otter.png')).metadata()
  t.match(otter, { format: 'png', width: 1024, height: 1024 }, 'the SDK call wrote a PNG')

  // Links, not base64, from a GPT image model and from DALL-E: both point at the gateway itself.
  for (const model of ['gpt-image-1', 'dall-e-3']) {
    const answer = await fetch(`http://127.0.0.1:${port}/v1/images/generations`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model, prompt: 'a harbour', size: '1024x1024', response_format: 'url' })
    })
    const body = (await answer.json()) as { data: { url?: string }[] }
    const link = body.data[0]?.url ?? ''
    t.match(link, new RegExp(`^http://127\\.0\\.0\\.1:${port}/v1/images/files/`), `${model}: a link to the gateway`)
    const image = await sharp(Buffer.from(await (await fetch(link)).arrayBuffer())).metadata()
    t.match(image, { format: 'png', width: 1024, height: 1024 }, `${model}: the link serves the PNG`)
  }

  child.kill('SIGTERM')
  t.equal(await exited, 0, 'SIGTERM: drained and exited 0')
})
