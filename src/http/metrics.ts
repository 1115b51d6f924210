import type { FastifyInstance } from 'fastify'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { Authenticator } from '../keys/authenticator.js'
import type { RequestSummary } from './request-context.js'

const SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300]

/**
 * GET /metrics in Prometheus' text format: requests, latencies, images, bytes, upstream errors,
 * limit rejections and key cache use, plus Node's own (event-loop lag among them). Labels carry
 * only configured names (route templates, configured models and deployments, statuses): never a
 * key, a prompt, or a model name a client made up.
 */
export default async function metricsRoutes(
  app: FastifyInstance,
  options: { models: ReadonlySet<string>; authenticator: Authenticator }
): Promise<void> {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry })
  const model = (name: string | null): string => (name !== null && options.models.has(name) ? name : 'none')
  const requests = new Counter({
    name: 'image_gateway_requests_total',
    help: 'Requests by route, model, deployment and status (499: the client left).',
    labelNames: ['route', 'model', 'deployment', 'status'],
    registers: [registry]
  })
  const duration = new Histogram({
    name: 'image_gateway_request_duration_seconds',
    help: 'From the request to the end of its answer.',
    labelNames: ['route', 'model'],
    buckets: SECONDS,
    registers: [registry]
  })
  const firstByte = new Histogram({
    name: 'image_gateway_time_to_first_byte_seconds',
    help: 'From the request to the first byte of its answer (its headers).',
    labelNames: ['route', 'model'],
    buckets: SECONDS,
    registers: [registry]
  })
  const images = new Counter({
    name: 'image_gateway_images_total',
    help: 'Images in successful answers.',
    labelNames: ['model'],
    registers: [registry]
  })
  const bytes = new Counter({
    name: 'image_gateway_bytes_total',
    help: 'Request body bytes in, and answer bytes out (headers included).',
    labelNames: ['direction'],
    registers: [registry]
  })
  const upstreamErrors = new Counter({
    name: 'image_gateway_upstream_errors_total',
    help: 'Upstream failures by kind: a gateway error code (unreachable, timeout, ...), the upstream status class, or, for attempts that failed over, the failure kind (connect, reset, rate_limited, ...).',
    labelNames: ['deployment', 'kind'],
    registers: [registry]
  })
  const rejections = new Counter({
    name: 'image_gateway_limit_rejections_total',
    help: 'Requests refused by a key limit: requests, images, concurrency or budget.',
    labelNames: ['limit'],
    registers: [registry]
  })
  const hostedImages = new Counter({
    name: 'image_gateway_hosted_images_total',
    help: 'Images of answers the gateway stored to answer with its own links (stored), or fetched from an upstream URL to re-host or inline (fetched).',
    labelNames: ['kind'],
    registers: [registry]
  })
  const hostedBytes = new Counter({
    name: 'image_gateway_hosted_bytes_total',
    help: 'Bytes of the images stored for links.',
    registers: [registry]
  })
  new Gauge({
    name: 'image_gateway_key_cache_lookups',
    help: 'Key lookups since start, answered by the cache (hit) or the key store (miss).',
    labelNames: ['result'],
    registers: [registry],
    collect() {
      this.set({ result: 'hit' }, options.authenticator.stats.hits)
      this.set({ result: 'miss' }, options.authenticator.stats.misses)
    }
  })

  app.requestDone.push((summary: RequestSummary) => {
    if (summary.route === null || summary.route === '/metrics') return
    const labels = { route: summary.route, model: model(summary.model) }
    requests.inc({ ...labels, deployment: summary.deployment ?? 'none', status: String(summary.status) })
    duration.observe(labels, summary.durationMs / 1000)
    if (summary.firstByteMs !== null) firstByte.observe(labels, summary.firstByteMs / 1000)
    if (summary.images !== null && summary.status < 300) images.inc({ model: labels.model }, summary.images)
    bytes.inc({ direction: 'in' }, summary.bytesIn)
    bytes.inc({ direction: 'out' }, summary.bytesOut)
    // Attempts that failed over to another deployment count against the one that failed.
    for (const attempt of summary.failover ?? []) upstreamErrors.inc({ deployment: attempt.deployment, kind: attempt.kind })
    const deployment = summary.deployment ?? 'none'
    if (summary.errorCode?.startsWith('upstream_')) upstreamErrors.inc({ deployment, kind: summary.errorCode })
    else if (summary.upstreamStatus !== null && summary.upstreamStatus >= 400) {
      upstreamErrors.inc({ deployment, kind: `status_${Math.floor(summary.upstreamStatus / 100)}xx` })
    }
    if (summary.limit !== null) rejections.inc({ limit: summary.limit })
    if (summary.hosted !== undefined) {
      hostedImages.inc({ kind: 'stored' }, summary.hosted.stored)
      hostedImages.inc({ kind: 'fetched' }, summary.hosted.fetched)
      hostedBytes.inc(summary.hosted.storedBytes)
    }
  })

  app.get('/metrics', async (_request, reply) => {
    reply.header('content-type', registry.contentType)
    return registry.metrics()
  })
}
