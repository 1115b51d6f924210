import { randomBytes } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import type { Config } from '../config/schema.js'
import type { SharedCounters } from '../keys/backend.js'
import { secondConnection, type RedisClient } from '../redis/client.js'
import { DirectoryImageStore } from './directory-store.js'
import { ImageHosting } from './hosting.js'
import { LinkSigner } from './links.js'
import { RedisImageStore } from './redis-store.js'
import type { ImageStore } from './store.js'

export interface HostingSetup {
  hosting: ImageHosting
  signer: LinkSigner
}

/** Whether any model or provider asks the gateway to host images. */
export function hostingWanted(config: Config): boolean {
  return config.models.some((m) => m.hostImages) || config.providers.some((p) => p.rehostUrls)
}

async function openStore(images: Config['images'], shared: SharedCounters | null): Promise<ImageStore> {
  if (images.store === 'directory') return DirectoryImageStore.open(images.directory)
  // The config check asks for the redis section; a test may still hand in an in-process backend.
  if (shared === null) throw new Error('images.store "redis" needs the redis section')
  return new RedisImageStore(imageClient(shared.redis), shared.keyPrefix, { ownsClient: true })
}

/** Images are MBs: a 40 MB answer takes a third of a second on a 1 Gbit/s link to Redis. */
const IMAGE_COMMAND_TIMEOUT_MS = 10_000

/**
 * A connection of its own for images, with a deadline sized for MBs: on the shared one, a large
 * SET would hold up (and time out) the small key and limit commands queued behind it.
 */
function imageClient(redis: RedisClient): RedisClient {
  return secondConnection(redis, IMAGE_COMMAND_TIMEOUT_MS, 'igw-images')
}

/**
 * The image store, link signer and hosting, when config asks for them (else null). `baseUrl` is
 * the links' base when `images.publicBaseUrl` is not set (the listening address, known later).
 */
export async function setUpHosting(
  config: Config,
  shared: SharedCounters | null,
  baseUrl: () => string,
  log: FastifyBaseLogger
): Promise<HostingSetup | null> {
  if (!hostingWanted(config)) return null
  const { images } = config
  let secret: string | Buffer | undefined = images.signingSecret
  if (secret === undefined) {
    secret = randomBytes(32)
    // A notice, not a warning: one instance with links that end on restart is a fine first run.
    log.info('images.signingSecret is not set: image links are signed with a secret made for this process, so they stop working when it restarts')
  }
  if (images.publicBaseUrl === undefined) {
    log.info('images.publicBaseUrl is not set: image links point at the address the gateway listens on, which clients elsewhere may not reach')
  }
  const publicBaseUrl = images.publicBaseUrl
  const signer = new LinkSigner(secret, publicBaseUrl === undefined ? baseUrl : () => publicBaseUrl)
  const store = await openStore(images, shared)
  const hosting = new ImageHosting(store, signer, {
    ttlMs: images.ttlMs,
    fetch: { maxBytes: images.fetchMaxBytes, timeoutMs: images.fetchTimeoutMs },
    maxAnswerBytes: images.maxAnswerBytes
  })
  return { hosting, signer }
}
