// `npm run bench` (issue 7): the gateway against the upstream directly, and against nginx as a
// plain reverse proxy when nginx is installed, on the scenarios of docs/performance.md.
//
// Runs the built gateway (dist/cli.js; `npm run bench` builds first) as its own process with
// production settings and a Redis-backed key whose limits never trigger. Writes the table to
// stdout and to bench/results/latest.md. Every child process and temporary directory is removed
// on exit, on Ctrl-C and on errors.
//
// Environment:
//   BENCH_SECONDS=5        length of one measured run
//   BENCH_RUNS=3           runs per scenario and target (interleaved)
//   BENCH_WARMUP_SECONDS=1 unmeasured warm-up per scenario and target
//   BENCH_SCENARIOS=1,2,3,4,5  which scenarios
//   BENCH_RATE=500         requests per second of scenario 5
//   BENCH_UPSTREAM_DELAY_MS=0  the fake upstream's delay before answering
//   BENCH_NO_NGINX=1, BENCH_NO_WRK=1, BENCH_NO_PIN=1, BENCH_NO_REDIS=1  leave one of them out
//   BENCH_PROFILE_DIR=dir  the gateway runs with --cpu-prof and writes a .cpuprofile per scenario there
import { spawn, spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { Agent, request as httpRequest } from 'node:http'
import { connect, createServer } from 'node:net'
import { cpus, tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import autocannon from 'autocannon'
import { buildMultipart, makePng } from './payloads.mjs'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')
const env = process.env
const SECONDS = Number(env.BENCH_SECONDS ?? '5')
const RUNS = Number(env.BENCH_RUNS ?? '3')
const WARMUP = Number(env.BENCH_WARMUP_SECONDS ?? '1')
const RATE = Number(env.BENCH_RATE ?? '500')
const SCENARIOS = (env.BENCH_SCENARIOS ?? '1,2,3,4,5').split(',').map((s) => Number(s.trim()))
const PROFILE_DIR = env.BENCH_PROFILE_DIR ? resolve(env.BENCH_PROFILE_DIR) : null
const flag = (name) => env[name] !== undefined && env[name] !== '' && env[name] !== '0'

// ---------------------------------------------------------------------------------------------
// Processes and cleanup

const children = new Set()
const directory = mkdtempSync(join(tmpdir(), 'igw-bench-'))
let cleaned = false
function cleanup() {
  if (cleaned) return
  cleaned = true
  for (const child of children) {
    try {
      child.kill('SIGKILL')
    } catch {
      // already gone
    }
  }
  rmSync(directory, { recursive: true, force: true })
}
process.on('exit', cleanup)
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(signal, () => {
    console.error(`\nbench: ${signal}, stopping`)
    cleanup()
    process.exit(130)
  })
}

function which(command) {
  return spawnSync('sh', ['-c', `command -v ${command}`], { encoding: 'utf8' }).status === 0
}

const PIN = !flag('BENCH_NO_PIN') && which('taskset') && cpus().length >= 2
const SERVER_CORE = '0'
const LOAD_CORE = '1'

/** Starts a child (pinned to the servers' core when pinning), keeping the tail of its output. */
function start(name, command, args, options = {}) {
  const [file, argv] = PIN && options.pin !== false ? ['taskset', ['-c', options.core ?? SERVER_CORE, command, ...args]] : [command, args]
  const child = spawn(file, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: options.env ?? env, cwd: options.cwd ?? ROOT })
  children.add(child)
  child.output = ''
  const keep = (chunk) => {
    child.output = (child.output + chunk.toString('utf8')).slice(-8_000)
    options.onData?.(child.output)
  }
  child.stdout.on('data', keep)
  child.stderr.on('data', keep)
  child.once('exit', (code, signal) => {
    children.delete(child)
    if (!cleaned && !child.expectedExit) {
      console.error(`bench: ${name} exited (${signal ?? `code ${code}`}) unexpectedly:\n${child.output.trim()}`)
      process.exit(1)
    }
  })
  child.once('error', (error) => {
    console.error(`bench: cannot start ${name}: ${error.message}`)
    process.exit(1)
  })
  return child
}

/** Runs a command to its end; resolves with stdout. */
function run(command, args, options = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env: options.env ?? env, cwd: ROOT })
    children.add(child)
    let out = ''
    let err = ''
    child.stdout.on('data', (c) => (out += c))
    child.stderr.on('data', (c) => (err += c))
    child.once('error', reject)
    child.once('exit', (code) => {
      children.delete(child)
      if (code === 0) resolve(out)
      else reject(new Error(`${command} ${args.join(' ')} failed (${code}): ${err.trim() || out.trim()}`))
    })
  })
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

function tcpAnswers(port, payload, expect) {
  return new Promise((resolve) => {
    const socket = connect({ port, host: '127.0.0.1' })
    let reply = ''
    const finish = (ok) => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(500, () => finish(false))
    socket.once('error', () => finish(false))
    socket.on('data', (chunk) => {
      reply += chunk.toString('latin1')
      if (reply.includes('\r\n')) finish(reply.startsWith(expect))
    })
    socket.once('connect', () => socket.write(payload))
  })
}

async function waitFor(what, check, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (await check()) return
    await sleep(50)
  }
  throw new Error(`${what} did not come up within ${timeoutMs} ms`)
}

const httpOk = (port, path) => tcpAnswers(port, `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`, 'HTTP/1.1 200')

// ---------------------------------------------------------------------------------------------
// /proc readings

const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim() || '100')

/** utime + stime of a process, in ms. */
function cpuMs(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  // fields[0] is field 3 (state): utime is field 14, stime 15.
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLK_TCK
}

function statusKb(pid, field) {
  const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return match === null ? 0 : Number(match[1])
}

/** Resets VmHWM (kernel ≥ 4.0, own processes); false when not allowed. */
function resetPeak(pid) {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5')
    return true
  } catch {
    return false
  }
}

// ---------------------------------------------------------------------------------------------
// The servers

async function startUpstream() {
  let port = 0
  const child = start('fake upstream', process.execPath, [join(ROOT, 'bench', 'upstream.mjs')], {
    onData: (out) => {
      const match = /listening (\d+)/.exec(out)
      if (match !== null) port = Number(match[1])
    }
  })
  await waitFor('the fake upstream', async () => port !== 0)
  return { child, port, url: `http://127.0.0.1:${port}` }
}

async function startRedis() {
  if (flag('BENCH_NO_REDIS') || !which('redis-server')) return null
  const port = await freePort()
  const dir = join(directory, 'redis')
  mkdirSync(dir)
  const child = start('redis-server', 'redis-server', ['--save', '', '--appendonly', 'no', '--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--loglevel', 'warning'])
  await waitFor('redis-server', () => tcpAnswers(port, 'PING\r\n', '+PONG'))
  return { child, port, url: `redis://127.0.0.1:${port}` }
}

const MODEL = 'gpt-image-1'

async function startGateway(upstream, redis) {
  const port = await freePort()
  const config = {
    server: { host: '127.0.0.1', port, logLevel: 'warn' },
    providers: [{ id: 'bench', type: 'openai', baseUrl: `${upstream.url}/v1`, apiKey: 'sk-bench-upstream-0123456789', maxConnections: 256 }],
    models: [{ name: MODEL, deployments: [{ provider: 'bench' }] }],
    ...(redis === null ? {} : { redis: { url: redis.url, keyPrefix: 'igwbench:' } })
  }
  const configPath = join(directory, 'gateway.json.yaml')
  writeFileSync(configPath, JSON.stringify(config, null, 2))
  const gatewayEnv = { ...env, GATEWAY_CONFIG: configPath, NODE_ENV: 'production', LOG_LEVEL: 'warn' }
  delete gatewayEnv.REDIS_URL
  delete gatewayEnv.ADMIN_TOKEN
  let key
  if (redis !== null) {
    const out = await run(
      process.execPath,
      ['dist/cli.js', 'keys', 'create', '--name', 'bench', '--rpm', '1000000000', '--images-per-minute', '1000000000', '--concurrency', '1000000', '--budget-usd', '1000000000', '--json'],
      { env: gatewayEnv }
    )
    key = JSON.parse(out).key
  } else {
    key = 'igw-bench-development-key'
    gatewayEnv.GATEWAY_DEV_KEY = key
  }
  const profile = PROFILE_DIR === null ? [] : ['--cpu-prof', `--cpu-prof-dir=${PROFILE_DIR}`]
  const child = start('gateway', process.execPath, [...profile, 'dist/cli.js'], { env: gatewayEnv })
  await waitFor('the gateway', () => httpOk(port, '/readyz'))
  return { child, port, url: `http://127.0.0.1:${port}`, key, store: redis === null ? 'in-process' : 'Redis' }
}

async function startNginx(upstream) {
  if (flag('BENCH_NO_NGINX') || !which('nginx')) return null
  const port = await freePort()
  const dir = join(directory, 'nginx')
  mkdirSync(join(dir, 'logs'), { recursive: true })
  const conf = join(dir, 'nginx.conf')
  // One process (no master), so that SIGKILL leaves nothing behind; a single worker is what it
  // would run on one core anyway.
  writeFileSync(
    conf,
    `daemon off;
master_process off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  keepalive_requests 1000000;
  upstream fake { server 127.0.0.1:${upstream.port}; keepalive 256; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:${port};
    client_max_body_size 0;
    location / {
      proxy_pass http://fake;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_request_buffering off;
      proxy_buffering off;
    }
  }
}
`
  )
  const child = start('nginx', 'nginx', ['-c', conf, '-p', dir])
  await waitFor('nginx', async () => (await tcpAnswers(port, 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', 'HTTP/1.1 ')) === true)
  return { child, port, url: `http://127.0.0.1:${port}` }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

function scenarios() {
  const json = (prompt) => Buffer.from(JSON.stringify({ model: MODEL, prompt, size: '1024x1024' }))
  const small = json('a lighthouse at dusk, watercolour, soft light')
  const large = json('bench:large a lighthouse at dusk, watercolour')
  const png = (bytes, seed) => makePng({ width: 64, height: 64, padToBytes: bytes, seed })
  const MiB = 1024 * 1024
  const edit = (files) =>
    buildMultipart([
      { name: 'model', value: MODEL },
      { name: 'prompt', value: 'add a red boat' },
      ...files.map((data, i) => ({ name: 'image[]', filename: `image-${i}.png`, contentType: 'image/png', data }))
    ])
  const twoFiles = edit([png(1 * MiB, 1), png(4 * MiB, 2)])
  const bigFile = edit([png(25 * MiB, 3)])
  const jsonType = 'application/json'
  return [
    { id: 1, name: 'generations, small answer', path: '/v1/images/generations', body: small, contentType: jsonType, connections: 64, wrk: true },
    { id: 2, name: 'generations, 1.5 MB b64_json answer', path: '/v1/images/generations', body: large, contentType: jsonType, connections: 16 },
    { id: 3, name: 'edits, 1 MiB + 4 MiB PNG', path: '/v1/images/edits', body: twoFiles.body, contentType: twoFiles.contentType, connections: 16 },
    { id: 4, name: 'edits, one 25 MiB PNG', path: '/v1/images/edits', body: bigFile.body, contentType: bigFile.contentType, connections: 8 },
    { id: 5, name: `open loop, ${RATE} req/s of scenario 1`, path: '/v1/images/generations', body: small, contentType: jsonType, connections: 64, rate: RATE }
  ].filter((s) => SCENARIOS.includes(s.id))
}

// ---------------------------------------------------------------------------------------------
// Load generators

function headersFor(target, scenario) {
  return { 'content-type': scenario.contentType, authorization: `Bearer ${target.key ?? 'none'}` }
}

async function loadAutocannon(target, scenario, seconds) {
  const result = await autocannon({
    url: target.url + scenario.path,
    method: 'POST',
    headers: headersFor(target, scenario),
    body: scenario.body,
    connections: scenario.connections,
    duration: seconds,
    timeout: 60
  })
  const ok = result['2xx']
  return {
    rps: ok / (result.duration || seconds),
    p50: result.latency.p50,
    p99: result.latency.p99,
    failures: result.non2xx + result.errors + result.timeouts,
    completed: result.requests.total,
    tool: 'autocannon'
  }
}

const WRK = !flag('BENCH_NO_WRK') && which('wrk')

function wrkDuration(text) {
  const match = /^([\d.]+)(us|ms|s|m)$/.exec(text)
  if (match === null) return NaN
  const value = Number(match[1])
  return match[2] === 'us' ? value / 1000 : match[2] === 'ms' ? value : match[2] === 's' ? value * 1000 : value * 60_000
}

async function loadWrk(target, scenario, seconds) {
  const script = join(directory, `wrk-${target.name}-${scenario.id}.lua`)
  const headers = headersFor(target, scenario)
  writeFileSync(
    script,
    `wrk.method = "POST"\nwrk.body = ${JSON.stringify(scenario.body.toString('utf8'))}\n` +
      Object.entries(headers)
        .map(([name, value]) => `wrk.headers[${JSON.stringify(name)}] = ${JSON.stringify(value)}\n`)
        .join('')
  )
  const args = ['-t1', `-c${scenario.connections}`, `-d${seconds}s`, '--latency', '-s', script, target.url + scenario.path]
  const out = PIN ? await run('taskset', ['-c', LOAD_CORE, 'wrk', ...args]) : await run('wrk', args)
  const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? 0)
  const elapsed = /requests in ([\d.]+)(ms|s|m)/.exec(out)
  const elapsedMs = elapsed === null ? seconds * 1000 : wrkDuration(`${elapsed[1]}${elapsed[2]}`)
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0)
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out)
  const socketErrors = socket === null ? 0 : socket.slice(1).reduce((sum, n) => sum + Number(n), 0)
  return {
    rps: ((requests - non2xx) * 1000) / elapsedMs,
    p50: wrkDuration(/^\s+50%\s+(\S+)/m.exec(out)?.[1] ?? ''),
    p99: wrkDuration(/^\s+99%\s+(\S+)/m.exec(out)?.[1] ?? ''),
    failures: non2xx + socketErrors,
    completed: requests,
    tool: 'wrk'
  }
}

/** Open loop: one request every 1/rate s whatever is outstanding; latency timed with hrtime. */
async function loadOpenLoop(target, scenario, seconds) {
  const agent = new Agent({ keepAlive: true, maxSockets: 256 })
  const url = new URL(target.url + scenario.path)
  const headers = { ...headersFor(target, scenario), 'content-length': String(scenario.body.length) }
  const latencies = []
  let failures = 0
  const total = Math.round(scenario.rate * seconds)
  const intervalNs = 1e9 / scenario.rate
  const send = () =>
    new Promise((resolve) => {
      const began = process.hrtime.bigint()
      const req = httpRequest({ host: url.hostname, port: url.port, path: url.pathname, method: 'POST', headers, agent }, (res) => {
        res.on('data', () => undefined)
        res.on('end', () => {
          if (res.statusCode === 200) latencies.push(Number(process.hrtime.bigint() - began) / 1e6)
          else failures++
          resolve()
        })
      })
      req.on('error', () => {
        failures++
        resolve()
      })
      req.end(scenario.body)
    })
  const pending = []
  const start = process.hrtime.bigint()
  for (let i = 0; i < total; i++) {
    const due = start + BigInt(Math.round(i * intervalNs))
    const waitMs = Number(due - process.hrtime.bigint()) / 1e6
    if (waitMs > 1) await sleep(Math.floor(waitMs))
    // The last fraction of a millisecond is spun, so that requests go out on time.
    while (process.hrtime.bigint() < due) {
      // spin
    }
    pending.push(send())
  }
  await Promise.all(pending)
  agent.destroy()
  latencies.sort((a, b) => a - b)
  const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? NaN
  return { rps: latencies.length / seconds, p50: at(0.5), p99: at(0.99), failures, completed: total, tool: 'open loop (node:http)' }
}

function load(target, scenario, seconds) {
  if (scenario.rate !== undefined) return loadOpenLoop(target, scenario, seconds)
  if (scenario.wrk === true && WRK) return loadWrk(target, scenario, seconds)
  return loadAutocannon(target, scenario, seconds)
}

/** One request, checked, before a scenario's runs: a misconfigured target must not be measured. */
async function preflight(target, scenario) {
  const response = await fetch(target.url + scenario.path, { method: 'POST', headers: headersFor(target, scenario), body: scenario.body })
  const text = await response.text()
  if (response.status !== 200) throw new Error(`${target.name} answered ${response.status} to scenario ${scenario.id}: ${text.slice(0, 500)}`)
}

/** One measured run, with the proxy process's CPU time and peak RSS around it. */
async function measure(target, scenario) {
  const pid = target.child?.pid
  const watched = target.name !== 'direct' && pid !== undefined
  let peakKb = 0
  let timer
  if (watched) {
    resetPeak(pid)
    peakKb = statusKb(pid, 'VmRSS')
    timer = setInterval(() => {
      try {
        peakKb = Math.max(peakKb, statusKb(pid, 'VmRSS'))
      } catch {
        // process gone: reported by its exit handler
      }
    }, 50)
  }
  const cpuBefore = watched ? cpuMs(pid) : 0
  const result = await load(target, scenario, SECONDS)
  if (watched) {
    clearInterval(timer)
    result.cpuMsPerRequest = (cpuMs(pid) - cpuBefore) / Math.max(1, result.completed)
    result.peakMb = Math.max(peakKb, statusKb(pid, 'VmHWM')) / 1024
  }
  return result
}

// ---------------------------------------------------------------------------------------------
// Report

const median = (values) => {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b)
  if (sorted.length === 0) return NaN
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}
const fmt = (value, digits = 0) => (Number.isFinite(value) ? value.toFixed(digits) : '–')
const signed = (value, digits) => (Number.isFinite(value) && value >= 0 ? `+${fmt(value, digits)}` : fmt(value, digits))
const spread = (values, digits = 0) => `${fmt(Math.min(...values), digits)}–${fmt(Math.max(...values), digits)}`

function summarise(runs) {
  return {
    rps: median(runs.map((r) => r.rps)),
    rpsAll: runs.map((r) => r.rps),
    p50: median(runs.map((r) => r.p50)),
    p99: median(runs.map((r) => r.p99)),
    p50All: runs.map((r) => r.p50),
    p99All: runs.map((r) => r.p99),
    cpu: median(runs.map((r) => r.cpuMsPerRequest ?? NaN)),
    peakMb: runs.some((r) => r.peakMb !== undefined) ? Math.max(...runs.map((r) => r.peakMb ?? 0)) : NaN,
    failures: runs.reduce((sum, r) => sum + r.failures, 0),
    tool: runs[0]?.tool ?? ''
  }
}

function report(machine, results) {
  const lines = []
  lines.push(`Machine: ${machine.cores} cores (${machine.model}), Node ${process.version}, ${machine.pinning}.`)
  lines.push(`Each figure: median of ${RUNS} interleaved runs of ${SECONDS} s (spread min–max), after a ${WARMUP} s warm-up; key store: ${machine.store}; upstream delay ${env.BENCH_UPSTREAM_DELAY_MS ?? '0'} ms.`)
  lines.push('')
  lines.push('| # | Scenario | Target | req/s median (min–max) | vs direct | vs nginx | p50 ms | p99 ms | proxy CPU ms/req | proxy peak RSS MB | failed | load |')
  lines.push('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')
  for (const { scenario, byTarget } of results) {
    const direct = byTarget.get('direct')
    const nginx = byTarget.get('nginx')
    for (const [name, s] of byTarget) {
      // An open-loop run's req/s is the rate asked for: only its latencies compare.
      const vsDirect = name === 'direct' || scenario.rate !== undefined ? '' : fmt(s.rps / direct.rps, 2)
      const vsNginx = name !== 'gateway' || nginx === undefined || scenario.rate !== undefined ? '' : fmt(s.rps / nginx.rps, 2)
      const p50 = scenario.rate !== undefined && name !== 'direct' ? `${fmt(s.p50, 3)} (${signed(s.p50 - direct.p50, 3)})` : fmt(s.p50, 3)
      const p99 = scenario.rate !== undefined && name !== 'direct' ? `${fmt(s.p99, 3)} (${signed(s.p99 - direct.p99, 3)})` : fmt(s.p99, 3)
      lines.push(
        `| ${scenario.id} | ${scenario.name} (${scenario.connections} conn.) | ${name} | ${fmt(s.rps)} (${spread(s.rpsAll)}) | ${vsDirect} | ${vsNginx} | ${p50} | ${p99} | ${name === 'direct' ? '' : fmt(s.cpu, 3)} | ${name === 'direct' ? '' : fmt(s.peakMb)} | ${s.failures} | ${s.tool} |`
      )
    }
  }
  lines.push('')
  lines.push('Targets (issue 7):')
  lines.push('')
  for (const { scenario, byTarget } of results) {
    const gateway = byTarget.get('gateway')
    const nginx = byTarget.get('nginx')
    const direct = byTarget.get('direct')
    const verdict = (ok) => (ok ? 'met' : 'missed')
    if ((scenario.id === 1 || scenario.id === 2 || scenario.id === 3) && nginx !== undefined) {
      const wanted = scenario.id === 1 ? 0.5 : 1
      const ratio = gateway.rps / nginx.rps
      lines.push(`- Scenario ${scenario.id}: gateway at ${fmt(ratio * 100)} % of nginx's req/s (target ≥ ${wanted * 100} %): ${verdict(ratio >= wanted)}.`)
    }
    if (scenario.id === 4) lines.push(`- Scenario 4: gateway peak RSS ${fmt(gateway.peakMb)} MB (target < 150 MB): ${verdict(gateway.peakMb < 150)}.`)
    if (scenario.id === 5) {
      const p50 = gateway.p50 - direct.p50
      const p99 = gateway.p99 - direct.p99
      lines.push(`- Scenario 5: p50 added ${fmt(p50, 3)} ms (target < 0.3 ms): ${verdict(p50 < 0.3)}; p99 added ${fmt(p99, 3)} ms (target < 1 ms): ${verdict(p99 < 1)}.`)
    }
  }
  return lines.join('\n') + '\n'
}

// ---------------------------------------------------------------------------------------------

/** SIGTERM, its drain, then exit (which is when a CPU profile is written). */
async function stopGateway(gateway) {
  gateway.child.expectedExit = true
  const exited = new Promise((resolve) => gateway.child.once('exit', resolve))
  gateway.child.kill('SIGTERM')
  await exited
}

async function main() {
  const began = Date.now()
  if (PIN) spawnSync('taskset', ['-a', '-p', '-c', LOAD_CORE, String(process.pid)], { stdio: 'ignore' })
  const upstream = await startUpstream()
  const redis = await startRedis()
  const nginx = await startNginx(upstream)
  const others = [
    { name: 'direct', url: upstream.url, key: 'sk-bench-direct', child: undefined },
    ...(nginx === null ? [] : [{ name: 'nginx', url: nginx.url, key: 'sk-bench-direct', child: nginx.child }])
  ]
  const lscpu = spawnSync('lscpu', [], { encoding: 'utf8' }).stdout ?? ''
  const machine = {
    cores: cpus().length,
    model: /^Model name:\s+(.+)$/m.exec(lscpu)?.[1]?.trim() ?? cpus()[0]?.model ?? 'unknown CPU',
    pinning: PIN ? `gateway, nginx, Redis and upstream pinned to core ${SERVER_CORE}, load to core ${LOAD_CORE}` : 'no CPU pinning',
    store: redis === null ? 'in-process' : 'Redis'
  }
  console.error(`bench: ${machine.pinning}; targets: gateway, ${others.map((t) => t.name).join(', ')}; ${RUNS} × ${SECONDS} s per scenario and target`)

  const results = []
  const gatewayLogs = []
  for (const scenario of scenarios()) {
    // A fresh gateway for each scenario: its peak RSS is that scenario's, not the heap that the
    // scenarios before it grew (V8 keeps it).
    const gateway = await startGateway(upstream, redis)
    const targets = [{ name: 'gateway', url: gateway.url, key: gateway.key, child: gateway.child }, ...others]
    for (const target of targets) await preflight(target, scenario)
    if (WARMUP > 0) for (const target of targets) await load(target, scenario, WARMUP)
    const runs = new Map(targets.map((t) => [t.name, []]))
    for (let i = 0; i < RUNS; i++) {
      // Interleaved, and the order rotates so that no target always goes first.
      const order = targets.map((_, j) => targets[(i + j) % targets.length])
      for (const target of order) {
        const result = await measure(target, scenario)
        runs.get(target.name).push(result)
        console.error(
          `bench: scenario ${scenario.id} run ${i + 1}/${RUNS} ${target.name}: ${fmt(result.rps)} req/s, p50 ${fmt(result.p50, 3)} ms, p99 ${fmt(result.p99, 3)} ms` +
            (result.failures > 0 ? `, ${result.failures} failed` : '')
        )
      }
    }
    results.push({ scenario, byTarget: new Map([...runs].map(([name, list]) => [name, summarise(list)])) })
    await stopGateway(gateway)
    const log = gateway.child.output.trim()
    if (log !== '') gatewayLogs.push(...log.split('\n'))
  }

  let table = report(machine, results)
  if (gatewayLogs.length > 0) {
    table += `\nThe gateway logged at warn or above during the bench (${gatewayLogs.length} lines in the tails kept; the last five):\n\n\`\`\`\n${gatewayLogs.slice(-5).join('\n')}\n\`\`\`\n`
  }
  mkdirSync(join(ROOT, 'bench', 'results'), { recursive: true })
  writeFileSync(join(ROOT, 'bench', 'results', 'latest.md'), `# npm run bench, ${new Date().toISOString()}\n\n${table}`)
  process.stdout.write(`\n${table}`)
  if (PROFILE_DIR !== null) console.error(`bench: the gateway's CPU profiles (one per scenario) are in ${PROFILE_DIR}`)
  console.error(`bench: done in ${fmt((Date.now() - began) / 1000)} s; written to bench/results/latest.md`)
}

main().then(
  () => {
    cleanup()
    process.exit(0)
  },
  (error) => {
    console.error(`bench: ${error instanceof Error ? error.message : String(error)}`)
    cleanup()
    process.exit(1)
  }
)
